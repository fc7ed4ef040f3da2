"""Sources.open: path resolution, every check done before merging, and what the output is built from."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from merge_core.errors import UserError
from merge_core.recipe import load_recipe
from merge_core.sources import Sources, has_nonfinite


def _linear(*models):
    return {"merge_method": "linear", "models": [{"model": m, "parameters": {"weight": 1.0}} for m in models]}


def _open(recipe_file, data, **kw):
    return Sources.open(load_recipe(recipe_file(data)), **kw)


def test_base_config_tie_and_tokenizer(tiny_models, recipe_file):
    m = tiny_models
    data = {"merge_method": "task_arithmetic", "base_model": m["base"],
            "models": [{"model": m["base"], "parameters": {"weight": 0.0}}, {"model": m["ft_a"], "parameters": {"weight": 1.0}}]}
    src = _open(recipe_file, data)
    assert src.base_id == str(m["base"]) and src.output_tied
    assert src.base_config == json.loads((m["base"] / "config.json").read_text())
    assert src.tokenizer_path == m["base"].resolve()
    assert len(src.models) == 2
    assert torch.equal(src.get(str(m["ft_a"]), "lm_head.weight"), src.get(str(m["ft_a"]), "model.embed_tokens.weight"))


def test_same_folder_opened_once_and_relative_paths(tiny_models, recipe_file, tmp_path):
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    shutil.copytree(tiny_models["base"], models_dir / "base")
    shutil.copytree(tiny_models["ft_a"], models_dir / "ft")
    # relative to the recipe's folder, not the CWD; two spellings of one folder share one Checkpoint
    data = _linear("models/base", "models/ft", "./models/base/")
    src = _open(recipe_file, data)
    assert src.models["models/base"] is src.models["./models/base/"]
    assert src.models["models/ft"].path == (models_dir / "ft").resolve()


def test_tokenizer_source(tiny_models, recipe_file):
    m = tiny_models
    src = _open(recipe_file, {**_linear(m["base"], m["ft_a"]), "tokenizer_source": str(m["ft_a"])})
    assert src.tokenizer_path == m["ft_a"].resolve()
    union = _open(recipe_file, {**_linear(m["base"], m["ft_a"]), "tokenizer_source": "union"})
    assert union.tokenizer_path == m["base"].resolve() and union.vocabulary.size == 128  # same tokens: same rows


def test_hub_id_is_refused_without_download(tiny_models, recipe_file, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(UserError, match=r"'nobody-here/not-a-model' is not a local folder; models must be local.*--local-dir"):
        _open(recipe_file, _linear(tiny_models["base"], "nobody-here/not-a-model"))


def test_missing_folder(tiny_models, recipe_file):
    with pytest.raises(UserError, match=r"model folder '\./nope' not found"):
        _open(recipe_file, _linear(tiny_models["base"], "./nope"))


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [({"vocab": 96}, "vocab_size"), ({"layers": 3}, "num_hidden_layers"), ({"hidden": 32}, "hidden_size"),
     ({"kv_heads": 4}, "num_key_value_heads"), ({"intermediate": 96}, "intermediate_size")],
)
def test_config_mismatch_names_both_models(tiny_models, make_model, recipe_file, kwargs, key):
    other = make_model(f"mismatch_{key}", **kwargs)
    with pytest.raises(UserError, match=rf"models '.*base' and '.*mismatch_{key}' differ in {key}"):
        _open(recipe_file, _linear(tiny_models["base"], other))


def test_architecture_mismatch(tiny_models, recipe_file, tmp_path):
    other = tmp_path / "mistral"
    shutil.copytree(tiny_models["ft_a"], other)
    config = json.loads((other / "config.json").read_text())
    config["architectures"] = ["MistralForCausalLM"]
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="LlamaForCausalLM.*MistralForCausalLM.*different architectures"):
        _open(recipe_file, _linear(tiny_models["base"], other))


def _tampered(src, dst, name, fn):
    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    tensors[name] = fn(tensors[name])
    save_file(tensors, str(dst / "model.safetensors"))
    return dst


def test_weight_shape_mismatch(tiny_models, recipe_file, tmp_path):
    name = "model.layers.1.mlp.up_proj.weight"
    bad = _tampered(tiny_models["ft_a"], tmp_path / "bad", name, lambda t: t[:-1].contiguous())
    with pytest.raises(UserError, match=rf"{name} has shape \[128, 64\] in '.*base' but \[127, 64\] in '.*bad'"):
        _open(recipe_file, _linear(tiny_models["base"], bad))


def test_missing_weight(tiny_models, recipe_file, tmp_path):
    shutil.copytree(tiny_models["ft_a"], tmp_path / "partial")
    tensors = load_file(str(tmp_path / "partial" / "model.safetensors"))
    del tensors["model.norm.weight"]
    save_file(tensors, str(tmp_path / "partial" / "model.safetensors"))
    with pytest.raises(UserError, match=r"'.*partial' .* has no tensor model.norm.weight"):
        _open(recipe_file, _linear(tiny_models["base"], tmp_path / "partial"))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_tensor_names_model_and_tensor(tiny_models, recipe_file, tmp_path, value):
    name = "model.layers.0.self_attn.v_proj.weight"

    def poison(t):
        t = t.clone()
        t[3, 5] = value
        return t

    bad = _tampered(tiny_models["ft_a"], tmp_path / "poisoned", name, poison)
    data = _linear(tiny_models["base"], bad)
    with pytest.raises(UserError, match=rf"'.*poisoned'.*tensor {name} contains NaN or inf"):
        _open(recipe_file, data)
    unchecked = _open(recipe_file, data, check_finite=False)  # opt-out opens it; the value is really there
    assert has_nonfinite(unchecked.get(str(bad), name))


def test_has_nonfinite_chunks():
    t = torch.zeros(5_000_001, dtype=torch.bfloat16)
    assert not has_nonfinite(t)
    t[-1] = float("nan")  # in the last, partial chunk
    assert has_nonfinite(t)
