"""passthrough layer paths: written folder, live model of variable depth (views, no copies), errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from merge_core.errors import UserError
from merge_core.live import build_live_model, merge_into
from merge_core.recipe import load_recipe, parse_recipe
from merge_core.sources import Sources
from merge_core.writer import write_model

O_PROJ = "self_attn.o_proj.weight"
D = "mlp.down_proj.weight"


def _path(m, last="ft_b"):
    return {"merge_method": "passthrough", "dtype": "float32", "slices": [
        {"sources": [{"model": m["base"], "layer_range": [0, 2]}]},
        {"sources": [{"model": m["ft_a"], "layer_range": [1, 2]}],
         "parameters": {"scale": [{"filter": "o_proj", "value": 0.5}, {"filter": "down_proj", "value": 0.25}]}},
        {"sources": [{"model": m["ft_a"], "layer_range": [0, 2]}]},
        {"sources": [{"model": m[last], "layer_range": [1, 2]}]},
    ]}


def _logits(model, ids):
    # no key/value cache: a live path's repeated layer is one module with one cache slot (evolve/kv_batch.py knows)
    with torch.no_grad():
        return model(ids, use_cache=False).logits


IDS = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("last", ["ft_b", "untied"])
def test_folder_matches_path_and_live(tiny_models, recipe_file, tmp_path, last):
    m = tiny_models
    recipe = load_recipe(recipe_file(_path(m, last)))
    sources = Sources.open(recipe)
    out = write_model(recipe, sources, tmp_path / "out", progress=False)
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 6
    assert config["tie_word_embeddings"] is (last != "untied")
    got = load_file(str(out / "model.safetensors"))
    src_a = load_file(str(m["ft_a"] / "model.safetensors"))
    src_base = load_file(str(m["base"] / "model.safetensors"))
    assert torch.equal(got[f"model.layers.2.{O_PROJ}"], src_a[f"model.layers.1.{O_PROJ}"] * 0.5)
    assert torch.equal(got[f"model.layers.2.{D}"], src_a[f"model.layers.1.{D}"] * 0.25)
    assert torch.equal(got["model.layers.2.mlp.up_proj.weight"], src_a["model.layers.1.mlp.up_proj.weight"])
    assert torch.equal(got[f"model.layers.4.{O_PROJ}"], src_a[f"model.layers.1.{O_PROJ}"])  # the same layer, unscaled
    assert torch.equal(got[f"model.layers.1.{O_PROJ}"], src_base[f"model.layers.1.{O_PROJ}"])
    # embeddings from the first slice's model, final norm (and head) from the last slice's
    assert torch.equal(got["model.embed_tokens.weight"], src_base["model.embed_tokens.weight"])
    src_last = load_file(str(m[last] / "model.safetensors"))
    assert torch.equal(got["model.norm.weight"], src_last["model.norm.weight"])
    assert ("lm_head.weight" in got) is (last == "untied")

    saved = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert len(saved.model.layers) == saved.config.num_hidden_layers == 6
    live = build_live_model(sources, "cpu", torch.float32)
    merge_into(live, recipe, sources)
    assert len(live.model.layers) == live.config.num_hidden_layers == 6
    assert torch.equal(_logits(live, IDS), _logits(saved, IDS))


def test_an_untied_model_off_the_head_side_gives_a_tied_output(tiny_models, recipe_file, tmp_path):
    # mergekit 0.1.5 writes no head when none of the head's inputs (the last slice's model) has one of its own
    m = tiny_models
    path = _path(m)
    path["slices"][0]["sources"][0]["model"] = m["untied"]  # embeddings and first layers from the untied model
    recipe = load_recipe(recipe_file(path))
    sources = Sources.open(recipe)
    assert not sources.output_tied and sources.output_tied_for(recipe)
    out = write_model(recipe, sources, tmp_path / "out", progress=False)
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True
    got = load_file(str(out / "model.safetensors"))
    assert "lm_head.weight" not in got
    assert torch.equal(got["model.embed_tokens.weight"], load_file(str(m["untied"] / "model.safetensors"))["model.embed_tokens.weight"])
    saved = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    live = build_live_model(sources, "cpu", torch.float32)  # untied: another trial's path may end in the untied model
    merge_into(live, recipe, sources)
    assert live.lm_head.weight is live.model.embed_tokens.weight
    assert torch.equal(_logits(live, IDS), _logits(saved, IDS))
    path["slices"][-1]["sources"][0]["model"] = m["untied"]  # the next path ends in the untied model: its own head
    untied_end = load_recipe(recipe_file(path))
    merge_into(live, untied_end, sources)
    assert live.lm_head.weight is not live.model.embed_tokens.weight
    saved_end = AutoModelForCausalLM.from_pretrained(write_model(untied_end, sources, tmp_path / "end", progress=False),
                                                     dtype=torch.float32)
    assert torch.equal(_logits(live, IDS), _logits(saved_end, IDS))


def test_live_path_reuses_source_tensors(tiny_models, recipe_file):
    m = tiny_models
    recipe = load_recipe(recipe_file(_path(m)))
    sources = Sources.open(recipe)
    live = build_live_model(sources, "cpu", torch.float32)
    merge_into(live, recipe, sources)
    cache = {(k[0], k[1]): v for k, v in sources.device_cache.items()}

    def cached(model, name):
        return cache[(str(sources.models[str(m[model])].path), name)]

    layers = live.model.layers
    # unchanged layers are the cached source tensors themselves (no copy); scaled ones have their own storage
    assert layers[4].self_attn.o_proj.weight.data_ptr() == cached("ft_a", f"model.layers.1.{O_PROJ}").data_ptr()
    assert layers[2].mlp.up_proj.weight.data_ptr() == cached("ft_a", "model.layers.1.mlp.up_proj.weight").data_ptr()
    assert layers[2].self_attn.o_proj.weight.data_ptr() != cached("ft_a", f"model.layers.1.{O_PROJ}").data_ptr()
    assert live.model.embed_tokens.weight.data_ptr() == cached("base", "model.embed_tokens.weight").data_ptr()
    assert live.lm_head.weight is live.model.embed_tokens.weight  # tied output stays tied
    own = {p.data_ptr() for p in live.parameters()} - {t.data_ptr() for t in sources.device_cache.values()}
    assert len(own) == 2, "only the two scaled tensors have storage of their own"

    # the next candidate: same model object, new ModuleList; a repeated unscaled layer is one shared module
    model_id = id(live)
    again = parse_recipe({"merge_method": "passthrough", "slices": [
        {"sources": [{"model": str(m["base"]), "layer_range": [0, 2]}]},
        {"sources": [{"model": str(m["base"]), "layer_range": [0, 2]}]},
        {"sources": [{"model": str(m["base"]), "layer_range": [1, 2]}]}]})
    merge_into(live, again, sources)
    assert id(live) == model_id and len(live.model.layers) == 5
    assert live.model.layers[1] is live.model.layers[3] is live.model.layers[4]


def test_merge_after_path_does_not_touch_the_sources(tiny_models, recipe_file):
    m = tiny_models
    path = load_recipe(recipe_file(_path(m)))
    ties = parse_recipe({"merge_method": "ties", "base_model": str(m["base"]),
                         "models": [{"model": str(m["ft_a"]), "parameters": {"weight": 0.7, "density": 0.5}},
                                    {"model": str(m["ft_b"]), "parameters": {"weight": 0.5, "density": 0.5}}]})
    sources = Sources.open(path)
    live = build_live_model(sources, "cpu", torch.float32)
    merge_into(live, path, sources)
    before = _logits(live, IDS)
    snapshot = {k: v.clone() for k, v in sources.device_cache.items()}
    merge_into(live, ties, sources)
    assert len(live.model.layers) == live.config.num_hidden_layers == 2
    for k, v in sources.device_cache.items():
        if k in snapshot:
            assert torch.equal(v, snapshot[k]), k
    fresh = build_live_model(sources, "cpu", torch.float32)
    merge_into(fresh, ties, Sources.open(ties))
    assert torch.equal(_logits(live, IDS), _logits(fresh, IDS))
    merge_into(live, path, sources)
    assert torch.equal(_logits(live, IDS), before)


@pytest.mark.parametrize(("text", "message"), [
    ("merge_method: passthrough\nslices: [{sources: [{model: a, layer_range: [0, 2]}, {model: b, layer_range: [0, 2]}]}]",
     "passthrough merges exactly 1 models"),
    ("merge_method: passthrough\nbase_model: b\nmodels: [{model: a}]", "give each slice one source"),
    ("merge_method: passthrough\nslices: [{sources: [{model: a, layer_range: [0, 2], parameters: {weight: 1}}]}]",
     "unknown parameter for passthrough"),
])
def test_passthrough_recipe_errors(text, message):
    import yaml

    with pytest.raises(UserError, match=message):
        parse_recipe(yaml.safe_load(text))


def test_slices_base_is_ignored_and_layers_repeat():
    r = parse_recipe({"merge_method": "passthrough", "base_model": "b", "slices": [
        {"sources": [{"model": "a", "layer_range": [0, 2]}]}, {"sources": [{"model": "a", "layer_range": [0, 2]}]}]})
    assert len(r.slices) == 2
