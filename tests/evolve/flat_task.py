"""A user's own lm-eval task folder in the flat layout (`DIR/<task>.yaml`, data by absolute path), for tests.

Its `process_results` appends each scored document's `id` to the file named by $EVOLVE_DOC_LOG (when set), so a
test can see every document the evaluator scores.
"""

from __future__ import annotations

import json
from pathlib import Path

import eval_tasks

TASK = "flat_succ"

UTILS = '''import json, os


def process_results(doc, results):
    """Accuracy of a multiple-choice item; logs the document's id to $EVOLVE_DOC_LOG."""
    log = os.environ.get("EVOLVE_DOC_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps(doc["id"]) + "\\n")
    lls = [ll for ll, _ in results]
    return {"acc": float(lls.index(max(lls)) == doc["label"])}
'''


def write_flat_task(folder: Path, name: str = TASK, n: int | None = None) -> Path:
    """Write `folder/<name>.yaml`, `folder/utils.py` and `folder/<name>.jsonl` (toy_succ items with ids); returns folder."""
    folder.mkdir(parents=True, exist_ok=True)
    src = Path(eval_tasks.PATH) / "toy_succ" / "data"
    rows = [json.loads(line) for f in ("dev.jsonl", "test.jsonl") for line in (src / f).read_text().splitlines()]
    rows = rows[:n] if n else rows
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps({"id": i, **r}) + "\n" for i, r in enumerate(rows)))
    (folder / "utils.py").write_text(UTILS)
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "output_type: multiple_choice\n"
        "test_split: test\n"
        'doc_to_text: "{{prompt}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        "doc_to_target: label\n"
        'target_delimiter: " "\n'
        "process_results: !function utils.process_results\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "metadata:\n  version: 1.0\n")
    return folder
