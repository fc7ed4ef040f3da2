"""Llama-3.2-1B (16 layers, hidden 2048) and 3B (28 layers, hidden 3072): real hidden sizes with layers cut, and
per-layer gradients / layer groups that are right for 28 layers when the group size does not divide them."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from evolve.genome import declare
from merge_core.architecture import get_architecture
from merge_core.live import build_live_model, merge_into
from merge_core.plan import plan_tensors
from merge_core.recipe import parse_recipe
from merge_core.sources import Sources
from merge_core.synthetic import LLAMA32_SHAPES, llama32_config, make_checkpoint
from merge_core.writer import write_model

TIES = {"name": "ties", "search": {"weight": {"low": 0.0, "high": 1.0}, "density": {"low": 0.1, "high": 1.0}},
        "baseline": {"weight": None, "density": 0.5}, "options": {"normalize": True}}


def _config(shape: str, **kw) -> dict:
    s = LLAMA32_SHAPES[shape]
    return llama32_config(layers=s["layers"], hidden=s["hidden"], intermediate=s["intermediate"], heads=s["heads"],
                          kv_heads=s["kv_heads"], vocab=s["vocab"], tied=True, dtype=torch.bfloat16, **kw)


@pytest.mark.parametrize("shape", ["1B", "3B"])
@pytest.mark.parametrize("group,split", [(1, False), (3, False), (5, True), (16, False)])
def test_every_layer_gets_its_groups_value(shape, group, split):
    config = _config(shape)
    n = config["num_hidden_layers"]
    genome = declare(TIES, {"layer_group_size": group, "split_attn_mlp": split}, n_layers=n, base="B", sources=["x", "y"])
    assert genome.n_groups == -(-n // group)  # the last group is short when group does not divide n
    params = {name: (i * 0.6180339887) % 1 * 0.8 + 0.15 for i, name in enumerate(genome.distributions())}
    recipe = parse_recipe(genome.recipe_dict(params, {"seed": 0}))
    plans = plan_tensors(recipe, get_architecture(config), config, output_tied=True)
    layer_plans = [p for p in plans if p.layer is not None]
    assert {p.layer for p in layer_plans} == set(range(n))
    for p in layer_plans:
        g = p.layer // group
        part = ("mlp" if "mlp" in p.out_name or "post_attention" in p.out_name else "attn") if split else "layer"
        for model in ["x", "y"]:
            for param in ("weight", "density"):
                want = params[f"{param}.{model}.{part}{g:02d}"]
                assert p.params[model][param] == pytest.approx(want, abs=1e-12), (p.out_name, param)
    embed = next(p for p in plans if p.kind == "embed")
    assert embed.params["x"]["weight"] == params["weight.x.embed_norm_head"]


@pytest.fixture(scope="module")
def shaped(tmp_path_factory):
    """A tied base and a fine-tune at each real hidden size and head layout; cut to one layer, intermediate 1024 and
    vocab 512 (the real 3B layer alone is 200 MB in bfloat16, too slow for the test suite on 2 shared cores)."""
    root = tmp_path_factory.mktemp("llama32_shapes")
    out = {}
    for shape, layers in (("1B", 1), ("3B", 1)):
        s = dict(LLAMA32_SHAPES[shape], layers=layers, intermediate=1024, vocab=512)
        base = make_checkpoint(root / f"{shape}_base", dtype=torch.bfloat16, tied=True, **s)
        out[shape] = (base, make_checkpoint(root / f"{shape}_ft", like=base, noise=0.01, seed=1, dtype=torch.bfloat16))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["1B", "3B"])
def test_real_hidden_size_merges_tied_and_live_equals_written(shape, shaped, tmp_path):
    base, ft = shaped[shape]
    recipe = parse_recipe({"merge_method": "ties", "base_model": str(base), "dtype": "float32",
                           "models": [{"model": str(ft), "parameters": {"weight": 0.7, "density": 0.5}}]})
    sources = Sources.open(recipe)
    out = write_model(recipe, sources, tmp_path / "out", progress=False)
    config = json.loads((out / "config.json").read_text())
    s = LLAMA32_SHAPES[shape]
    assert config["hidden_size"] == s["hidden"] and config["head_dim"] == s["hidden"] // s["heads"]
    assert config["tie_word_embeddings"] is True
    written = load_file(str(out / "model.safetensors"))
    assert "lm_head.weight" not in written
    assert written["model.layers.0.self_attn.k_proj.weight"].shape == (s["kv_heads"] * s["hidden"] // s["heads"], s["hidden"])
    model = build_live_model(sources, "cpu", recipe.dtype)
    merge_into(model, recipe, sources, cache=False)
    live = model.state_dict()
    for name, tensor in written.items():
        assert torch.equal(live[name], tensor), name
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
