"""Tied embeddings: all tied -> tied output; any untied -> head merged on its own, untied output (files and live model)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from merge_core.errors import UserError
from merge_core.live import build_live_model, merge_into
from merge_core.recipe import load_recipe
from merge_core.sources import Sources
from merge_core.writer import write_model

EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"


def _stored(folder, name):
    """A tensor straight from the files, with no head resolution of ours (tied folders have no head)."""
    tensors = load_file(str(folder / "model.safetensors"))
    return tensors.get(name, tensors[EMBED] if name == HEAD else None)


def _build(recipe_path, tmp_path):
    recipe = load_recipe(recipe_path)
    sources = Sources.open(recipe)
    out = write_model(recipe, sources, tmp_path / "out", progress=False)
    return recipe, sources, out


def test_all_tied_stays_tied(tiny_models, recipe_file, tmp_path):
    m = tiny_models
    path = recipe_file({
        "merge_method": "task_arithmetic", "base_model": m["base"],
        "models": [{"model": m["ft_a"], "parameters": {"weight": 0.5}}, {"model": m["ft_b"], "parameters": {"weight": 0.5}}],
    })
    recipe, sources, out = _build(path, tmp_path)
    assert sources.output_tied
    assert HEAD not in load_file(str(out / "model.safetensors"))
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True
    model = build_live_model(sources, "cpu")
    merge_into(model, recipe, sources)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert model.config.tie_word_embeddings is True


# (base, [(model, weight), ...], method); the expected head is computed from the stored tensors below.
MIXED = {
    "tied_base_untied_first": ("base", [("untied", 0.6), ("ft_a", 0.3)], "task_arithmetic"),
    "tied_base_untied_last": ("base", [("ft_a", 0.3), ("untied", 0.6)], "task_arithmetic"),
    "untied_base": ("untied", [("ft_a", 0.4), ("ft_b", 0.7)], "task_arithmetic"),
    "no_base_untied_first": (None, [("untied", 0.25), ("ft_a", 0.75)], "linear"),
    "no_base_untied_last": (None, [("ft_a", 0.75), ("untied", 0.25)], "linear"),
}


@pytest.mark.parametrize("case", MIXED)
def test_any_untied_merges_head_on_its_own(tiny_models, recipe_file, tmp_path, case):
    base, members, method = MIXED[case]
    m = tiny_models
    data = {"merge_method": method, "models": [{"model": m[k], "parameters": {"weight": w}} for k, w in members]}
    if base:
        data["base_model"] = m[base]
    recipe, sources, out = _build(recipe_file(data), tmp_path)

    def expected(name):
        if method == "linear":
            total = sum(w for _, w in members)
            return sum(w * _stored(m[k], name) for k, w in members) / total
        b = _stored(m[base], name)
        return b + sum(w * (_stored(m[k], name) - b) for k, w in members)

    written = load_file(str(out / "model.safetensors"))
    assert not sources.output_tied
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    torch.testing.assert_close(written[HEAD], expected(HEAD), rtol=0, atol=1e-6)
    torch.testing.assert_close(written[EMBED], expected(EMBED), rtol=0, atol=1e-6)
    assert not torch.equal(written[HEAD], written[EMBED])

    model = build_live_model(sources, "cpu")
    merge_into(model, recipe, sources)
    assert model.config.tie_word_embeddings is False
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert torch.equal(model.lm_head.weight, written[HEAD])
    assert torch.equal(model.model.embed_tokens.weight, written[EMBED])


def test_untied_source_without_head_is_refused(tiny_models, recipe_file, tmp_path):
    broken = tmp_path / "headless"
    shutil.copytree(tiny_models["untied"], broken)
    tensors = load_file(str(broken / "model.safetensors"))
    del tensors[HEAD]
    save_file(tensors, str(broken / "model.safetensors"))
    path = recipe_file({
        "merge_method": "linear",
        "models": [{"model": tiny_models["ft_a"], "parameters": {"weight": 1.0}}, {"model": broken, "parameters": {"weight": 1.0}}],
    })
    with pytest.raises(UserError, match=r"headless: untied .* has no lm_head.weight"):
        Sources.open(load_recipe(path))
