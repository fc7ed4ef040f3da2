"""Writes data/{train,dev,test}.jsonl for arith: 2-3 digit addition, 2-digit subtraction and times 1-digit ("What is 347 + 58?" -> "405")."""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 2024
SIZES = {"train": 4000, "dev": 250, "test": 400}


def make_item(rng: random.Random) -> tuple[str, str]:
    """One (question, answer) pair: 2-digit + or - (never below zero), 3-digit + 2-digit, or 2-digit * 1-digit."""
    kind = rng.random()
    if kind < 0.25:
        a, b = rng.randint(100, 999), rng.randint(10, 99)
        return f"What is {a} + {b}?", str(a + b)
    if kind < 0.4:
        a, b = rng.randint(10, 99), rng.randint(2, 9)
        return f"What is {a} * {b}?", str(a * b)
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    if rng.random() < 0.5:
        a, b = max(a, b), min(a, b)
        return f"What is {a} - {b}?", str(a - b)
    return f"What is {a} + {b}?", str(a + b)


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
                rows.append({"id": f"arith-{split}-{len(rows):04d}", "question": question, "answer": answer})
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
