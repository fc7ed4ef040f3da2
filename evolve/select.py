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

from evolve import score_cache
from evolve.context import Context, EvaluatorFactory, ensure_context
from evolve.errors import UserError
from evolve.objective import metric_names, objective_values, rank_value

ATTR = "selection"


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


def rescore(ctx: Context, study: optuna.Study, trial: FrozenTrial) -> dict[str, float]:
    """A trial's scores on all dev documents (score keys), cached in the study's user attrs."""
    def compute() -> dict[str, float]:
        from merge_core.live import merge_into

        merge_into(ctx.model, ctx.recipe(trial.params, trial.number), ctx.sources)
        return {k: float(v) for k, v in ctx.full_dev_evaluator().evaluate().scores.items()}

    return score_cache.in_study(study, score_cache.rescore_key(trial.number), compute)


def select(cfg: DictConfig, study: optuna.Study, ctx: Context) -> dict[str, Any]:
    """Re-score the candidates on all dev documents, store and return the selection record."""
    rows = []
    for t in candidates(study, int(cfg.select.top_k)):
        scores = rescore(ctx, study, t)
        rows.append({"trial": t.number, "search": [float(v) for v in t.values],
                     "rescored": [float(v) for v in objective_values(cfg, scores)], "scores": scores})
    best = max(rows, key=lambda r: (rank_value(r["rescored"]), -r["trial"]))
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


def best_trial(cfg: DictConfig, study: optuna.Study, ctx: Context | None = None,
               evaluator_factory: EvaluatorFactory | None = None) -> tuple[FrozenTrial, Context | None]:
    """The selected best trial (re-scoring first when the record is missing or stale) and the context, if built."""
    record = current(study)
    if record is None or record.get("top_k") != int(cfg.select.top_k):
        candidates(study, 1)  # no complete trial: say so before any model is opened

        ctx = ensure_context(cfg, ctx, evaluator_factory)
        record = select(cfg, study, ctx)
    return next(t for t in study.get_trials(deepcopy=False) if t.number == record["pick"]), ctx


def _n_complete(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
