"""Writes data/{train,dev,test}.jsonl for toy_succ: add one to each number of a short list ("next 14 3 77 =" -> "15 4 78")."""

from __future__ import annotations

import random

from eval_tasks.generation import disjoint_splits, write_splits

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
    return disjoint_splits(make_item, SIZES, seed, key="prompt")


if __name__ == "__main__":
    write_splits(__file__, generate())
