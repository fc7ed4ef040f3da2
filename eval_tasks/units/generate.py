"""Writes data/{train,dev,test}.jsonl for units: metric unit conversion both ways ("Convert 71 km to m." -> "71000")."""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 2025
SIZES = {"train": 4000, "dev": 250, "test": 400}
# (larger unit, smaller unit, how many smaller units make one larger)
UNITS = [
    ("km", "m", 1000), ("m", "cm", 100), ("m", "mm", 1000), ("cm", "mm", 10), ("km", "cm", 100000),
    ("kg", "g", 1000), ("g", "mg", 1000), ("t", "kg", 1000), ("L", "mL", 1000), ("kL", "L", 1000),
]


def make_item(rng: random.Random) -> tuple[str, str]:
    """One (question, answer) pair, up (x km -> m) or down (x000 m -> km); answers are whole numbers."""
    big, small, factor = rng.choice(UNITS)
    x = rng.randint(2, 999)
    if rng.random() < 0.5:
        return f"Convert {x} {big} to {small}.", str(x * factor)
    return f"Convert {x * factor} {small} to {big}.", str(x)


def generate(seed: int = SEED) -> dict[str, list[dict]]:
    """All splits from one seeded stream; a question lands in at most one split."""
    rng = random.Random(seed)
    seen: set[str] = set()
    splits: dict[str, list[dict]] = {}
    for split, size in SIZES.items():
        rows: list[dict] = []
        while len(rows) < size:
            question, answer = make_item(rng)
            if question not in seen:
                seen.add(question)
                rows.append({"id": f"units-{split}-{len(rows):04d}", "question": question, "answer": answer})
        splits[split] = rows
    return splits


def main() -> None:
    """Write the splits next to this script (temp file, then rename)."""
    out = Path(__file__).resolve().parent / "data"
    out.mkdir(exist_ok=True)
    for split, rows in generate().items():
        path = out / f"{split}.jsonl"
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        tmp.replace(path)
        print(f"{path}: {len(rows)} items")


if __name__ == "__main__":
    main()
