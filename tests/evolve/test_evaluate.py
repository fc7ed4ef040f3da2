"""The Evaluator: equal to lm-eval's CLI, live weights, deterministic subsets, staged supersets, guards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import eval_tasks
from evolve.errors import UserError
from evolve.evaluate import Evaluator, NonFiniteLogits

REPO = Path(__file__).resolve().parents[2]
LIMIT = 12


@pytest.fixture(scope="module")
def saved(tiny_models: dict[str, Path]) -> Path:
    """A saved tiny random Llama with a char tokenizer (from the shared fixtures)."""
    return tiny_models["base"]


def _load(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def live(saved: Path):
    """One live model and a dev evaluator on retention (multiple_choice), shared by the tests that restore it."""
    model, tok = _load(saved)
    return model, Evaluator(model, tok, ["retention"], limit=40, batch_size=8, device="cpu")


def _lm_eval_cli(model_dir: Path, tasks: list[str], out: Path) -> dict:
    """Run `python -m lm_eval` from another working directory; returns {task: {"score": ..., "samples": [...]}}."""
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={model_dir},dtype=float32",
           "--device", "cpu", "--batch_size", "8", "--include_path", str(eval_tasks.PATH), "--tasks", ",".join(tasks),
           "--limit", str(LIMIT), "--output_path", str(out), "--log_samples"]
    proc = subprocess.run(cmd, cwd=out.parent, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]
    found = {}
    for task in tasks:
        samples = [json.loads(line) for f in out.rglob(f"samples_{task}_*.jsonl") for line in f.read_text().splitlines()]
        found[task] = {"results": results[task], "samples": sorted(samples, key=lambda s: s["doc_id"])}
    return found


@pytest.mark.slow  # lm-eval's CLI indexes its ~14k built-in task YAMLs first (about 20 s of CPU)
def test_equals_lm_eval_cli(saved: Path, tmp_path: Path) -> None:
    """Scores, per-item values and generations match the lm-eval CLI for a multiple_choice and a generate_until task."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    cli = _lm_eval_cli(saved, ["retention_test", "arith_test"], cwd / "out")
    model, tok = _load(saved)
    ev = Evaluator(model, tok, ["retention", "arith"], split="test", allow_test=True, limit=LIMIT, batch_size=8,
                   device="cpu")
    assert ev.metrics == {"retention_test": "acc", "arith_test": "exact_match"}
    result = ev.evaluate()
    assert result.n_items == {"retention_test": LIMIT, "arith_test": LIMIT}
    for task, metric in ev.metrics.items():
        assert result.scores[task] == pytest.approx(cli[task]["results"][f"{metric},none"], abs=1e-9)
        assert result.per_item[task] == [float(s[metric]) for s in cli[task]["samples"]]
    # loglikelihoods and generated text item by item, not only the (coarse) aggregate
    runs = {run.name: run for run in ev.runs}
    for s in cli["retention_test"]["samples"]:
        ours = [inst.resps[0][0] for inst in runs["retention_test"].instances[s["doc_id"]]]
        assert ours == pytest.approx([float(r[0][0]) for r in s["resps"]], abs=1e-4)
    gens = [runs["arith_test"].instances[s["doc_id"]][0].resps[0] for s in cli["arith_test"]["samples"]]
    assert gens == [s["resps"][0][0] for s in cli["arith_test"]["samples"]]
    assert any(g.strip() for g in gens)
    assert result.tokens > 0 and result.seconds > 0


def test_weights_changed_in_place_change_the_score(live) -> None:
    """The evaluator wraps the live model: an in-place change shows in the next result; restoring restores it."""
    model, ev = live
    before = ev.evaluate()
    weight = model.model.layers[0].mlp.down_proj.weight
    saved = weight.detach().clone()
    with torch.no_grad():
        weight.mul_(8.0)
    try:
        changed = ev.evaluate()
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    assert changed.per_item["retention_dev"] != before.per_item["retention_dev"]
    again = ev.evaluate()
    assert again.per_item == before.per_item and again.scores == before.scores


def test_nonfinite_logits_raise_and_recover(live) -> None:
    """NaN weights raise NonFiniteLogits; the next healthy candidate scores normally."""
    model, ev = live
    before = ev.evaluate()
    norm = model.model.norm.weight
    saved = norm.detach().clone()
    with torch.no_grad():
        norm.fill_(float("nan"))
    try:
        with pytest.raises(NonFiniteLogits):
            ev.evaluate()
    finally:
        with torch.no_grad():
            norm.copy_(saved)
    assert ev.evaluate().scores == before.scores


def test_subsets_are_seeded_and_stages_are_supersets(saved: Path) -> None:
    """A seeded subset is the same for equal seeds; each stage adds items and only computes the new ones."""
    model, tok = _load(saved)
    kwargs = dict(limit=20, stages=(0.25, 0.5, 1.0), batch_size=8, device="cpu")
    ev = Evaluator(model, tok, ["retention"], subset_seed=7, **kwargs)
    order = ev.order["retention_dev"]
    assert order == Evaluator(model, tok, ["retention"], subset_seed=7, **kwargs).order["retention_dev"]
    assert order != Evaluator(model, tok, ["retention"], subset_seed=8, **kwargs).order["retention_dev"]
    assert order != list(range(20)) and len(set(order)) == 20
    assert Evaluator(model, tok, ["retention"], **kwargs).order["retention_dev"] == list(range(20))

    staged = list(ev.evaluate_staged())
    assert [r.n_items["retention_dev"] for r in staged] == [5, 10, 20]
    items = [r.per_item["retention_dev"] for r in staged]
    assert items[1][:5] == items[0] and items[2][:10] == items[1]
    for k, r in enumerate(staged):
        single = ev.evaluate(stage=k)
        assert single.per_item == r.per_item and single.scores == r.scores
        # cumulative tokens equal one pass over the same items: earlier stages were not recomputed
        assert single.tokens == r.tokens
    assert staged[-1].scores["retention_dev"] == pytest.approx(sum(items[2]) / 20)


def test_test_split_and_bad_arguments_are_refused(saved: Path) -> None:
    """Searching on test needs allow_test; bad stages, limits and unknown names are UserErrors before any work."""
    model, tok = _load(saved)
    with pytest.raises(UserError, match="held out"):
        Evaluator(model, tok, ["retention"], split="test")
    with pytest.raises(UserError, match="held out"):
        Evaluator(model, tok, ["retention_test"])
    with pytest.raises(UserError, match="stages"):
        Evaluator(model, tok, ["retention"], stages=(0.5, 0.25))
    with pytest.raises(UserError, match="limit"):
        Evaluator(model, tok, ["retention"], limit=0)
    with pytest.raises(UserError, match="unknown task 'no_such_task_xyz'.*retention"):
        Evaluator(model, tok, ["no_such_task_xyz"])
