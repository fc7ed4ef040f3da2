"""`evolve merge`: a folder on success; on bad input one line, exit 2, and nothing written."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from evolve.cli import main


def _linear(*models):
    return {"merge_method": "linear", "models": [{"model": m, "parameters": {"weight": 1.0}} for m in models]}


def test_merge_writes_a_loadable_folder(tiny_models, recipe_file, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe = recipe_file({**_linear(tiny_models["base"], tiny_models["untied"]), "base_model": str(tiny_models["base"])})
    out = tmp_path / "merged"
    assert main(["merge", f"recipe={recipe}", f"out={out}", "device=cpu", "dtype=bfloat16", "shard_size=50KB"]) == 0
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1 and "lm_head.weight" in index["weight_map"]
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and config["tie_word_embeddings"] is False
    assert config["rope_parameters"]["rope_type"] == "llama3"
    assert "merge_method: linear" in (out / "README.md").read_text()
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.bfloat16
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == model.config.vocab_size and tok.decode(tok("Hi!")["input_ids"], skip_special_tokens=True) == "Hi!"
    assert not list(tmp_path.glob(".merged.*"))  # no temp folder left behind
    # an earlier output of ours may be replaced; a foreign folder may not
    assert main(["merge", f"recipe={recipe}", f"out={out}", "device=cpu"]) == 0
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"


def _broken(kind, m, tmp_path, make_model, recipe_file):
    """-> (args besides recipe/out, recipe path or None, expected message regex)."""
    if kind == "missing_recipe":
        return [], tmp_path / "nope.yaml", r"nope.yaml: cannot read"
    if kind == "garbled_yaml":
        path = tmp_path / "bad.yaml"
        path.write_text("merge_method: linear\nmodels: [\n  - {model: x\n")
        return [], path, r"bad.yaml: invalid YAML"
    if kind == "missing_model":
        return [], recipe_file(_linear(m["base"], tmp_path / "gone")), r"model folder '.*gone' not found"
    if kind in ("vocab", "layers"):
        other = make_model(f"cli_{kind}", **({"vocab": 96} if kind == "vocab" else {"layers": 3}))
        key = "vocab_size" if kind == "vocab" else "num_hidden_layers"
        return [], recipe_file(_linear(m["base"], other)), rf"differ in {key}"
    if kind in ("shape", "nan"):
        dst = tmp_path / kind
        shutil.copytree(m["ft_a"], dst)
        tensors = load_file(str(dst / "model.safetensors"))
        name = "model.layers.0.mlp.down_proj.weight"
        tensors[name] = tensors[name][:, :-2].contiguous() if kind == "shape" else tensors[name] * float("nan")
        save_file(tensors, str(dst / "model.safetensors"))
        message = "has shape" if kind == "shape" else f"tensor {name} contains NaN"
        return [], recipe_file(_linear(m["base"], dst)), message
    if kind == "pickle":
        dst = tmp_path / "pickled"
        dst.mkdir()
        shutil.copy(m["ft_a"] / "config.json", dst)
        torch.save(load_file(str(m["ft_a"] / "model.safetensors")), dst / "pytorch_model.bin")
        return [], recipe_file(_linear(m["base"], dst)), r"pytorch_model.bin: pickled checkpoint refused.*allow_pickle=true"
    if kind == "bad_dtype":
        return ["dtype=float8"], recipe_file(_linear(m["base"], m["ft_a"])), r"dtype: 'float8' is not supported"
    if kind == "bad_shard_size":
        return ["shard_size=lots"], recipe_file(_linear(m["base"], m["ft_a"])), r"shard_size: 'lots' is not a size"
    if kind == "unknown_key":
        return ["colour=red"], recipe_file(_linear(m["base"], m["ft_a"])), r"unknown key 'colour'"
    if kind == "bad_method":
        return [], recipe_file({**_linear(m["base"], m["ft_a"]), "merge_method": "avg"}), r"merge_method: 'avg' is not a known"
    raise AssertionError(kind)


BAD = ["missing_recipe", "garbled_yaml", "missing_model", "vocab", "layers", "shape", "nan", "pickle",
       "bad_dtype", "bad_shard_size", "unknown_key", "bad_method"]


@pytest.mark.parametrize("kind", BAD)
def test_bad_input_one_line_exit_2_nothing_written(kind, tiny_models, make_model, recipe_file, tmp_path, capsys):
    extra, recipe, message = _broken(kind, tiny_models, tmp_path, make_model, recipe_file)
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["merge", f"recipe={recipe}", f"out={out}", "device=cpu", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: ")
    assert __import__("re").search(message, err), err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_pickle_allowed_with_flag(tiny_models, make_model, recipe_file, tmp_path):
    _, recipe, _ = _broken("pickle", tiny_models, tmp_path, make_model, recipe_file)
    assert main(["merge", f"recipe={recipe}", f"out={tmp_path / 'out'}", "device=cpu", "allow_pickle=true"]) == 0
    assert (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.parametrize("target", ["file", "foreign_dir"])
def test_out_that_is_not_ours_is_refused(tiny_models, recipe_file, tmp_path, capsys, target):
    recipe = recipe_file(_linear(tiny_models["base"], tiny_models["ft_a"]))
    out = tmp_path / "target"
    if target == "file":
        out.write_text("keep me")
    else:
        out.mkdir()
        (out / "notes.txt").write_text("keep me")
    assert main(["merge", f"recipe={recipe}", f"out={out}", "device=cpu"]) == 2
    err = capsys.readouterr().err
    assert ("is a file" if target == "file" else "non-empty folder not written by evolve-merge") in err
    assert (out.read_text() if target == "file" else (out / "notes.txt").read_text()) == "keep me"
