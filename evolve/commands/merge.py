"""`evolve merge recipe=FILE out=DIR [device=...] [dtype=...] [shard_size=...] [allow_pickle=...]`: recipe -> model folder."""

from __future__ import annotations

import re

from evolve.commands._args import parse_kv
from evolve.errors import UserError

KEYS = ("recipe", "out", "device", "dtype", "shard_size", "allow_pickle", "check_finite")
_UNITS = {"": 1, "B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4, "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3}


def parse_size(value: object, key: str = "shard_size") -> int:
    """Bytes from an int or a string like '2GB', '500MB', '1.5GiB'."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(value))
    if m and m.group(2).upper() in _UNITS and float(m.group(1)) > 0:
        return max(1, int(float(m.group(1)) * _UNITS[m.group(2).upper()]))
    raise UserError(f"{key}: {value!r} is not a size; write bytes or a number with a unit, e.g. 2GB or 500MB")


def _flag(value: object, key: str) -> bool:
    if isinstance(value, bool):
        return value
    raise UserError(f"{key}: {value!r} is not true or false; write {key}=true or {key}=false")


def run(args: list[str]) -> int:
    """Build a model folder from a recipe; every input is checked before any tensor is merged."""
    opts = parse_kv(args, KEYS, required=("recipe", "out"))
    shard_size = parse_size(opts.get("shard_size", "2GB"))
    allow_pickle = _flag(opts.get("allow_pickle", False), "allow_pickle")
    check_finite = _flag(opts.get("check_finite", True), "check_finite")
    device = str(opts.get("device", "auto"))
    dtype = opts.get("dtype")

    # heavy imports after argument checks, so a typo fails fast
    from merge_core.device import resolve_device, resolve_dtype
    from merge_core.overlap import refuse_overlap
    from merge_core.recipe import load_recipe
    from merge_core.sources import Sources, recipe_inputs
    from merge_core.writer import check_out_dir, write_model

    if dtype is not None:
        resolve_dtype(str(dtype), None)
    dev = resolve_device(device)
    out = check_out_dir(str(opts["out"]))
    recipe = load_recipe(str(opts["recipe"]))
    refuse_overlap("out", [out], [("the recipe", str(opts["recipe"])), *recipe_inputs(recipe)])
    sources = Sources.open(recipe, allow_pickle=allow_pickle, check_finite=check_finite)
    path = write_model(recipe, sources, out, shard_size=shard_size, dtype=dtype, device=dev, progress=True,
                       check_finite=check_finite)
    print(f"wrote {path}")
    return 0
