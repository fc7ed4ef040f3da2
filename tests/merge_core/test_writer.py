"""merge_core.writer: which output folders it may replace, write errors as one line, the model card, atomic swaps."""

from __future__ import annotations

import errno

import pytest
import yaml
from safetensors import SafetensorError

from merge_core.errors import UserError
from merge_core.recipe import parse_recipe
from merge_core.sources import Sources
from merge_core.writer import CARD_MARKER, check_out_dir, is_hub_id, model_card, write_failure, write_model


def test_check_out_dir_refuses_files_and_foreign_folders(tmp_path) -> None:
    assert check_out_dir(tmp_path / "new") == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    assert check_out_dir(tmp_path / "empty") == tmp_path / "empty"
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file; give a folder path"):
        check_out_dir(tmp_path / "file")
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "README.md").write_text("someone's notes")
    with pytest.raises(UserError, match="is a non-empty folder not written by evolve-merge"):
        check_out_dir(tmp_path / "theirs")
    (tmp_path / "ours").mkdir()
    (tmp_path / "ours" / "README.md").write_text(f"# x\n{CARD_MARKER}\n")
    assert check_out_dir(tmp_path / "ours") == tmp_path / "ours"


def test_write_failure_reads_os_and_safetensors_errors() -> None:
    assert write_failure(OSError(errno.ENOSPC, "No space left on device")) == "No space left on device"
    assert write_failure(OSError(errno.EROFS, "")) == "Read-only file system"
    assert write_failure(SafetensorError("I/O error: No space left on device (os error 28)")) == "No space left on device"
    assert write_failure(OSError(errno.ENOENT, "No such file")) is None
    assert write_failure(SafetensorError("header too large")) is None
    assert write_failure(ValueError("no")) is None


def _recipe(m):
    return parse_recipe({"merge_method": "ties", "base_model": str(m["base"]),
                         "models": [{"model": str(m["ft_a"]), "parameters": {"weight": 0.5, "density": 0.5}}]})


def test_bad_shard_size_is_refused_before_anything_is_written(tiny_models, tmp_path) -> None:
    recipe = _recipe(tiny_models)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(UserError, match="shard_size: .* is not a positive number of bytes"):
            write_model(recipe, Sources.open(recipe), tmp_path / "out", shard_size=bad, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_an_earlier_output_is_replaced_whole_and_no_temp_is_left(tiny_models, tmp_path) -> None:
    recipe = _recipe(tiny_models)
    sources = Sources.open(recipe)
    out = write_model(recipe, sources, tmp_path / "out", shard_size=50_000, progress=False)
    assert (out / "model.safetensors.index.json").is_file()
    write_model(recipe, sources, out, progress=False)  # one shard now: the old shards and index are gone
    assert sorted(p.name for p in out.iterdir() if "safetensors" in p.name) == ["model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_model_card_front_matter_and_recipe(tiny_models) -> None:
    recipe = _recipe(tiny_models)
    card = model_card(recipe, Sources.open(recipe), extra="## Scores\n\narith 0.5")
    front = yaml.safe_load(card.split("---")[1])
    assert front == {"library_name": "transformers", "tags": ["merge", "mergekit", "evolve-merge"]}  # local: no base_model
    assert CARD_MARKER in card and "`ties` method from 2 model(s)" in card and card.rstrip().endswith("arith 0.5")
    assert yaml.safe_load(card.split("```yaml")[1].split("```")[0])["merge_method"] == "ties"
    assert is_hub_id("meta-llama/Llama-3.2-1B-Instruct") and not is_hub_id(str(tiny_models["base"]))
    assert not is_hub_id("just-a-name")
