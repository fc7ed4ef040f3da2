"""Tiny (or 1B-shaped) random Llama-3.2-shaped checkpoints and a char-level tokenizer, for tests and benchmarks."""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from merge_core.architecture import family, get_architecture
from merge_core.device import dtype_name
from merge_core.shards import ShardWriter

# Llama 3.2's rope scaling, so tiny models exercise the same config path as the real ones.
LLAMA32_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
# Real Llama 3.2 shapes (vocab 128256, tied); tests keep hidden sizes real and cut layers and vocab.
LLAMA32_SHAPES = {
    "1B": {"layers": 16, "hidden": 2048, "intermediate": 8192, "heads": 32, "kv_heads": 8, "vocab": 128256},
    "3B": {"layers": 28, "hidden": 3072, "intermediate": 8192, "heads": 24, "kv_heads": 8, "vocab": 128256},
}
SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|unk|>", "<|pad|>"]
BOS_ID, EOS_ID, UNK_ID, PAD_ID = range(4)
_CHARS = [chr(c) for c in range(32, 127)] + ["\n", "\t"]


def make_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A char-level fast tokenizer with exactly `vocab_size` ids (specials, printable ASCII, then reserved fillers)."""
    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise ValueError(f"vocab_size must be at least {len(SPECIAL_TOKENS) + 1}, got {vocab_size}")
    tokens = SPECIAL_TOKENS + _CHARS[: vocab_size - len(SPECIAL_TOKENS)]
    tokens += [f"<|reserved_{i}|>" for i in range(vocab_size - len(tokens))]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS[UNK_ID]))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    core.decoder = decoders.Fuse()
    bos = SPECIAL_TOKENS[BOS_ID]  # prepended like Llama 3's tokenizer does
    core.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, BOS_ID)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=SPECIAL_TOKENS[BOS_ID],
        eos_token=SPECIAL_TOKENS[EOS_ID],
        unk_token=SPECIAL_TOKENS[UNK_ID],
        pad_token=SPECIAL_TOKENS[PAD_ID],
        model_max_length=131072,
    )
    return tok


def llama32_config(
    *, layers: int, hidden: int, intermediate: int, heads: int, kv_heads: int, vocab: int, tied: bool, dtype: torch.dtype
) -> dict:
    """config.json contents of a Llama-3.2-shaped LlamaForCausalLM."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "head_dim": hidden // heads,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": intermediate,
        "max_position_embeddings": 131072,
        "mlp_bias": False,
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": kv_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-5,
        "rope_parameters": dict(LLAMA32_ROPE),
        "tie_word_embeddings": tied,
        "dtype": dtype_name(dtype),
        "use_cache": True,
        "vocab_size": vocab,
    }


def llama_weight_shapes(config: dict) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every weight a Llama checkpoint with this config stores, in file order."""
    h, i, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    hd = config.get("head_dim") or h // config["num_attention_heads"]
    q, kv = config["num_attention_heads"] * hd, config["num_key_value_heads"] * hd
    arch = get_architecture(config)
    yield arch.embed_name, (v, h)
    for n in range(config["num_hidden_layers"]):
        p = f"model.layers.{n}."
        yield p + "input_layernorm.weight", (h,)
        yield p + "self_attn.q_proj.weight", (q, h)
        yield p + "self_attn.k_proj.weight", (kv, h)
        yield p + "self_attn.v_proj.weight", (kv, h)
        yield p + "self_attn.o_proj.weight", (h, q)
        yield p + "post_attention_layernorm.weight", (h,)
        yield p + "mlp.gate_proj.weight", (i, h)
        yield p + "mlp.up_proj.weight", (i, h)
        yield p + "mlp.down_proj.weight", (h, i)
    yield arch.final_norm_name, (h,)
    if not config["tie_word_embeddings"]:
        yield arch.head_name, (v, h)


def _generator(seed: int, name: str) -> torch.Generator:
    # One stream per tensor name, so values do not depend on sharding or on which other tensors exist.
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))


def _random_tensor(name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    gen = _generator(seed, name)
    if len(shape) == 1:  # norms: near one, but distinct per model so merges are not trivially equal
        return 1.0 + 0.1 * torch.randn(shape, generator=gen)
    return 0.02 * torch.randn(shape, generator=gen)


def make_checkpoint(
    path: str | os.PathLike,
    *,
    layers: int = 2,
    hidden: int = 64,
    intermediate: int = 128,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = 128,
    tied: bool | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    like: str | os.PathLike | None = None,
    noise: float = 0.0,
    shard_size: int | None = None,
    tokenizer: bool | PreTrainedTokenizerFast | None = None,
) -> Path:
    """Write a random Llama-3.2-shaped HF folder; `like=` copies that checkpoint's shapes and weights plus `noise`.

    Tensors are generated and written one shard at a time, so 1B-shaped checkpoints fit in memory.
    `tied=None` means True, or like's tie flag. `tokenizer=None` writes a char-level tokenizer when vocab <= 4096.
    """
    from merge_core.checkpoint import Checkpoint  # local: checkpoint imports nothing from here, keep it that way

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    parent = Checkpoint(like) if like is not None else None
    if parent is not None:
        c = parent.config
        tied = parent.tied if tied is None else tied
        config = llama32_config(
            layers=c["num_hidden_layers"], hidden=c["hidden_size"], intermediate=c["intermediate_size"],
            heads=c["num_attention_heads"], kv_heads=c["num_key_value_heads"], vocab=c["vocab_size"],
            tied=tied, dtype=dtype,
        )
        config["rope_parameters"] = c.get("rope_parameters", config["rope_parameters"])
    else:
        config = llama32_config(
            layers=layers, hidden=hidden, intermediate=intermediate, heads=heads, kv_heads=kv_heads,
            vocab=vocab, tied=True if tied is None else tied, dtype=dtype,
        )

    # one stream of tensors, so 1B-shaped checkpoints never sit in memory whole (shard_size bounds a shard)
    shards = ShardWriter(out, shard_size, index=shard_size is not None)
    for name, shape in llama_weight_shapes(config):
        if parent is not None:
            tensor = parent.get(name).to(torch.float32)
            if noise:
                tensor = tensor + noise * torch.randn(shape, generator=_generator(seed, name))
        else:
            tensor = _random_tensor(name, shape, seed)
        shards.add(name, tensor.to(dtype).contiguous())
    shards.close()

    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    gen_cfg = {"bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "do_sample": False}
    (out / "generation_config.json").write_text(json.dumps(gen_cfg, indent=2) + "\n")
    if tokenizer is None:
        tokenizer = config["vocab_size"] <= 4096
    if tokenizer is True:
        tokenizer = make_tokenizer(config["vocab_size"])
    if tokenizer:
        tokenizer.save_pretrained(out)
    return out


def make_lora_adapter(
    base: str | os.PathLike,
    path: str | os.PathLike,
    *,
    targets: tuple[str, ...] = ("q_proj", "v_proj", "up_proj"),
    r: int = 4,
    alpha: float = 8,
    seed: int = 0,
    scale: float = 0.05,
    add_tokens: tuple[str, ...] = (),
    **lora_options,
) -> Path:
    """A PEFT LoRA adapter folder on `base`, saved by peft, with random nonzero A and B (peft is needed here only).

    `add_tokens` adds tokens to base's tokenizer, grows the embedding (new rows random) and saves it as a
    modules_to_save copy plus the tokenizer in the adapter folder, as a fine-tune that added tokens would.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(path)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=False)
    gen = torch.Generator().manual_seed(seed)
    if add_tokens:
        tokenizer.add_tokens(list(add_tokens))
        old = model.get_input_embeddings().weight.shape[0]
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            emb = model.get_input_embeddings().weight
            emb[old:] = 0.02 * torch.randn(emb[old:].shape, generator=gen)
        embed_module = family(model.config.to_dict()).embed_name.split(".")[-2]  # peft names modules, not tensors
        lora_options.setdefault("modules_to_save", [embed_module])
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.1, **lora_options)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(scale * torch.randn(param.shape, generator=gen))
            elif "modules_to_save" in name:
                param.add_(0.01 * torch.randn(param.shape, generator=gen))
    peft_model.save_pretrained(out)
    if add_tokens:
        tokenizer.save_pretrained(out)
    return out


def with_added_tokens(src: str | os.PathLike, path: str | os.PathLike, tokens: tuple[str, ...], *, seed: int = 0,
                      special: bool = True) -> Path:
    """A copy of model folder `src` whose tokenizer gained `tokens` and whose embedding (and untied head) gained one
    random row each, vocab_size updated: a fine-tune that added tool or chat tokens."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    src, out = Path(src), Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(src, trust_remote_code=False)
    tok.add_tokens(list(tokens), special_tokens=special)
    tensors = load_file(str(src / "model.safetensors"))
    arch = family(json.loads((src / "config.json").read_text()))
    for name in (arch.embed_name, arch.head_name):
        if name in tensors:
            old = tensors[name]
            extra = 0.02 * torch.randn((len(tok) - old.shape[0], old.shape[1]), generator=_generator(seed, name))
            tensors[name] = torch.cat([old, extra.to(old.dtype)]).contiguous()
    shards = ShardWriter(out, None)
    for name, tensor in tensors.items():
        shards.add(name, tensor)
    shards.close()
    config = json.loads((src / "config.json").read_text())
    config["vocab_size"] = len(tok)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if (src / "generation_config.json").is_file():
        (out / "generation_config.json").write_text((src / "generation_config.json").read_text())
    tok.save_pretrained(out)
    return out
