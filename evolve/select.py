"""Which trial is "best": the top trials re-scored on all dev documents (select.top_k), then the best of those.

The best of N noisy dev scores is optimistic (the winner's curse): the search scores a subset (`tasks.limit`) and
picks the maximum of many draws. Before export, the top K complete trials (per objective for a multi-objective
study) are merged again and scored on every dev document; the pick is the best re-scored single objective (or,
multi-objective, the best mean of the re-scored per-task values). The record lives in the study's user attrs
(`selection`), so export and report of a finished search agree without re-scoring; a study that gained trials since
is selected again. Held-out test documents play no part in the choice.
"""

from __future__ import annotations

from typing import Any

import optuna
from omegaconf import DictConfig
from optuna.trial import FrozenTrial, TrialState

from evolve.errors import UserError
from evolve.schema import multi_objective

ATTR = "selection"


def metric_names(cfg: DictConfig) -> list[str]:
    """Names of the objective(s) as optuna-dashboard shows them: combined_dev, or one dev score key per task."""
    if multi_objective(cfg):
        return [t if str(t).endswith("_dev") else f"{t}_dev" for t in map(str, cfg.tasks.names)]
    return ["combined_dev"]


def candidates(study: optuna.Study, top_k: int) -> list[FrozenTrial]:
    """The top `top_k` complete trials per objective (highest first), each once, in trial-number order."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        raise UserError(f"trial: study {study.study_name!r} has no complete trial yet; run `evolve search` first")
    picked: dict[int, FrozenTrial] = {}
    for i in range(len(study.directions)):
        for t in sorted(done, key=lambda t: (-t.values[i], t.number))[:top_k]:
            picked[t.number] = t
    return [picked[n] for n in sorted(picked)]


def full_dev_evaluator(world: Any) -> Any:
    """An evaluator of every dev document (the search's own one when it already scores them all), built once."""
    ev = getattr(world, "full_dev_evaluator", None)
    if ev is None:
        t = world.cfg.tasks
        if t.limit is None:
            ev = world.evaluator  # its last stage is every dev document, in any order: the same mean
        else:
            from evolve.search import eval_options

            ev = type(world.evaluator)(world.model, world.tokenizer, list(t.names), split="dev", batch_size=t.batch_size,
                                       device=world.cfg.device, limit=None, subset_seed=None, stages=[1.0],
                                       **eval_options(world.cfg))
        world.full_dev_evaluator = ev
    return ev


def rescore(world: Any, study: optuna.Study, trial: FrozenTrial) -> dict[str, float]:
    """A trial's scores on all dev documents (score keys), cached in the study's user attrs."""
    key = f"devall:trial{trial.number}"
    cached = study.user_attrs.get(key)
    if cached is not None:
        return dict(cached)
    from merge_core.live import merge_into

    from evolve.search import trial_recipe

    merge_into(world.model, trial_recipe(world, trial.params, trial.number), world.sources)
    scores = {k: float(v) for k, v in full_dev_evaluator(world).evaluate().scores.items()}
    study.set_user_attr(key, scores)
    return scores


def select(cfg: DictConfig, study: optuna.Study, world: Any) -> dict[str, Any]:
    """Re-score the candidates on all dev documents, store and return the selection record."""
    from evolve.search import objective_values

    multi = len(study.directions) > 1
    rows = []
    for t in candidates(study, int(cfg.select.top_k)):
        scores = rescore(world, study, t)
        rows.append({"trial": t.number, "search": [float(v) for v in t.values],
                     "rescored": [float(v) for v in objective_values(cfg, scores)], "scores": scores})
    best = max(rows, key=lambda r: (sum(r["rescored"]) / len(r["rescored"]) if multi else r["rescored"][0], -r["trial"]))
    record = {"top_k": int(cfg.select.top_k), "n_complete": _n_complete(study), "objectives": metric_names(cfg),
              "candidates": rows, "pick": best["trial"]}
    study.set_user_attr(ATTR, record)
    return record


def current(study: optuna.Study) -> dict[str, Any] | None:
    """The stored selection if it covers every complete trial of the study now, else None."""
    record = study.user_attrs.get(ATTR)
    if not record or record.get("n_complete") != _n_complete(study):
        return None
    return record


def best_trial(cfg: DictConfig, study: optuna.Study, world: Any = None,
               evaluator_factory: Any = None) -> tuple[FrozenTrial, Any]:
    """The selected best trial (re-scoring first when the record is missing or stale) and the world, if built."""
    record = current(study)
    if record is None or record.get("top_k") != int(cfg.select.top_k):
        from evolve.export import ensure_world

        candidates(study, 1)  # no complete trial: say so before any model is opened

        world = ensure_world(cfg, world, evaluator_factory)
        record = select(cfg, study, world)
    return next(t for t in study.get_trials(deepcopy=False) if t.number == record["pick"]), world


def _n_complete(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
