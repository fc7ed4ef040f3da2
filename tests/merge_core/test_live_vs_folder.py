"""The live in-place merge and the exported folder are the same model: identical float32 logits."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from merge_core.live import build_live_model, merge_into
from merge_core.recipe import load_recipe
from merge_core.sources import Sources
from merge_core.writer import write_model


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("name", ["ties_gradient_filter_mixed_tie", "dare_ties_seeded", "slerp_sharded_source"])
def test_live_equals_folder(sample_recipes, recipe_file, tmp_path, name):
    recipe = load_recipe(recipe_file(sample_recipes[name]))
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
