"""The one data loader of every task here: `custom_dataset: !function eval_tasks.loader.load` in `<task>/<task>.yaml`.

lm-eval looks for `eval_tasks/loader.py` beside the YAML first, then imports the `eval_tasks` package: the stock
`lm_eval --include_path eval_tasks` finds it when the project is installed (`pip install -e .`) or its root is on
PYTHONPATH, from any working directory; the data is read from this file's folder, never the CWD.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PATH = Path(__file__).resolve().parent  # eval_tasks/: computed here only (eval_tasks.PATH is this)


def load(eval_task: str, **kwargs: Any) -> Any:
    """lm-eval's custom_dataset hook: `<eval_task>/data/*.jsonl` beside this file (the YAML's `dataset_kwargs` name
    the task; lm-eval's metadata kwargs, such as `version`, are ignored)."""
    return jsonl_splits(PATH / eval_task)


def jsonl_splits(task_dir: Path, splits: tuple[str, ...] = ("train", "dev", "test")) -> Any:
    """Read `task_dir/data/<split>.jsonl` into a `datasets.DatasetDict`; missing splits are skipped."""
    import datasets  # here, not at the top: `import eval_tasks` (for PATH) must stay light

    data_dir = Path(task_dir) / "data"
    out = {}
    for split in splits:
        path = data_dir / f"{split}.jsonl"
        if not path.exists():
            continue
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not rows:
            raise ValueError(f"{path}: empty data file; regenerate it with {data_dir.parent / 'generate.py'}")
        out[split] = datasets.Dataset.from_list(rows)
    if not out:
        raise ValueError(f"{data_dir}: no train/dev/test .jsonl files; is eval_task {Path(task_dir).name!r} a folder here?")
    return datasets.DatasetDict(out)
