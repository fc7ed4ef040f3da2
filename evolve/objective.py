"""What a search maximizes: per-task weights, the combined score, and the single- or multi-objective values.

The one owner of multi-objective logic: `optimizer.multi_objective` turns the one weighted mean of the tasks' dev
scores into one objective per task (nsga2 and friends); everything that counts objectives, names them or ranks
trials by them asks this module.
"""

from __future__ import annotations

from collections.abc import Sequence

from omegaconf import DictConfig

from evolve.schema import multi_objective


def is_multi(cfg: DictConfig) -> bool:
    """Whether the study has one objective per task (optimizer.multi_objective) instead of the weighted mean."""
    return multi_objective(cfg)  # only optimizers whose schema has the key can be multi-objective


def n_objectives(cfg: DictConfig) -> int:
    """How many values each trial reports to the study."""
    return len(cfg.tasks.names) if is_multi(cfg) else 1


def task_weights(cfg: DictConfig) -> list[float]:
    """Per-task weights of the single objective, normalized to sum to 1 (equal when null)."""
    names = list(cfg.tasks.names)
    raw = list(cfg.tasks.weights) if cfg.tasks.weights is not None else [1.0] * len(names)
    total = float(sum(raw))
    return [w / total for w in raw]


def task_score(scores: dict[str, float], task: str, split: str = "dev") -> float:
    """A task's primary metric from an evaluator's scores, keyed by base name or lm-eval name."""
    for key in (task, f"{task}_{split}"):
        if key in scores:
            return float(scores[key])
    raise KeyError(f"no score for task {task!r} in {sorted(scores)}")


def combined(scores: dict[str, float], cfg: DictConfig, split: str = "dev") -> float:
    """Weighted mean of the tasks' scores on one split (the single objective's weights)."""
    vals = [task_score(scores, t, split) for t in cfg.tasks.names]
    return sum(w * v for w, v in zip(task_weights(cfg), vals))


def objective_values(cfg: DictConfig, scores: dict[str, float]) -> list[float]:
    """The objective(s) of dev scores: one weighted mean, or one value per task when multi-objective."""
    if is_multi(cfg):
        return [task_score(scores, t) for t in cfg.tasks.names]
    return [combined(scores, cfg, "dev")]


def metric_names(cfg: DictConfig) -> list[str]:
    """Names of the objective(s) as optuna-dashboard shows them: combined_dev, or one dev score key per task."""
    if is_multi(cfg):
        return [t if str(t).endswith("_dev") else f"{t}_dev" for t in map(str, cfg.tasks.names)]
    return ["combined_dev"]


def rank_value(values: Sequence[float]) -> float:
    """One number to rank trials by: the single objective itself, or the mean of a multi-objective trial's values."""
    return sum(values) / len(values)
