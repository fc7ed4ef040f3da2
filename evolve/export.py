"""A stored trial -> `best/recipe.yaml` (mergekit-valid, with provenance) + `best/model/` (HF folder with a card)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import optuna
import torch
from omegaconf import DictConfig
from optuna.trial import FrozenTrial, TrialState

from evolve import score_cache
from evolve.context import Context, EvaluatorFactory, ensure_context
from evolve.errors import UserError
from evolve.objective import rank_value
from merge_core.device import resolve_dtype
from merge_core.files import exclusive_lock


def pick_trial(study: optuna.Study, which: str | int) -> FrozenTrial:
    """`best` (single objective: highest value; multi: the Pareto member with the best mean) or a trial number."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise UserError(f"trial: study {study.study_name!r} has no complete trial yet; run `evolve search` first")
    if which == "best":
        if len(study.directions) == 1:
            return study.best_trial
        return max(study.best_trials, key=lambda t: rank_value(t.values))
    try:
        number = int(which)
    except (TypeError, ValueError):
        raise UserError(f"trial: {which!r} is not `best` or a trial number; write trial=best or trial=N") from None
    for t in complete:
        if t.number == number:
            return t
    numbers = [t.number for t in (study.best_trials if len(study.directions) > 1 else complete)]
    raise UserError(f"trial: #{number} is not a complete trial of {study.study_name!r}; choose one of {numbers[:20]}")


def _card(cfg: DictConfig, trial: FrozenTrial, scores: dict[str, float], metrics: dict[str, str],
          selection: dict | None, scored: torch.dtype, written: torch.dtype) -> str:
    """The model card's evolve section: which trial, how it was chosen, each score with its split and metric."""
    lines = [f"## Evolved merge: study `{cfg.study_name}`, trial {trial.number}", ""]
    if selection and selection.get("pick") == trial.number:
        lines += [f"Chosen by re-scoring the top {selection['top_k']} trials of the search on all dev documents "
                  "(select.top_k) and keeping the best; the held-out test played no part in the choice.", ""]
    else:
        lines += [f"Exported by request (`trial={trial.number}`), not as the search's pick.", ""]
    if scored != written:
        lines += [f"The scores below are the merge's in {_name(scored)}, as the search ran it; these weights were then "
                  f"written in {_name(written)}, which may score a little differently (`evolve eval model=... "
                  f"dtype={_name(written)}` scores them as written).", ""]
    lines += ["| score | split | metric | value |", "|---|---|---|---|"]
    for key in sorted(scores, key=lambda k: (not k.endswith("_dev"), k)):
        split = "dev (searched)" if key.endswith("_dev") else "test (held out)" if key.endswith("_test") else "-"
        lines.append(f"| {key} | {split} | {metrics.get(key, '-')} | {scores[key]:.4f} |")
    lines += ["", "Held out: an eval_tasks task's `<task>_test` items, or, for any other task (an lm-eval built-in or "
              "a task folder of the user), the test documents of a seeded partition of its evaluation documents "
              "(`report/splits.json`; dev and test never share a document). The search scored dev documents only."]
    return "\n".join(lines) + "\n"


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def export_trial(cfg: DictConfig, study: optuna.Study, which: str | int = "best", out: str | Path | None = None,
                 ctx: Context | None = None, evaluator_factory: EvaluatorFactory | None = None) -> Path:
    """Write a trial's recipe.yaml and model folder to `out` (default <out_dir>/best); returns `out`."""
    from evolve.models import resolve_models
    from evolve.outputs import run_inputs
    from merge_core.overlap import refuse_overlap
    from merge_core.recipe import save_recipe
    from merge_core.writer import check_out_dir, output_dtype, write_model

    trial = pick_trial(study, which)  # a bad trial=N, or no complete trial, fails before anything is written
    out = Path(out) if out is not None else Path(cfg.out_dir) / "best"
    if out.exists() and not out.is_dir():
        raise UserError(f"out: {out} is a file; give a folder path")
    check_out_dir(out / "model")
    refuse_overlap("out", [out / "model", out / "recipe.yaml"], run_inputs(cfg, resolve_models(cfg, progress=False)))
    out.mkdir(parents=True, exist_ok=True)  # a read-only or full disk fails here, before any model is loaded
    if which == "best":
        from evolve.select import best_trial

        trial, ctx = best_trial(cfg, study, ctx, evaluator_factory)  # the top trials re-scored on all dev docs
    ctx = ensure_context(cfg, ctx, evaluator_factory)
    scores = score_cache.in_study(study, score_cache.trial_key(trial.number),
                                  lambda: ctx.dev_test_scores(ctx.recipe(trial.params, trial.number)))
    recipe = ctx.recipe(trial.params, trial.number, scores={k: round(v, 6) for k, v in scores.items()})
    # one export at a time per folder: two at once (workers finishing together, a user's export beside a search)
    # would otherwise pair one trial's recipe.yaml with another's model
    with _export_lock(out):
        (out / "recipe.yaml").unlink(missing_ok=True)  # from here until the end the pair is known unfinished
        scored = resolve_dtype(cfg.dtype, ctx.sources.models[ctx.sources.base_id].dtype)  # the live model's
        written = output_dtype(recipe, ctx.sources, cfg.out_dtype)
        write_model(recipe, ctx.sources, out / "model", dtype=cfg.out_dtype, device="cpu", progress=False,
                    card_extra=_card(cfg, trial, scores, ctx.score_metrics(), study.user_attrs.get("selection"),
                                     scored, written))
        # the recipe last: a recipe.yaml beside a model means that model was finished (both rewritten by a rerun)
        save_recipe(recipe, out / "recipe.yaml")
    return out


def _export_lock(out: Path) -> contextlib.AbstractContextManager[None]:
    """An exclusive lock on `.<out name>.export.lock` beside `out` for the whole write of model and recipe."""
    return exclusive_lock(out.parent / f".{out.name}.export.lock")
