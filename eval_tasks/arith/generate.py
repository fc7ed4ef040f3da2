"""Writes data/{train,dev,test}.jsonl for arith: 2-3 digit addition, 2-digit subtraction and times 1-digit ("What is 347 + 58?" -> "405")."""

from __future__ import annotations

import random

from eval_tasks.generation import disjoint_splits, write_splits

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
    return disjoint_splits(lambda rng: dict(zip(("question", "answer"), make_item(rng))), SIZES, seed,
                           key="question", id_prefix="arith")


if __name__ == "__main__":
    write_splits(__file__, generate())
