"""merge_core.live: a precomputed plan merges the same bits as planning each candidate; the device cache holds one
copy per source tensor (a tied head shares its embedding's, a layer path adds a copy only in another dtype)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from evolve.genome import declare
from merge_core.live import build_live_model, cached_fetch, merge_into, plan_merge
from merge_core.recipe import load_recipe, parse_recipe
from merge_core.sources import Sources
from merge_core.writer import write_model

DARE = {"name": "dare_ties", "search": {"weight": {"low": 0.0, "high": 1.0}, "density": {"low": 0.2, "high": 1.0}},
        "options": {"lambda": 1.1}}


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters(remove_duplicate=False)}


@pytest.mark.parametrize("split", [False, True])
def test_a_precomputed_plan_merges_the_same_bits(tiny_models, split) -> None:
    m = tiny_models
    g = declare(DARE, {"layer_group_size": 1, "split_attn_mlp": split}, n_layers=2, base=str(m["base"]),
                sources=[str(m["ft_a"]), str(m["untied"])])
    first = g.recipe(g.baselines()[0], {"seed": 4}, where="search")
    sources = Sources.open(first)
    plan = plan_merge(first, sources)
    planned, fresh = build_live_model(sources, "cpu"), build_live_model(sources, "cpu")
    gen = torch.Generator().manual_seed(0)
    for trial in range(3):
        point = {name: float(d.low + (d.high - d.low) * torch.rand(1, generator=gen)) for name, d in g.distributions().items()}
        recipe = g.recipe(point, {"seed": 4, "trial": trial}, where=f"trial {trial}")
        merge_into(planned, recipe, sources, plan=plan)
        merge_into(fresh, parse_recipe(g.recipe_dict(point, {"seed": 4, "trial": trial}), f"trial {trial}"), sources)
        a, b = _params(planned), _params(fresh)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), trial
    assert not torch.equal(a["model.layers.0.mlp.up_proj.weight"], _params(build_live_model(sources, "cpu"))["model.layers.0.mlp.up_proj.weight"])


def test_a_plan_refuses_a_recipe_of_another_structure(tiny_models) -> None:
    m = tiny_models
    one = parse_recipe({"merge_method": "ties", "base_model": str(m["base"]),
                        "models": [{"model": str(m["ft_a"]), "parameters": {"weight": 0.5, "density": 0.5}}]})
    other = parse_recipe({"merge_method": "ties", "base_model": str(m["base"]),
                          "models": [{"model": str(m["ft_a"]), "parameters": {"weight": [0.5, 0.2], "density": 0.5}}]})
    sources = Sources.open(one)
    with pytest.raises(ValueError, match="differ from the planned recipe's"):
        merge_into(build_live_model(sources, "cpu"), other, sources, plan=plan_merge(one, sources))


def test_the_device_cache_holds_one_copy_per_source_tensor(tiny_models) -> None:
    m = tiny_models
    recipe = parse_recipe({"merge_method": "linear", "models": [{"model": str(m["base"]), "parameters": {"weight": 1}},
                                                                 {"model": str(m["ft_a"]), "parameters": {"weight": 1}}]})
    sources = Sources.open(recipe)
    stored = sources.models[str(m["base"])].dtype
    fetch = cached_fetch(sources, torch.device("cpu"))
    head = fetch(str(m["base"]), "lm_head.weight")
    assert head is fetch(str(m["base"]), "model.embed_tokens.weight")  # tied: the head is the embedding's copy
    assert fetch(str(m["base"]), "model.norm.weight") is fetch(str(m["base"]), "model.norm.weight")
    n = len(sources.device_cache)
    same = cached_fetch(sources, torch.device("cpu"), stored)  # a layer path in the stored dtype: the same copies
    assert same(str(m["base"]), "model.norm.weight") is fetch(str(m["base"]), "model.norm.weight")
    assert len(sources.device_cache) == n
    other = torch.bfloat16 if stored != torch.bfloat16 else torch.float32
    typed = cached_fetch(sources, torch.device("cpu"), other)
    t = typed(str(m["base"]), "model.norm.weight")
    assert t.dtype == other and len(sources.device_cache) == n + 1 and t is typed(str(m["base"]), "model.norm.weight")
    assert torch.equal(t, fetch(str(m["base"]), "model.norm.weight").to(other))
    # a layer path first, in the stored dtype: merge_into later reads the same copy, never a second one
    typed_first = cached_fetch(sources, torch.device("cpu"), stored)(str(m["ft_a"]), "model.norm.weight")
    assert typed_first is fetch(str(m["ft_a"]), "model.norm.weight")


def test_remerge_in_place_reuses_parameters(sample_recipes, recipe_file, tmp_path):  # from test_live_vs_folder.py
    data = sample_recipes["ties_gradient_filter_mixed_tie"]
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


def test_live_model_in_lower_precision(sample_recipes, recipe_file):  # from test_live_vs_folder.py
    recipe = load_recipe(recipe_file(sample_recipes["dare_ties_seeded"]))
    sources = Sources.open(recipe)
    live = build_live_model(sources, "cpu", "bfloat16")
    merge_into(live, recipe, sources)
    assert all(p.dtype == torch.bfloat16 for p in live.parameters())
    reference = build_live_model(sources, "cpu", torch.float32)
    merge_into(reference, recipe, sources, cache=False)
    for (k, p), q in zip(live.named_parameters(), reference.parameters()):
        assert torch.equal(p, q.to(torch.bfloat16)), k
