"""Parsing of plain `key=value` arguments for the commands that do not go through Hydra."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import yaml

from evolve.errors import UserError

PATH_KEYS = {"recipe": "recipe.yaml", "out": "merged", "model": "runs/x/best/model"}


def parse_kv(args: Sequence[str], allowed: Iterable[str], required: Iterable[str] = ()) -> dict[str, object]:
    """Parse `key=value` pairs (values read as YAML scalars/lists); unknown or missing keys are UserErrors."""
    allowed = set(allowed)
    out: dict[str, object] = {}
    for arg in args:
        if "=" not in arg:
            raise UserError(f"argument {arg!r} is not key=value; expected keys: {', '.join(sorted(allowed))}")
        key, raw = arg.split("=", 1)
        if key not in allowed:
            raise UserError(f"unknown key {key!r}; expected keys: {', '.join(sorted(allowed))}")
        if key in PATH_KEYS and not raw.strip():  # `out=` would mean the working directory
            raise UserError(f"{key}: is empty; give a path, e.g. {key}={PATH_KEYS[key]}")
        try:
            out[key] = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            out[key] = raw
        if isinstance(out[key], (int, float)) and key in ("recipe", "out", "model"):
            out[key] = raw
    for key in required:
        if key not in out:
            raise UserError(f"missing required argument {key}=...")
    return out
