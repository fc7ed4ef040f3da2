"""The tiny world of conf/tiny: a word-level tokenizer and tiny Llama-3.2-shaped models trained on the spot, cached."""

from __future__ import annotations

import json
import os
import random
import shutil
import string
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import eval_tasks
from merge_core.errors import UserError
from merge_core.files import files_sha256, share_tree
from merge_core.synthetic import LLAMA32_ROPE

# Bump when training or data layout changes, so every cache built by older code is rebuilt.
FORMAT_VERSION = 1
TASKS_DIR = eval_tasks.PATH
# Prepared name -> the eval task whose train split makes that specialist.
SKILLS = {"succ": "toy_succ", "upper": "toy_upper"}
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|pad|>", "<|unk|>"]
FILLER = "the a cat dog bird sees runs and big small red blue is on mat sun tree".split()
WORDS = ["next", "upper", "copy", "="] + FILLER + [str(n) for n in range(100)] + list(string.ascii_lowercase)
WORDS += list(string.ascii_uppercase)
VOCAB = SPECIALS + WORDS
DEFAULTS = {
    "layers": 2,
    "hidden": 64,
    "heads": 4,
    "kv_heads": 2,
    "base_steps": 350,
    "steps": 150,
    "batch_size": 32,
    "base_lr": 5e-3,
    "lr": 2e-3,
}


def make_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over VOCAB: whitespace split, a BOS prepended like Llama 3, saves and loads with AutoTokenizer."""
    core = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(VOCAB)}, unk_token="<|unk|>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # BOS only, never EOS: lm-eval slices the context's ids off the front of context+continuation's ids.
    core.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 0)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        pad_token="<|pad|>",
        unk_token="<|unk|>",
        model_max_length=131072,
    )


def make_config(*, layers: int, hidden: int, heads: int, kv_heads: int) -> LlamaConfig:
    """A Llama-3.2-shaped config (tied embeddings, llama3 rope scaling, GQA) over the toy vocabulary."""
    return LlamaConfig(
        vocab_size=len(VOCAB),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=hidden // heads,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        rope_parameters=dict(LLAMA32_ROPE),
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        architectures=["LlamaForCausalLM"],
    )


def read_split(task: str, split: str) -> list[dict]:
    """Rows of eval_tasks/<task>/data/<split>.jsonl."""
    path = TASKS_DIR / task / "data" / f"{split}.jsonl"
    if not path.exists():
        raise UserError(f"{path}: missing; run python {path.parent.parent / 'generate.py'}")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def generic_text(rng: random.Random, n: int) -> list[tuple[str, str]]:
    """Generic toy text: filler sentences, mixed lists, copy lines, and task-shaped lines with random answers."""
    nums = [str(i) for i in range(100)]
    lower, upper = list(string.ascii_lowercase), list(string.ascii_uppercase)
    rows = []
    for _ in range(n):
        kind = rng.randrange(4)
        pool = rng.choice([nums, lower, upper])
        if kind == 0:
            rows.append(("", " ".join(rng.choices(FILLER + pool, k=rng.randint(4, 10)))))
        elif kind == 1:
            # Copying is the generic mechanism both skills build on; the specialists only learn what to write.
            items = " ".join(rng.choices(pool, k=3))
            rows.append((f"copy {items} =", items))
        else:
            # The task formats with unrelated answers: the base learns the shapes, not the skills.
            word, pool = ("next", nums) if kind == 2 else ("upper", lower)
            answer = upper if kind == 3 else nums
            rows.append((f"{word} {' '.join(rng.choices(pool, k=3))} =", " ".join(rng.choices(answer, k=3))))
    return rows


def skill_text(task: str) -> list[tuple[str, str]]:
    """(prompt, answer) pairs from a toy task's train split."""
    return [(r["prompt"], r["choices"][r["label"]]) for r in read_split(task, "train")]


def _batch(tok: PreTrainedTokenizerFast, pairs: list[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids, attention mask and labels; the loss covers the answer only when a prompt is given."""
    seqs = tok([f"{prompt} {answer}".strip() for prompt, answer in pairs])["input_ids"]
    n_prompts = [len(ids) for ids in tok([prompt for prompt, _ in pairs])["input_ids"]]
    # An empty prompt still encodes to the BOS alone, so the loss then covers the whole text.
    labels = [[-100] * n + ids[n:] for ids, n in zip(seqs, n_prompts)]
    width = max(map(len, seqs))
    pad = tok.pad_token_id
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    lab = torch.tensor([s + [-100] * (width - len(s)) for s in labels])
    return ids, mask, lab


def train(
    model: LlamaForCausalLM,
    tok: PreTrainedTokenizerFast,
    data: list[tuple[str, str]],
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    desc: str,
    progress: bool,
) -> float:
    """Plain AdamW in float32 on CPU; returns the mean loss of the last 20 steps."""
    from tqdm.auto import tqdm

    rng = random.Random(seed)
    ids, mask, lab = _batch(tok, data)  # tokenized once: per-step tokenizing would cost as much as the step
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * (1 - 0.9 * s / steps))
    model.train()
    losses = []
    for _ in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
        pick = torch.tensor(rng.choices(range(len(data)), k=batch_size))
        width = int(mask[pick].sum(1).max())
        loss = model(input_ids=ids[pick, :width], attention_mask=mask[pick, :width], labels=lab[pick, :width]).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    tail = losses[-20:]
    return sum(tail) / len(tail)


@torch.no_grad()
def mc_accuracy(model: LlamaForCausalLM, tok: PreTrainedTokenizerFast, rows: list[dict]) -> float:
    """Multiple-choice accuracy by summed log-likelihood of " " + choice after the prompt (lm-eval's acc)."""
    pairs = [(r["prompt"], c) for r in rows for c in r["choices"]]
    ids, mask, lab = _batch(tok, pairs)
    logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), -1)
    target = lab[:, 1:]
    picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    scores = (picked * (target != -100)).sum(-1).tolist()
    correct, i = 0, 0
    for r in rows:
        k = len(r["choices"])
        row = scores[i : i + k]
        correct += int(max(range(k), key=row.__getitem__) == r["label"])
        i += k
    return correct / len(rows)


def _manifest_key(seed: int, options: dict) -> dict:
    """Everything that determines the prepared models: code version, seed, hyper-parameters, training data."""
    data = {task: files_sha256([TASKS_DIR / task / "data" / "train.jsonl"]) for task in SKILLS.values()}
    return {"format": FORMAT_VERSION, "seed": seed, "options": options, "data": data}


def _cached(cache_dir: Path, key: dict) -> dict[str, Path] | None:
    """The cached folders when the manifest matches `key` and every weight file is intact, else None."""
    manifest = cache_dir / "manifest.json"
    if not manifest.exists():
        return None
    try:
        saved = json.loads(manifest.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    if saved.get("key") != key:
        return None
    out = {}
    for name, digest in saved.get("weights", {}).items():
        weights = cache_dir / name / "model.safetensors"
        if not weights.exists() or files_sha256([weights]) != digest:
            return None
        out[name] = cache_dir / name
    return out if set(out) == {"base", *SKILLS} else None


def _check_options(options: dict) -> dict:
    """DEFAULTS overridden by `options`; unknown or non-positive values are a UserError."""
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise UserError(f"prepare_options: unknown key(s) {sorted(unknown)} for toy; use any of {sorted(DEFAULTS)}")
    merged = {**DEFAULTS, **options}
    for k, v in merged.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
            raise UserError(f"prepare_options.{k}: must be a positive number, got {v!r}")
        if k not in ("base_lr", "lr") and int(v) != v:
            raise UserError(f"prepare_options.{k}: must be an integer, got {v!r}")
    if merged["hidden"] % merged["heads"] or merged["heads"] % merged["kv_heads"]:
        raise UserError("prepare_options: hidden must be a multiple of heads, and heads a multiple of kv_heads")
    return merged


def prepare(cache_dir: Path, *, seed: int = 0, progress: bool = True, **options: float) -> dict[str, Path]:
    """Train (or reuse from `cache_dir`) a toy base and the specialists "succ" and "upper"; returns name -> HF folder."""
    opts = _check_options(options)
    cache_dir = Path(cache_dir)
    key = _manifest_key(seed, opts)
    hit = _cached(cache_dir, key)
    if hit is not None:
        return hit
    if progress:
        # one thread by design (below), so the time hardly depends on the machine: ~20-40 s on a 2-core VM
        print(f"preparing the toy models into {cache_dir} (once; later runs reuse them): a base and the "
              f"specialists {', '.join(SKILLS)}, trained from scratch; roughly half a minute", flush=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: same bits on every machine, and the CI's cores are shared
    try:
        tmp = _build(cache_dir, seed, opts, progress)
    finally:
        torch.set_num_threads(threads)
    share_tree(tmp)  # safetensors writes 0600
    # Drop the manifest first: a kill between the renames below then leaves a cache that rebuilds, never a mixed one.
    (cache_dir / "manifest.json").unlink(missing_ok=True)
    weights = {}
    for name in ["base", *SKILLS]:
        dest = cache_dir / name
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp / name, dest)
        weights[name] = files_sha256([dest / "model.safetensors"])
    shutil.rmtree(tmp, ignore_errors=True)
    part = cache_dir / "manifest.json.part"
    part.write_text(json.dumps({"key": key, "weights": weights}, indent=2), encoding="utf-8")
    os.replace(part, cache_dir / "manifest.json")
    return {name: cache_dir / name for name in ["base", *SKILLS]}


def _build(cache_dir: Path, seed: int, opts: dict, progress: bool) -> Path:
    """Train base and specialists into a fresh temporary folder inside `cache_dir` and return it."""
    tmp = cache_dir / f".build-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tok = make_tokenizer()
    torch.manual_seed(seed)
    cfg = make_config(layers=opts["layers"], hidden=opts["hidden"], heads=opts["heads"], kv_heads=opts["kv_heads"])
    model = LlamaForCausalLM(cfg)
    common = {"batch_size": opts["batch_size"], "progress": progress}
    generic = generic_text(random.Random(seed), 4000)
    train(model, tok, generic, steps=opts["base_steps"], lr=opts["base_lr"], seed=seed, desc="toy base", **common)
    _save(model, tok, tmp / "base")
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    for i, (name, task) in enumerate(SKILLS.items()):
        model.load_state_dict(base_state)
        torch.manual_seed(seed + 1 + i)
        # Generic replay keeps the specialist close to the base outside its skill, so task vectors add up.
        data = skill_text(task) + generic[: len(generic) // 4]
        train(model, tok, data, steps=opts["steps"], lr=opts["lr"], seed=seed + 1 + i, desc=f"toy {name}", **common)
        _save(model, tok, tmp / name)
    return tmp


def _save(model: LlamaForCausalLM, tok: PreTrainedTokenizerFast, path: Path) -> None:
    """Save weights (tied: no lm_head.weight), config, generation config and tokenizer."""
    model.save_pretrained(path)
    tok.save_pretrained(path)
