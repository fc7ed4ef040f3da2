"""`evolve eval`: a table and a JSON report on success; one line and exit 2 on bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import eval_tasks
from evolve.cli import main


def test_eval_prints_table_and_writes_json(tiny_models: dict[str, Path], tmp_path: Path, capsys) -> None:
    """Scores in the JSON equal an Evaluator's on the same model; the table names task, metric, value and n."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evolve.evaluate import Evaluator

    out = tmp_path / "scores.json"
    args = ["eval", f"model={tiny_models['base']}", "tasks=[retention,toy_succ]", "split=test", "limit=10", f"out={out}"]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert report["metrics"] == {"retention_test": "acc", "toy_succ_test": "acc"}
    assert report["n_items"] == {"retention_test": 10, "toy_succ_test": 10}
    model = AutoModelForCausalLM.from_pretrained(tiny_models["base"], dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny_models["base"])
    expected = Evaluator(model, tok, ["retention", "toy_succ"], split="test", allow_test=True, limit=10).evaluate()
    assert report["scores"] == expected.scores
    table = capsys.readouterr().out
    assert "task" in table and "metric" in table
    assert any(line.split()[:2] == ["retention_test", "acc"] and line.split()[3] == "10" for line in table.splitlines())
    assert not list(tmp_path.glob(".*tmp"))


def test_default_output_goes_beside_the_model(tiny_models: dict[str, Path], tmp_path: Path, capsys) -> None:
    """Without out=, the report is <model>_eval_<split>.json beside the folder; the folder itself is untouched."""
    model = tmp_path / "m"
    shutil.copytree(tiny_models["base"], model)
    before = sorted(p.name for p in model.iterdir())
    assert main(["eval", f"model={model}", "tasks=[retention]", "limit=4"]) == 0
    assert json.loads((tmp_path / "m_eval_dev.json").read_text())["n_items"] == {"retention_dev": 4}
    assert sorted(p.name for p in model.iterdir()) == before
    assert f"wrote {tmp_path / 'm_eval_dev.json'}" in capsys.readouterr().out


def _one_line_exit_2(args: list[str], capsys, *needles: str) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err


def test_missing_model_folder(tmp_path: Path, capsys) -> None:
    """A folder that is not a saved model is refused by name."""
    _one_line_exit_2(["eval", f"model={tmp_path / 'nope'}", "tasks=[retention]"], capsys, "model:", "nope")


def test_unknown_task_lists_available(tiny_models: dict[str, Path], capsys) -> None:
    """An unknown task name lists the tasks eval_tasks has."""
    _one_line_exit_2(["eval", f"model={tiny_models['base']}", "tasks=[retension]"], capsys, "retension", "retention")


def test_empty_data_file(tiny_models: dict[str, Path], tmp_path: Path, capsys) -> None:
    """A task whose split file is empty is a one-line error naming the file, before any model is loaded."""
    folder = tmp_path / "tasks" / "retention"
    shutil.copytree(eval_tasks.PATH / "retention", folder, ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "data" / "dev.jsonl").write_text("")
    args = ["eval", f"model={tiny_models['base']}", "tasks=[retention]", f"include_path={tmp_path / 'tasks'}"]
    _one_line_exit_2(args, capsys, "dev.jsonl", "empty data file")


@pytest.mark.parametrize("arg,key", [("batch_size=0", "batch_size"), ("split=train", "split"), ("limit=x", "limit")])
def test_bad_values(tiny_models: dict[str, Path], capsys, arg: str, key: str) -> None:
    """Bad values name their key."""
    _one_line_exit_2(["eval", f"model={tiny_models['base']}", "tasks=[retention]", arg], capsys, f"{key}:")


def test_a_model_missing_a_tensor_or_with_nan_weights_is_refused(tiny_models: dict[str, Path], tmp_path: Path,
                                                                 capsys) -> None:
    """transformers would fill a missing tensor with random values and score those; NaN weights give NaN logits."""
    from safetensors.torch import load_file, save_file

    for case in ("missing", "nan"):
        folder = tmp_path / case
        shutil.copytree(tiny_models["base"], folder)
        tensors = load_file(folder / "model.safetensors")
        name = "model.layers.0.mlp.up_proj.weight"
        if case == "missing":
            del tensors[name]
        else:
            tensors[name] = torch.full_like(tensors[name], float("nan"))
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
        _one_line_exit_2(["eval", f"model={folder}", "tasks=[toy_succ]", "limit=4", f"out={tmp_path / case}.json"],
                         capsys, "model:", name if case == "missing" else "NaN")
        assert not (tmp_path / f"{case}.json").exists()
