"""Writes data/{train,dev,test}.jsonl for toy_upper: capitalise a short list of letters ("upper k d m =" -> "K D M")."""

from __future__ import annotations

import random
import string

from eval_tasks.generation import disjoint_splits, write_splits

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
    return disjoint_splits(make_item, SIZES, seed, key="prompt")


if __name__ == "__main__":
    write_splits(__file__, generate())
