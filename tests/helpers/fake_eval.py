"""A fast stand-in for evolve.evaluate.Evaluator (search and reliability tests): scores are smooth functions of the live weights.

Task `t` scores how close layer 0's q_proj is to source model `t`'s (targets are read from the model folders
named in FAKE_EVAL_TARGETS, JSON {task: folder}); FAKE_EVAL_SLEEP adds seconds per evaluation.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from merge_core.checkpoint import Checkpoint
from merge_core.synthetic import make_checkpoint

PROBE = "model.layers.0.self_attn.q_proj.weight"


@dataclass
class Result:
    """Mirrors evolve.evaluate.EvalResult."""

    scores: dict
    per_item: dict
    n_items: dict
    tokens: int
    seconds: float


class FakeEvaluator:
    """Same constructor and methods as the project's Evaluator."""

    def __init__(self, model, tokenizer, tasks, split="dev", batch_size=1, device="cpu", limit=None,
                 subset_seed=None, stages=(1.0,), **kwargs):
        self.model, self.tasks, self.split, self.stages = model, list(tasks), split, list(stages)
        targets = json.loads(os.environ["FAKE_EVAL_TARGETS"])
        self.targets = {t: Checkpoint(Path(targets[t])).get(PROBE).float() for t in self.tasks}
        self.sleep = float(os.environ.get("FAKE_EVAL_SLEEP", "0"))

    def evaluate(self) -> Result:
        """Scores on all items."""
        time.sleep(self.sleep)
        w = dict(self.model.named_parameters())[PROBE].float()
        if not torch.isfinite(w).all():
            raise FloatingPointError("non-finite weights")
        scores = {f"{t}_{self.split}": float(torch.exp(-(w - self.targets[t]).pow(2).mean() * 50)) for t in self.tasks}
        return Result(scores, {}, {t: 10 for t in scores}, 100, self.sleep)

    def evaluate_staged(self):
        """One result per stage."""
        for s in self.stages:
            r = self.evaluate()
            r.tokens = int(100 * s)  # cumulative, like the real Evaluator
            yield r


def make_models(root: Path) -> dict[str, Path]:
    """A tiny synthetic base and two sources (cached under root)."""
    paths = {n: root / n for n in ("base", "a", "b")}
    if not (root / "done").exists():
        make_checkpoint(paths["base"], layers=3, hidden=32, intermediate=64, heads=4, kv_heads=2, vocab=64, seed=0)
        make_checkpoint(paths["a"], like=paths["base"], noise=0.05, seed=1)
        make_checkpoint(paths["b"], like=paths["base"], noise=0.05, seed=2)
        (root / "done").write_text("ok")
    return paths


def write_config(tmp: Path, models: dict[str, Path], **extra: object) -> Path:
    """A search config YAML (outside conf/, using conf/'s method/optimizer/pruner groups) for the fake world; run it
    with FakeEvaluator injected (tests.helpers.fake_cli, or run_search(cfg, FakeEvaluator))."""
    lines = [
        "# fake-world search for tests",
        "defaults: [search_schema, {method: ties}, {optimizer: cmaes}, {pruner: median}, _self_]",
        "study_name: fake",
        f"out_dir: {tmp / 'run'}",
        "n_trials: 6",
        "progress: false",
        "heartbeat_interval: 1",
        "grace_period: 3",
        f"models: {{base: {models['base']}, sources: [{models['a']}, {models['b']}], cache_dir: {tmp / 'cache'}}}",
        "tasks: {names: [a, b], stages: [0.5, 1.0]}",
    ]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    path = tmp / "fake.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def env_for(models: dict[str, Path], **extra: str) -> dict[str, str]:
    """Environment for a subprocess search on the fake world."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
               FAKE_EVAL_TARGETS=json.dumps({"a": str(models["a"]), "b": str(models["b"])}))
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2]) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def finished_run(base: Path, monkeypatch) -> tuple[object, object]:
    """One complete in-process search on the fake world (shared by the search/export/report tests)."""
    from evolve.config import load_config
    from evolve.pipeline import run_search
    from evolve.study import make_pruner, make_sampler, open_study

    models = make_models(base / "models")
    for k, v in env_for(models).items():
        monkeypatch.setenv(k, v)
    root = base / "finished"
    root.mkdir(exist_ok=True)
    cfg, _ = load_config([f"conf={write_config(root, models)}"])
    if not (root / "run" / "report" / "results.json").exists():
        run_search(cfg, FakeEvaluator)
    return cfg, open_study(cfg, make_sampler(cfg), make_pruner(cfg), create=False)
