"""Parsing of plain `key=value` arguments for the commands that do not go through Hydra."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import yaml

from evolve.errors import UserError

EXAMPLES = {"recipe": "recipe.yaml", "out": "DIR", "model": "runs/x/best/model", "trial": "best"}  # keys never empty


def refuse_empty(key: str, raw: str) -> None:
    """UserError for an empty value of a key that needs one (`out=` would mean the working directory)."""
    if key in EXAMPLES and not raw.strip():
        raise UserError(f"{key}: is empty; give a value, e.g. {key}={EXAMPLES[key]}")


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
        refuse_empty(key, raw)
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
