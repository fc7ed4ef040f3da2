"""Writes data/{train,dev,test}.jsonl from the hand-written items in items.py (fixed seed; rerun after editing items)."""

from __future__ import annotations

import random

from items import DROPPED, ITEMS

from eval_tasks.generation import write_splits

SEED = 1234
N_DEV = 70
N_TRAIN = 0  # a retention task only measures what the base model already knows; nothing to train on


def build(seed: int = SEED) -> dict[str, list[dict]]:
    """Shuffle items and their choices with `seed`, then cut them into disjoint splits."""
    rng = random.Random(seed)
    kept = [item for item in ITEMS if item[0] not in DROPPED]
    rng.shuffle(kept)
    rows = []
    for i, (question, answer, wrong) in enumerate(kept):
        choices = [answer, *wrong]
        rng.shuffle(choices)
        rows.append({"id": f"retention-{i:03d}", "question": question, "choices": choices, "answer": choices.index(answer)})
    return {"train": rows[:N_TRAIN], "dev": rows[N_TRAIN : N_TRAIN + N_DEV], "test": rows[N_TRAIN + N_DEV :]}


if __name__ == "__main__":
    write_splits(__file__, build())
