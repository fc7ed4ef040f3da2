"""Registry of model preparers: `models.prepare: NAME` -> a function that makes (or reuses) models on the spot."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

from evolve.errors import UserError

# name -> "module:function"; each is prepare(cache_dir, *, seed, progress, **options) -> {name: HF folder}
PREPARERS: dict[str, str] = {
    "toy": "evolve.toy:prepare",
    "smollm2_demo": "evolve.prepare:prepare_demo",
}


def get_preparer(name: str) -> Callable[..., dict[str, Path]]:
    """The preparer function registered under `name`."""
    if name not in PREPARERS:
        raise UserError(f"models.prepare: {name!r} is not a preparer; choose one of {', '.join(PREPARERS)} or null")
    module, func = PREPARERS[name].split(":")
    return getattr(importlib.import_module(module), func)
