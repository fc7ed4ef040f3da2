"""Every task folder in eval_tasks/ follows the layout, loads in lm-eval, and keeps its splits disjoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import eval_tasks
from evolve.tasks import local_task_names

TASKS = local_task_names()
MIN_ITEMS = 50  # fewer dev/test items make a score too coarse to rank merges (1 item = 2 points)


class _Loader(yaml.SafeLoader):
    """Reads task YAMLs as data, keeping `!function x.y` as the string 'x.y'."""


_Loader.add_constructor("!function", lambda loader, node: "!function " + loader.construct_scalar(node))


def _yaml(path: Path) -> dict:
    return yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)


def _rows(task: str, split: str) -> list[dict]:
    path = eval_tasks.PATH / task / "data" / f"{split}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] if path.exists() else []


@pytest.fixture(scope="module")
def manager():
    """One TaskManager over eval_tasks only (no built-in index)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(eval_tasks.PATH), include_defaults=False)


def test_there_are_tasks() -> None:
    """The retention task at least is found by the scan the evaluator uses."""
    assert "retention" in TASKS


@pytest.mark.parametrize("task", TASKS)
def test_layout(task: str) -> None:
    """The files and keys of the shared layout (eval_tasks/README.md)."""
    folder = eval_tasks.PATH / task
    for name in (f"{task}.yaml", f"{task}_test.yaml", "utils.py", "generate.py", "data/dev.jsonl", "data/test.jsonl"):
        assert (folder / name).is_file(), f"{folder / name} is missing"
    dev = _yaml(folder / f"{task}.yaml")
    assert dev["task"] == f"{task}_dev" and dev["test_split"] == "dev"
    assert dev["custom_dataset"] == "!function utils.load"
    assert "dataset_path" not in dev, "data must come from data/ through utils.load, not a hub download"
    assert dev.get("metric_list"), "the first metric in metric_list is the task's primary metric"
    assert _yaml(folder / f"{task}_test.yaml") == {"include": f"{task}.yaml", "task": f"{task}_test", "test_split": "test"}
    utils = (folder / "utils.py").read_text()
    assert "from eval_tasks.loader import jsonl_splits" in utils and "jsonl_splits(__file__)" in utils


@pytest.mark.parametrize("task", TASKS)
def test_loads_in_lm_eval_with_disjoint_splits(task: str, manager) -> None:
    """Both splits load and build requests; sizes are usable; no prompt is shared between train, dev and test."""
    loaded = manager.load([f"{task}_dev", f"{task}_test"])["tasks"]
    prompts = {}
    for split in ("dev", "test"):
        t = loaded[f"{task}_{split}"]
        docs = list(t.eval_docs)
        assert len(docs) == len(_rows(task, split)) >= MIN_ITEMS, f"{task}/{split}: {len(docs)} items"
        t.build_all_requests(limit=2, rank=0, world_size=1)
        assert t.instances and all(inst.args[0] for inst in t.instances)
        prompts[split] = [t.doc_to_text(d) for d in docs]
        assert len(set(prompts[split])) == len(prompts[split]), f"{task}/{split} repeats a prompt"
        if split == "dev" and t.has_training_docs():
            prompts["train"] = [t.doc_to_text(d) for d in t.training_docs()]
    for a, b in (("dev", "test"), ("train", "dev"), ("train", "test")):
        shared = set(prompts.get(a, ())) & set(prompts.get(b, ()))
        assert not shared, f"{task}: {len(shared)} prompts in both {a} and {b}, e.g. {sorted(shared)[0]!r}"
