"""A stored trial -> `best/recipe.yaml` (mergekit-valid, with provenance) + `best/model/` (HF folder with a card)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig
from optuna.trial import FrozenTrial, TrialState

from evolve.errors import UserError
from merge_core.files import exclusive_lock


def pick_trial(study: optuna.Study, which: str | int) -> FrozenTrial:
    """`best` (single objective: highest value; multi: the Pareto member with the best mean) or a trial number."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise UserError(f"trial: study {study.study_name!r} has no complete trial yet; run `evolve search` first")
    if which == "best":
        if len(study.directions) == 1:
            return study.best_trial
        return max(study.best_trials, key=lambda t: sum(t.values) / len(t.values))
    try:
        number = int(which)
    except (TypeError, ValueError):
        raise UserError(f"trial: {which!r} is not `best` or a trial number; write trial=best or trial=N") from None
    for t in complete:
        if t.number == number:
            return t
    numbers = [t.number for t in (study.best_trials if len(study.directions) > 1 else complete)]
    raise UserError(f"trial: #{number} is not a complete trial of {study.study_name!r}; choose one of {numbers[:20]}")


def ensure_world(cfg: DictConfig, world: Any = None, evaluator_factory: Any = None) -> Any:
    """The search's world (models, live model, dev evaluator), built if the caller has none."""
    if world is not None:
        return world
    from evolve.search import build_world

    return build_world(cfg, evaluator_factory)


def test_evaluator(world: Any) -> Any:
    """A held-out (test split) Evaluator on the live model, built once per world."""
    ev = getattr(world, "test_evaluator", None)
    if ev is None:
        from evolve.search import eval_options

        factory = type(world.evaluator)
        t = world.cfg.tasks
        ev = factory(world.model, world.tokenizer, list(t.names), split="test", batch_size=t.batch_size,
                     device=world.cfg.device, limit=t.test_limit, subset_seed=None, stages=[1.0], allow_test=True,
                     **eval_options(world.cfg))
        world.test_evaluator = ev
    return ev


def dev_test_scores(world: Any, recipe: Any) -> dict[str, float]:
    """Merge `recipe` into the live model and score it on every dev document and the held-out test (score keys)."""
    from merge_core.live import merge_into

    from evolve.select import full_dev_evaluator

    merge_into(world.model, recipe, world.sources)
    scores = dict(full_dev_evaluator(world).evaluate().scores)
    scores.update(test_evaluator(world).evaluate().scores)
    return {k: float(v) for k, v in scores.items()}


def score_metrics(world: Any) -> dict[str, str]:
    """Score key -> the primary metric it holds, for the dev and test evaluators of a world."""
    from evolve.select import full_dev_evaluator

    metrics = dict(getattr(full_dev_evaluator(world), "metrics", {}) or {})
    metrics.update(getattr(test_evaluator(world), "metrics", {}) or {})
    return metrics


def _card(cfg: DictConfig, trial: FrozenTrial, scores: dict[str, float], metrics: dict[str, str],
          selection: dict | None) -> str:
    """The model card's evolve section: which trial, how it was chosen, each score with its split and metric."""
    lines = [f"## Evolved merge: study `{cfg.study_name}`, trial {trial.number}", ""]
    if selection:
        lines += [f"Chosen by re-scoring the top {selection['top_k']} trials of the search on all dev documents "
                  "(select.top_k) and keeping the best; the held-out test played no part in the choice.", ""]
    lines += ["| score | split | metric | value |", "|---|---|---|---|"]
    for key in sorted(scores, key=lambda k: (not k.endswith("_dev"), k)):
        split = "dev (searched)" if key.endswith("_dev") else "test (held out)" if key.endswith("_test") else "-"
        lines.append(f"| {key} | {split} | {metrics.get(key, '-')} | {scores[key]:.4f} |")
    lines += ["", "Held out: an eval_tasks task's `<task>_test` items, or, for any other task (an lm-eval built-in or "
              "a task folder of the user), the test documents of a seeded partition of its evaluation documents "
              "(`report/splits.json`; dev and test never share a document). The search scored dev documents only."]
    return "\n".join(lines) + "\n"


def export_trial(cfg: DictConfig, study: optuna.Study, which: str | int = "best", out: str | Path | None = None,
                 world: Any = None, evaluator_factory: Any = None) -> Path:
    """Write a trial's recipe.yaml and model folder to `out` (default <out_dir>/best); returns `out`."""
    from merge_core.overlap import refuse_overlap
    from merge_core.recipe import save_recipe
    from merge_core.writer import check_out_dir, write_model

    from evolve.outputs import run_inputs
    from evolve.search import resolve_models, trial_recipe

    trial = pick_trial(study, which)  # a bad trial=N, or no complete trial, fails before anything is written
    out = Path(out) if out is not None else Path(cfg.out_dir) / "best"
    if out.exists() and not out.is_dir():
        raise UserError(f"out: {out} is a file; give a folder path")
    check_out_dir(out / "model")
    refuse_overlap("out", [out / "model", out / "recipe.yaml"], run_inputs(cfg, resolve_models(cfg, progress=False)))
    out.mkdir(parents=True, exist_ok=True)  # a read-only or full disk fails here, before any model is loaded
    if which == "best":
        from evolve.select import best_trial

        trial, world = best_trial(cfg, study, world, evaluator_factory)  # the top trials re-scored on all dev docs
    world = ensure_world(cfg, world, evaluator_factory)
    cache_key = f"scores:trial{trial.number}"
    scores = study.user_attrs.get(cache_key)
    if scores is None:
        scores = dev_test_scores(world, trial_recipe(world, trial.params, trial.number))
        study.set_user_attr(cache_key, scores)
    recipe = trial_recipe(world, trial.params, trial.number, scores={k: round(v, 6) for k, v in scores.items()})
    # one export at a time per folder: two at once (workers finishing together, a user's export beside a search)
    # would otherwise pair one trial's recipe.yaml with another's model
    with _export_lock(out):
        (out / "recipe.yaml").unlink(missing_ok=True)  # from here until the end the pair is known unfinished
        write_model(recipe, world.sources, out / "model", dtype=cfg.out_dtype, device="cpu", progress=False,
                    card_extra=_card(cfg, trial, scores, score_metrics(world), study.user_attrs.get("selection")))
        # the recipe last: a recipe.yaml beside a model means that model was finished (both rewritten by a rerun)
        save_recipe(recipe, out / "recipe.yaml")
    return out


def _export_lock(out: Path) -> contextlib.AbstractContextManager[None]:
    """An exclusive lock on `.<out name>.export.lock` beside `out` for the whole write of model and recipe."""
    return exclusive_lock(out.parent / f".{out.name}.export.lock")
