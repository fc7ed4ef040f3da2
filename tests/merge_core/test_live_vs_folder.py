"""The live in-place merge and the exported folder are the same model: identical float32 logits."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from merge_core.live import build_live_model, merge_into
from merge_core.recipe import load_recipe, parse_recipe
from merge_core.sources import Sources
from merge_core.writer import write_model


def _recipes(m):
    return {
        "ties_gradient_filter_mixed_tie": {
            "merge_method": "ties", "base_model": m["base"],
            "models": [
                {"model": m["ft_a"], "parameters": {"weight": [0.2, 0.9], "density": 0.6}},
                {"model": m["untied"], "parameters": {
                    "weight": [{"filter": "mlp", "value": [1.0, 0.1]}, {"value": 0.5}], "density": 0.8}},
            ],
        },
        "dare_ties_seeded": {
            "merge_method": "dare_ties", "base_model": m["base"], "evolve_merge": {"seed": 7},
            "models": [{"model": m["ft_a"], "parameters": {"weight": 0.7, "density": 0.5}},
                       {"model": m["ft_b"], "parameters": {"weight": 0.6, "density": 0.4}}],
        },
        "slerp_sharded_source": {
            "merge_method": "slerp", "base_model": m["base"], "parameters": {"t": [0.0, 0.3, 1.0]},
            "models": [{"model": m["base"]}, {"model": m["sharded"]}],
        },
    }


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("name", ["ties_gradient_filter_mixed_tie", "dare_ties_seeded", "slerp_sharded_source"])
def test_live_equals_folder(tiny_models, recipe_file, tmp_path, name):
    recipe = load_recipe(recipe_file(_recipes(tiny_models)[name]))
    sources = Sources.open(recipe)
    live = build_live_model(sources, "cpu", torch.float32)
    merge_into(live, recipe, sources)
    out = write_model(recipe, sources, tmp_path / "out", dtype="float32", shard_size=60_000, progress=False)
    assert (out / "model.safetensors.index.json").exists()  # shards written and indexed
    saved = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert saved.config.tie_word_embeddings == live.config.tie_word_embeddings == sources.output_tied
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    assert torch.equal(_logits(live, ids), _logits(saved, ids))
    for key, value in saved.state_dict().items():
        assert torch.equal(value, live.state_dict()[key]), key


def test_remerge_in_place_reuses_parameters(tiny_models, recipe_file, tmp_path):
    data = _recipes(tiny_models)["ties_gradient_filter_mixed_tie"]
    first = load_recipe(recipe_file(data))
    sources = Sources.open(first)
    live = build_live_model(sources, "cpu", torch.float32)
    ptrs = {k: p.data_ptr() for k, p in live.named_parameters()}
    merge_into(live, first, sources)
    ids = torch.randint(0, 128, (1, 10), generator=torch.Generator().manual_seed(1))
    before = _logits(live, ids)

    data2 = json.loads(json.dumps(data, default=str))
    data2["models"][0]["parameters"]["weight"] = 0.05
    second = parse_recipe(data2, "second")
    merge_into(live, second, sources)
    assert not torch.equal(_logits(live, ids), before)
    out = write_model(second, sources, tmp_path / "second", progress=False)
    assert torch.equal(_logits(live, ids), _logits(AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32), ids))

    merge_into(live, first, sources)  # back to the first candidate: nothing stale survives
    assert torch.equal(_logits(live, ids), before)
    assert ptrs == {k: p.data_ptr() for k, p in live.named_parameters()}


def test_live_model_in_lower_precision(tiny_models, recipe_file):
    recipe = load_recipe(recipe_file(_recipes(tiny_models)["dare_ties_seeded"]))
    sources = Sources.open(recipe)
    live = build_live_model(sources, "cpu", "bfloat16")
    merge_into(live, recipe, sources)
    assert all(p.dtype == torch.bfloat16 for p in live.parameters())
    reference = build_live_model(sources, "cpu", torch.float32)
    merge_into(reference, recipe, sources, cache=False)
    for (k, p), q in zip(live.named_parameters(), reference.parameters()):
        assert torch.equal(p, q.to(torch.bfloat16)), k
