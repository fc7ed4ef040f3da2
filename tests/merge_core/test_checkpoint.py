"""Checkpoint: lazy safetensors reading, shards, tied-head resolution, refused and broken inputs."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from merge_core.checkpoint import Checkpoint
from merge_core.errors import UserError


def test_reads_single_file_lazily(tiny_models):
    ck = Checkpoint(tiny_models["base"])
    stored = load_file(str(tiny_models["base"] / "model.safetensors"))
    assert ck.names == set(stored)
    assert "lm_head.weight" not in ck.names and ck.tied
    name = "model.layers.1.mlp.down_proj.weight"
    assert ck.shape(name) == tuple(stored[name].shape)
    assert torch.equal(ck.get(name), stored[name])
    assert ck.dtype == torch.float32


def test_tied_head_resolves_to_embedding(tiny_models):
    ck = Checkpoint(tiny_models["ft_a"])
    assert ck.has("lm_head.weight")
    assert torch.equal(ck.get("lm_head.weight"), ck.get("model.embed_tokens.weight"))


def test_untied_head_is_its_own(tiny_models):
    ck = Checkpoint(tiny_models["untied"])
    assert not ck.tied and "lm_head.weight" in ck.names
    assert not torch.equal(ck.get("lm_head.weight"), ck.get("model.embed_tokens.weight"))


def test_sharded_equals_what_transformers_loads(tiny_models):
    from transformers import AutoModelForCausalLM

    folder = tiny_models["sharded"]
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    ck = Checkpoint(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    for name, param in model.state_dict().items():
        assert torch.equal(ck.get(name), param), name
    assert ck.names == set(index["weight_map"])


def test_missing_tie_flag_uses_transformers_default(tiny_models, tmp_path):
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "m"
    shutil.copytree(tiny_models["untied"], folder)
    config = json.loads((folder / "config.json").read_text())
    del config["tie_word_embeddings"]
    (folder / "config.json").write_text(json.dumps(config))
    model = AutoModelForCausalLM.from_pretrained(folder)
    ck = Checkpoint(folder)
    assert ck.tied == model.config.tie_word_embeddings
    assert torch.equal(ck.get("lm_head.weight"), model.lm_head.weight)


def test_untied_without_head_is_refused(tiny_models, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(tiny_models["base"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["tie_word_embeddings"] = False
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="untied .* has no lm_head.weight"):
        Checkpoint(folder)


def test_pickle_refused_unless_allowed(tiny_models, tmp_path):
    folder = tmp_path / "bin"
    folder.mkdir()
    shutil.copy(tiny_models["base"] / "config.json", folder)
    state = load_file(str(tiny_models["base"] / "model.safetensors"))
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(UserError, match="pytorch_model.bin: pickled checkpoint refused.*allow_pickle"):
        Checkpoint(folder)
    ck = Checkpoint(folder, allow_pickle=True)
    assert torch.equal(ck.get("model.norm.weight"), state["model.norm.weight"])
    assert torch.equal(ck.get("lm_head.weight"), state["model.embed_tokens.weight"])


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("no_config", r"config.json: file missing"),
        ("bad_config", r"config.json: not valid JSON"),
        ("no_weights", r"no model.safetensors"),
        ("garbled_weights", r"model.safetensors: not a readable safetensors file"),
        ("missing_shard", r"model-00002-of-\d+.safetensors: shard listed in .* is missing"),
    ],
)
def test_broken_folders_name_the_file(tiny_models, tmp_path, breakage, message):
    src = tiny_models["sharded" if breakage == "missing_shard" else "base"]
    folder = tmp_path / "m"
    shutil.copytree(src, folder)
    if breakage == "no_config":
        (folder / "config.json").unlink()
    elif breakage == "bad_config":
        (folder / "config.json").write_text("{not json")
    elif breakage == "no_weights":
        (folder / "model.safetensors").unlink()
    elif breakage == "garbled_weights":
        (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00garbage!")
    else:
        next(folder.glob("model-00002-of-*.safetensors")).unlink()
    with pytest.raises(UserError, match=message):
        Checkpoint(folder)


def test_missing_folder():
    with pytest.raises(UserError, match="model folder not found"):
        Checkpoint("/nonexistent/model")


def test_sha256_changes_with_weights(tiny_models):
    assert Checkpoint(tiny_models["base"]).sha256() != Checkpoint(tiny_models["ft_a"]).sha256()
    assert Checkpoint(tiny_models["base"]).sha256() == Checkpoint(tiny_models["base"]).sha256()
