"""LoRA adapter sources (`model: <base>+<adapter>`): tensors equal peft's merge_and_unload, built lazily, and
adapter options we cannot compute refused in one line."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from evolve.cli import main
from merge_core.checkpoint import Checkpoint
from merge_core.lora import LoraCheckpoint
from merge_core.synthetic import make_lora_adapter

VARIANTS = {
    "plain": {},
    "rslora": {"use_rslora": True},
    "patterns": {"r": 8, "alpha": 16, "rank_pattern": {"v_proj": 2}, "alpha_pattern": {r"layers\.1\.self_attn\.q_proj": 3}},
    "embedding": {"targets": ("q_proj", "embed_tokens", "down_proj")},
    "added_token": {"add_tokens": ("<|tool|>", "<|think|>")},
}


def _peft_merged(base, adapter) -> dict[str, torch.Tensor]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    rows = load_file(str(adapter / "adapter_model.safetensors"))
    embed = [v for k, v in rows.items() if k.endswith("embed_tokens.modules_to_save.weight")]
    if embed:
        model.resize_token_embeddings(embed[0].shape[0], mean_resizing=False)
    return PeftModel.from_pretrained(model, adapter).merge_and_unload().state_dict()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_tensors_equal_peft_merge_and_unload(variant, tiny_models, tmp_path):
    opts = dict(VARIANTS[variant])
    adapter = make_lora_adapter(tiny_models["base"], tmp_path / "adapter", seed=3, **opts)
    base = Checkpoint(tiny_models["base"])
    lora = LoraCheckpoint(base, adapter, f"{tiny_models['base']}+{adapter}", "recipe")
    want = _peft_merged(tiny_models["base"], adapter)
    changed = 0
    for name in sorted(base.names):
        got = lora.get(name)
        assert got.shape == want[name].shape, name
        assert torch.allclose(got, want[name], atol=1e-6, rtol=0), name
        changed += not torch.equal(got, base.get(name)) if got.shape == base.shape(name) else 1
    targets = opts.get("targets", ("q_proj", "v_proj", "up_proj"))
    assert changed == sum(any(t in n for t in targets) for n in base.names) + bool(opts.get("add_tokens"))
    if opts.get("add_tokens"):
        assert lora.config["vocab_size"] == base.config["vocab_size"] + 2 and lora.tied
        assert lora.tokenizer_dir == adapter


def test_recipe_with_adapter_source_merges(tiny_models, tmp_path, recipe_file):
    adapter = make_lora_adapter(tiny_models["base"], tmp_path / "adapter", seed=4)
    lora_id = f"{tiny_models['base']}+{adapter}"
    recipe = recipe_file({"merge_method": "linear", "dtype": "float32",
                          "models": [{"model": lora_id, "parameters": {"weight": 1.0}}]})
    out = tmp_path / "out"
    assert main(["merge", f"recipe={recipe}", f"out={out}", "device=cpu"]) == 0
    merged = load_file(str(out / "model.safetensors"))
    want = _peft_merged(tiny_models["base"], adapter)
    for name, tensor in merged.items():
        assert torch.allclose(tensor, want[name], atol=1e-6, rtol=0), name
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True


@pytest.mark.parametrize("option,needle", [("use_dora", "use_dora is not supported"),
                                           ("lora_bias", "lora_bias is not supported"),
                                           ("peft_type", "is not LoRA")])
def test_unsupported_adapter_refused_in_one_line(option, needle, tiny_models, tmp_path, recipe_file, capsys):
    adapter = make_lora_adapter(tiny_models["base"], tmp_path / "adapter", seed=5)
    cfg_path = adapter / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg[option] = "IA3" if option == "peft_type" else True
    cfg_path.write_text(json.dumps(cfg))
    recipe = recipe_file({"merge_method": "ties", "base_model": str(tiny_models["base"]),
                          "models": [{"model": f"{tiny_models['base']}+{adapter}", "parameters": {"weight": 1, "density": 0.5}}]})
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["merge", f"recipe={recipe}", f"out={out}", "device=cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    assert not out.exists()


def test_missing_adapter_folder_refused(tiny_models, tmp_path, recipe_file, capsys):
    recipe = recipe_file({"merge_method": "linear", "models": [{"model": f"{tiny_models['base']}+{tmp_path / 'nope'}",
                                                                "parameters": {"weight": 1.0}}]})
    assert main(["merge", f"recipe={recipe}", f"out={tmp_path / 'out'}", "device=cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "adapter" in err and "nope" in err, err


def test_reads_one_tensor_at_a_time(tiny_models, tmp_path, monkeypatch):
    adapter = make_lora_adapter(tiny_models["base"], tmp_path / "adapter", seed=6)
    base = Checkpoint(tiny_models["base"])
    lora = LoraCheckpoint(base, adapter, "x+y", "recipe")
    reads = []
    real_get = Checkpoint.get
    monkeypatch.setattr(Checkpoint, "get", lambda self, name: reads.append(name) or real_get(self, name))
    lora.get("model.layers.1.self_attn.q_proj.weight")
    assert reads == ["model.layers.1.self_attn.q_proj.weight"]
