"""Writes data/{train,dev,test}.jsonl for toy_upper: capitalise a short list of letters ("upper k d m =" -> "K D M")."""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

SEED = 4321
SIZES = {"train": 800, "dev": 120, "test": 240}
LENGTH = 3


def make_item(rng: random.Random) -> dict:
    """One multiple-choice item; distractors are the plain copy, the reversed answer and the next letters' capitals."""
    letters = rng.sample(string.ascii_lowercase[:-1], LENGTH)  # no "z": its next letter is undefined
    answer = [c.upper() for c in letters]
    shifted = [chr(ord(c) + 1) for c in answer]
    choices = [answer, letters, answer[::-1], shifted]
    texts = [" ".join(c) for c in choices]
    order = list(range(len(texts)))
    rng.shuffle(order)
    return {"prompt": "upper " + " ".join(letters) + " =", "choices": [texts[i] for i in order], "label": order.index(0)}


def generate(seed: int = SEED) -> dict[str, list[dict]]:
    """All splits, with no prompt shared between two splits."""
    rng = random.Random(seed)
    seen: set[str] = set()
    splits: dict[str, list[dict]] = {}
    for split, size in SIZES.items():
        rows: list[dict] = []
        while len(rows) < size:
            item = make_item(rng)
            if item["prompt"] not in seen:
                seen.add(item["prompt"])
                rows.append(item)
        splits[split] = rows
    return splits


if __name__ == "__main__":
    out = Path(__file__).resolve().parent / "data"
    out.mkdir(exist_ok=True)
    for split, rows in generate().items():
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
