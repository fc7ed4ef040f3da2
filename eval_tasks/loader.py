"""Loads a task's JSONL splits from the data/ folder beside its YAML, so paths never depend on the working directory."""

from __future__ import annotations

import json
from pathlib import Path

import datasets


def jsonl_splits(task_file: str, splits: tuple[str, ...] = ("train", "dev", "test")) -> datasets.DatasetDict:
    """Read `data/<split>.jsonl` next to `task_file` (a task's utils.py) into a DatasetDict; missing splits are skipped."""
    data_dir = Path(task_file).resolve().parent / "data"
    out = {}
    for split in splits:
        path = data_dir / f"{split}.jsonl"
        if not path.exists():
            continue
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not rows:
            raise ValueError(f"{path}: empty data file; regenerate it with {data_dir.parent / 'generate.py'}")
        out[split] = datasets.Dataset.from_list(rows)
    return datasets.DatasetDict(out)
