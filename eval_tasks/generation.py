"""Shared by every task's generate.py: disjoint splits from one seeded stream, written atomically as JSONL."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path


def disjoint_splits(make_item: Callable[[random.Random], dict | None], sizes: dict[str, int], seed: int,
                    key: str, id_prefix: str | None = None) -> dict[str, list[dict]]:
    """Draw items until each split is full; an item whose `key` was drawn before is skipped, so no split shares one."""
    rng = random.Random(seed)
    seen: set[str] = set()
    splits: dict[str, list[dict]] = {}
    for split, size in sizes.items():
        rows: list[dict] = []
        while len(rows) < size:
            item = make_item(rng)
            if item and item[key] not in seen:
                seen.add(item[key])
                rows.append({"id": f"{id_prefix}-{split}-{len(rows):04d}", **item} if id_prefix else item)
        splits[split] = rows
    return splits


def write_splits(script: str, splits: dict[str, list[dict]]) -> None:
    """Write `data/<split>.jsonl` beside the generate.py at `script` (temp file, then rename); an empty split has no file."""
    out = Path(script).resolve().parent / "data"
    out.mkdir(exist_ok=True)
    for split, rows in splits.items():
        path = out / f"{split}.jsonl"
        if not rows:
            path.unlink(missing_ok=True)
            continue
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        tmp.replace(path)
        print(f"{path}: {len(rows)} items")
