"""Shared fixtures: tiny random Llama-3.2-shaped checkpoints, made once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(1)

from tests.external import export_mergekit_env  # noqa: E402

export_mergekit_env()  # bench/compare_mergekit.py and mergekit subprocesses see the venv the tests found


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Folders of tiny models sharing one shape: a tied base, tied/untied fine-tunes of it, a sharded one.

    Keys: base (tied), ft_a / ft_b (tied, base + noise), untied (base + noise, own lm_head),
    untied_b (another untied fine-tune), sharded (tied, several safetensors shards + index).
    """
    from merge_core.synthetic import make_checkpoint

    root = tmp_path_factory.mktemp("tiny_models")
    base = make_checkpoint(root / "base", seed=0)
    return {
        "base": base,
        "ft_a": make_checkpoint(root / "ft_a", like=base, noise=0.01, seed=1),
        "ft_b": make_checkpoint(root / "ft_b", like=base, noise=0.01, seed=2),
        "untied": make_checkpoint(root / "untied", like=base, noise=0.01, seed=3, tied=False),
        "untied_b": make_checkpoint(root / "untied_b", like=base, noise=0.01, seed=4, tied=False),
        "sharded": make_checkpoint(root / "sharded", like=base, noise=0.01, seed=5, shard_size=40_000),
    }


@pytest.fixture(scope="session")
def make_model(tmp_path_factory: pytest.TempPathFactory):
    """Factory for one-off tiny checkpoints: make_model(name, **make_checkpoint kwargs) -> Path."""
    from merge_core.synthetic import make_checkpoint

    root = tmp_path_factory.mktemp("one_off_models")

    def make(name: str, **kwargs) -> Path:
        return make_checkpoint(root / name, **kwargs)

    return make


@pytest.fixture
def recipe_file(tmp_path: Path):
    """Factory: recipe_file(mapping, name="recipe.yaml") writes a recipe YAML under tmp_path and returns its path."""
    import yaml

    def write(data: dict, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(_plain(data), sort_keys=False))
        return path

    return write


def _plain(value):
    # Paths -> str so recipes can be written with fixture paths directly.
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, Path) else value
