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
    for name in (f"{task}.yaml", f"{task}_test.yaml", "generate.py", "data/dev.jsonl", "data/test.jsonl"):
        assert (folder / name).is_file(), f"{folder / name} is missing"
    assert not list(folder.glob("*.py")) or sorted(p.name for p in folder.glob("*.py")) in (["generate.py"],
                                                                                             ["generate.py", "items.py"])
    dev = _yaml(folder / f"{task}.yaml")
    assert dev["task"] == f"{task}_dev" and dev["test_split"] == "dev"
    # one loader for every task (eval_tasks/loader.py), told which folder's data/ to read
    assert dev["custom_dataset"] == "!function eval_tasks.loader.load"
    assert "dataset_path" not in dev, "data must come from data/ through loader.load, not a hub download"
    assert dev.get("metric_list"), "the first metric in metric_list is the task's primary metric"
    assert _yaml(folder / f"{task}_test.yaml") == {"include": f"{task}.yaml", "task": f"{task}_test", "test_split": "test"}


def test_the_shared_loader_reads_the_data_beside_the_tasks_yaml(tmp_path: Path) -> None:
    """load() gives the rows of data/ beside the YAML lm-eval names in config_source (a copy reads its own data)."""
    import shutil

    from eval_tasks.loader import load

    for task in TASKS:
        data = load(config_source=str(eval_tasks.PATH / task / f"{task}_test.yaml"), version=1.0)
        for split in ("train", "dev", "test"):
            assert (list(data[split]) if split in data else []) == _rows(task, split)
    copy = tmp_path / "mine"
    shutil.copytree(eval_tasks.PATH / "toy_succ", copy)
    (copy / "data" / "dev.jsonl").write_text((copy / "data" / "dev.jsonl").read_text().splitlines()[0] + "\n")
    assert len(load(config_source=str(copy / "toy_succ.yaml"))["dev"]) == 1
    with pytest.raises(ValueError, match="config_source"):
        load(version=1.0)


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


@pytest.mark.slow  # lm-eval's CLI indexes its built-in task YAMLs first (about 20 s of CPU)
def test_the_stock_lm_eval_cli_runs_a_task_with_the_shared_loader(tiny_models, tmp_path: Path) -> None:
    """`lm_eval --include_path eval_tasks` from another folder: `!function eval_tasks.loader.load` resolves (the
    project on PYTHONPATH, as an install puts it), and the score equals the project's evaluator's."""
    import os
    import subprocess
    import sys

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evolve.evaluate import Evaluator

    model_dir, limit = tiny_models["base"], 16
    env = dict(os.environ, PYTHONPATH=str(eval_tasks.PATH.parent), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               OMP_NUM_THREADS="1")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={model_dir},dtype=float32",
           "--device", "cpu", "--batch_size", "8", "--include_path", str(eval_tasks.PATH), "--tasks", "toy_succ_test",
           "--limit", str(limit), "--output_path", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cli = json.loads(next(out.rglob("results_*.json")).read_text())["results"]["toy_succ_test"]["acc,none"]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ev = Evaluator(model, AutoTokenizer.from_pretrained(model_dir), ["toy_succ"], split="test", allow_test=True,
                   limit=limit, batch_size=8, device="cpu")
    assert ev.evaluate().scores["toy_succ_test"] == pytest.approx(cli, abs=1e-12)


def test_score_cache_keys_cover_the_shared_loader(tmp_path: Path, monkeypatch) -> None:
    """The loader is part of every task (its data comes through it): a changed loader means new cached scores."""
    import shutil

    from evolve import score_cache

    shutil.copytree(eval_tasks.PATH / "toy_succ", tmp_path / "toy_succ")
    shutil.copy(eval_tasks.PATH / "loader.py", tmp_path / "loader.py")
    monkeypatch.setattr(eval_tasks, "PATH", tmp_path)
    before = score_cache._task_files_digest(["toy_succ"])
    (tmp_path / "loader.py").write_text((tmp_path / "loader.py").read_text() + "\n# changed\n")
    assert score_cache._task_files_digest(["toy_succ"]) != before
