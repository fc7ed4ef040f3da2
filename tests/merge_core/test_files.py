"""Output files get the umask's modes (0644 files, 0755 folders), however they were made."""

from __future__ import annotations

import os
import stat

import pytest
import yaml

from merge_core.files import atomic_write_text, make_temp_dir, share_tree
from merge_core.recipe import parse_recipe, save_recipe


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_write_and_recipe_are_0644(tmp_path, umask_022):
    assert _mode(atomic_write_text(tmp_path / "a.json", "{}\n")) == 0o644
    recipe = parse_recipe(yaml.safe_load("merge_method: linear\nmodels: [{model: /m, parameters: {weight: 1.0}}]"), "t")
    assert _mode(save_recipe(recipe, tmp_path / "sub" / "recipe.yaml")) == 0o644
    assert not list(tmp_path.glob(".*.tmp")) and not list((tmp_path / "sub").glob(".*"))


def test_modes_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        assert _mode(atomic_write_text(tmp_path / "a.txt", "x")) == 0o640
        assert _mode(make_temp_dir(tmp_path, ".t-")) == 0o750
    finally:
        os.umask(old)


def test_share_tree_opens_0600_files_and_0700_folders(tmp_path, umask_022):
    import torch
    from safetensors.torch import save_file

    folder = make_temp_dir(tmp_path, ".model-")
    assert _mode(folder) == 0o755
    (folder / "sub").mkdir(mode=0o700)
    save_file({"w": torch.zeros(2)}, str(folder / "sub" / "model.safetensors"))
    assert _mode(folder / "sub" / "model.safetensors") == 0o600  # what safetensors does on its own
    (folder / "run.sh").write_text("#!/bin/sh\n")
    (folder / "run.sh").chmod(0o700)
    share_tree(folder)
    assert _mode(folder / "sub") == 0o755 and _mode(folder / "sub" / "model.safetensors") == 0o644
    assert _mode(folder / "run.sh") == 0o755
