"""Writes data/{train,dev,test}.jsonl for toy_succ: add one to each number of a short list ("next 14 3 77 =" -> "15 4 78")."""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 1234
SIZES = {"train": 800, "dev": 120, "test": 240}
LENGTH = 3
LOW, HIGH = 1, 98  # keeps n - 1 and n + 1 inside the toy vocabulary's 0..99


def make_item(rng: random.Random) -> dict:
    """One multiple-choice item; distractors are the plain copy, the predecessors and the reversed answer."""
    nums = [rng.randint(LOW, HIGH) for _ in range(LENGTH)]
    answer = [n + 1 for n in nums]
    distractors = [nums, [n - 1 for n in nums], answer[::-1]]
    choices = [answer] + distractors
    texts = [" ".join(map(str, c)) for c in choices]
    if len(set(texts)) < len(texts):
        return {}
    order = list(range(len(texts)))
    rng.shuffle(order)
    return {"prompt": "next " + " ".join(map(str, nums)) + " =", "choices": [texts[i] for i in order], "label": order.index(0)}


def generate(seed: int = SEED) -> dict[str, list[dict]]:
    """All splits, with no prompt shared between two splits."""
    rng = random.Random(seed)
    seen: set[str] = set()
    splits: dict[str, list[dict]] = {}
    for split, size in SIZES.items():
        rows: list[dict] = []
        while len(rows) < size:
            item = make_item(rng)
            if item and item["prompt"] not in seen:
                seen.add(item["prompt"])
                rows.append(item)
        splits[split] = rows
    return splits


if __name__ == "__main__":
    out = Path(__file__).resolve().parent / "data"
    out.mkdir(exist_ok=True)
    for split, rows in generate().items():
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
