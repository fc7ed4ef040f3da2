"""No output may hold an input: a path a command writes must not be, contain or lie inside one it reads."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from merge_core.errors import UserError


def relation(out: str | os.PathLike, inp: str | os.PathLike) -> str | None:
    """'is', 'contains' or 'lies inside' when writing `out` would touch `inp` (symlinks resolved), else None."""
    o, i = Path(out).resolve(), Path(inp).resolve()
    if o == i:
        return "is"
    if o in i.parents:
        return "contains"
    if i in o.parents:
        return "lies inside"
    return None


def refuse_overlap(key: str, outputs: Iterable[str | os.PathLike], inputs: Iterable[tuple[str, str | os.PathLike]],
                   *, may_contain: bool = False) -> None:
    """UserError naming the first output that is, contains or lies inside an input (`inputs`: (what, path) pairs).

    may_contain: the outputs are folders written into, not replaced (e.g. out_dir), so holding an input is fine.
    """
    inputs = [(what, Path(p)) for what, p in inputs if p is not None]
    for out in outputs:
        for what, inp in inputs:
            rel = relation(out, inp)
            if rel is not None and not (may_contain and rel == "contains"):
                raise UserError(f"{key}: {out} {rel} {what} {inp}, which this command reads and must not overwrite; "
                                f"write to a new folder outside every input")
