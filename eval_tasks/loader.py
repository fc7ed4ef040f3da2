"""The one data loader of every task here: `custom_dataset: !function eval_tasks.loader.load` in `<task>/<task>.yaml`.

It reads `data/*.jsonl` beside the task's YAML (a copied task folder reads its own data), never from the CWD.
lm-eval looks for `eval_tasks/loader.py` beside the YAML first, then imports the `eval_tasks` package: the stock
`lm_eval --include_path eval_tasks` finds it when the project is installed (`pip install -e .`) or its root is on
PYTHONPATH.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PATH = Path(__file__).resolve().parent  # eval_tasks/: computed here only (eval_tasks.PATH is this)


def load(config_source: str | None = None, **kwargs: Any) -> Any:
    """lm-eval's custom_dataset hook: the task's splits from `data/` beside its YAML. lm-eval (0.4.13, checked)
    calls it with the task's metadata, whose `config_source` is the path of the YAML that defines the task; the
    other metadata (`version`, `--metadata` from the CLI) is ignored."""
    if not config_source or config_source == "inline":
        raise ValueError("eval_tasks.loader.load: lm-eval passed no config_source (the task YAML's path); "
                         "use lm-eval 0.4.13, whose task metadata carries it")
    return jsonl_splits(Path(config_source).resolve().parent)


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
        raise ValueError(f"{data_dir}: no train/dev/test .jsonl files beside the task's YAML")
    return datasets.DatasetDict(out)
