"""Session fixtures of the tiny world: the toy models are trained once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def toy_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{"base", "succ", "upper"} -> HF folders made by evolve.toy.prepare into a session-wide cache."""
    from evolve.toy import prepare

    return prepare(tmp_path_factory.mktemp("toy_cache"), progress=False)
