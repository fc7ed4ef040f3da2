"""Sources that disagree: meaning-changing config fields refused (one line, both values, both models) before any
tensor is read; harmless ones warned; non-float tensors refused; remote-code entries never reach the output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from evolve.cli import main
from merge_core.recipe import parse_recipe
from merge_core.sources import Sources


def _variant(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def _ties(base, other):
    return {"merge_method": "ties", "base_model": str(base),
            "models": [{"model": str(other), "parameters": {"weight": 1.0, "density": 0.5}}]}


def _rope(**kw):
    from merge_core.synthetic import LLAMA32_ROPE

    return {**LLAMA32_ROPE, **kw}


REFUSED = {
    "rope_theta": ({"rope_parameters": _rope(rope_theta=10000.0)}, "rope_theta (500000.0 vs 10000.0)"),
    "rope_type": ({"rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}}, "rope_type ('llama3' vs 'default')"),
    "old-style rope_theta": ({"rope_parameters": None, "rope_theta": 10000.0,
                              "rope_scaling": {k: v for k, v in _rope().items() if k != "rope_theta"}},
                             "rope_theta (500000.0 vs 10000.0)"),
    "head_dim": ({"head_dim": 32}, "head_dim (16 vs 32)"),
    "rms_norm_eps": ({"rms_norm_eps": 1e-6}, "rms_norm_eps (1e-05 vs 1e-06)"),
    "hidden_act": ({"hidden_act": "gelu"}, "hidden_act ('silu' vs 'gelu')"),
    "attention_bias": ({"attention_bias": True}, "attention_bias (False vs True)"),
    "mlp_bias": ({"mlp_bias": True}, "mlp_bias (False vs True)"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_meaning_changing_field_refused_before_reading(case, tiny_models, tmp_path, recipe_file, capsys, monkeypatch):
    changes, needle = REFUSED[case]
    other = _variant(tiny_models["ft_a"], tmp_path / "other", **changes)
    reads = []
    monkeypatch.setattr("merge_core.checkpoint.Checkpoint.get", lambda self, name: reads.append(name))
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["merge", f"recipe={recipe_file(_ties(tiny_models['base'], other))}", f"out={out}", "device=cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    assert str(tiny_models["base"]) in err and str(other) in err
    assert reads == [] and not out.exists()


def test_same_meaning_spelled_differently_is_accepted(tiny_models, tmp_path):
    # transformers 4.x spelling (rope_theta + rope_scaling with `type`) of the same rope as rope_parameters
    rope = _rope()
    old = _variant(tiny_models["ft_a"], tmp_path / "old", rope_parameters=None, rope_theta=rope.pop("rope_theta"),
                   rope_scaling={("type" if k == "rope_type" else k): v for k, v in rope.items()})
    Sources.open(parse_recipe(_ties(tiny_models["base"], old)))


def test_a_float32_rounded_eps_is_the_same_setting(tiny_models, tmp_path):
    # a GGUF conversion stores rms_norm_eps 1e-5 as float32: 9.999999747378752e-06 is not a different model
    rounded = _variant(tiny_models["ft_a"], tmp_path / "rounded", rms_norm_eps=float(torch.tensor(1e-5)))
    assert float(torch.tensor(1e-5)) != 1e-5
    Sources.open(parse_recipe(_ties(tiny_models["base"], rounded)))


def test_max_positions_is_a_warning(tiny_models, tmp_path, caplog):
    other = _variant(tiny_models["ft_a"], tmp_path / "short", max_position_embeddings=8192)
    with caplog.at_level("WARNING", logger="merge_core.compat"):
        sources = Sources.open(parse_recipe(_ties(tiny_models["base"], other)))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "max_position_embeddings (131072 vs 8192)" in lines[0]
    assert sources.output_config(torch.float32)["max_position_embeddings"] == 131072


def test_integer_tensor_refused(tiny_models, tmp_path, recipe_file, capsys, monkeypatch):
    dst = tmp_path / "quant"
    shutil.copytree(tiny_models["ft_a"], dst)
    tensors = load_file(str(dst / "model.safetensors"))
    name = "model.layers.1.mlp.up_proj.weight"
    tensors[name] = (tensors[name] * 1000).to(torch.int32)
    save_file(tensors, str(dst / "model.safetensors"))
    out = tmp_path / "out"
    reads = []
    monkeypatch.setattr("merge_core.checkpoint.Checkpoint.get", lambda self, name: reads.append(name))
    capsys.readouterr()
    assert main(["merge", f"recipe={recipe_file(_ties(tiny_models['base'], dst))}", f"out={out}", "device=cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{name} is stored as I32, not a float" in err and str(dst) in err
    assert reads == [] and not out.exists()  # refused from the header, before the base's tensors are scanned


def test_auto_map_never_reaches_the_output(tiny_models, tmp_path, recipe_file):
    base = _variant(tiny_models["base"], tmp_path / "remote", auto_map={"AutoModelForCausalLM": "x.Y"})
    tok_cfg = base / "tokenizer_config.json"
    tok_cfg.write_text(json.dumps({**json.loads(tok_cfg.read_text()), "auto_map": {"AutoTokenizer": ["x.T", None]}}))
    out = tmp_path / "out"
    assert main(["merge", f"recipe={recipe_file(_ties(base, tiny_models['ft_a']))}", f"out={out}", "device=cpu"]) == 0
    assert "auto_map" not in json.loads((out / "config.json").read_text())
    assert "auto_map" not in json.loads((out / "tokenizer_config.json").read_text())
    from evolve.commands.eval import check_model_folder

    check_model_folder(out)  # the project's own eval accepts what it exported
