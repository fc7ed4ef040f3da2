"""Writes data/{train,dev,test}.jsonl for units: metric unit conversion both ways ("Convert 71 km to m." -> "71000")."""

from __future__ import annotations

import random

from eval_tasks.generation import disjoint_splits, write_splits

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
    return disjoint_splits(lambda rng: dict(zip(("question", "answer"), make_item(rng))), SIZES, seed,
                           key="question", id_prefix="units")


if __name__ == "__main__":
    write_splits(__file__, generate())
