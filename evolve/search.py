"""The ask/tell loop: one merged candidate per trial into the context's live model, scored by its dev Evaluator.

The study, the context (models, live model, evaluator) and what follows the loop (selection, export, report) are
evolve.pipeline's; this module only runs trials.

Budget: `n_trials` counts trials that consumed an evaluation: COMPLETE, PRUNED, and FAIL with a `fail_reason`
user attr (any error of that candidate: NaN logits, out of memory at batch size 1, a task that breaks on it;
`max_failures_in_row` such failures in a row stop the run with one line and exit 1). Trials that failed because their worker died (heartbeat-stale, retried as a new
WAITING trial) or were skipped do not count. Several workers on one storage stop at exactly n_trials: after
`ask`, a worker counts the counted-or-running trials with a smaller number; if they already fill the budget,
its trial is told FAIL as `skipped` (not counted) and it does no work. A worker whose remaining budget is held
by running trials waits for them (heartbeat storages), running the retry of any that goes stale.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable

import optuna
from optuna.trial import TrialState

from evolve.context import Context
from evolve.errors import RunFailed, UserError
from evolve.objective import is_multi, objective_values, task_score
from evolve.study import Heartbeat, budget_state, make_sampler

log = logging.getLogger(__name__)


def run_trial(ctx: Context, study: optuna.Study, trial: optuna.Trial) -> tuple[TrialState, list[float] | None]:
    """Merge, evaluate stage by stage, report and maybe prune; returns the state and values to tell."""
    from merge_core.live import first_nonfinite

    cfg = ctx.cfg
    params = ctx.genome.suggest(trial)
    trial.set_user_attr("worker", f"{os.uname().nodename}:{os.getpid()}")
    t0 = time.perf_counter()
    ctx.merge_point(ctx.recipe(params, trial.number))
    bad = first_nonfinite(ctx.model)
    if bad is not None:  # this candidate only: the trial fails with the tensor's name, the search goes on
        raise FloatingPointError(f"merged tensor {bad} has non-finite values (NaN or inf)")
    trial.set_user_attr("merge_seconds", round(time.perf_counter() - t0, 3))
    tokens, eval_s, values, scores = 0, 0.0, None, {}
    try:
        staged = not is_multi(cfg)  # Optuna cannot prune multi-objective trials: one evaluation of every stage
        results = ctx.evaluator.evaluate_staged() if staged else [ctx.evaluator.evaluate()]
        for stage, res in enumerate(results):
            # EvalResult.tokens/seconds are cumulative over the stages of one evaluate_staged
            tokens, eval_s = int(res.tokens), float(res.seconds)
            scores = {t: task_score(res.scores, t) for t in cfg.tasks.names}
            values = objective_values(cfg, res.scores)
            if not all(math.isfinite(v) for v in values):
                raise FloatingPointError(f"non-finite score {values}")
            trial.set_user_attr("scores", scores)
            trial.set_user_attr("stage", stage)
            if staged:
                trial.report(values[0], stage)
                if trial.should_prune():
                    return TrialState.PRUNED, None
        return TrialState.COMPLETE, values
    finally:
        trial.set_user_attr("tokens", tokens)
        trial.set_user_attr("eval_seconds", round(eval_s, 3))


def optimize(ctx: Context, study: optuna.Study, *, on_trial: Callable[[optuna.Study], None] | None = None) -> None:
    """Run trials until the study holds n_trials counted trials (see the module docstring)."""
    cfg = ctx.cfg
    n_trials = int(cfg.n_trials)
    fails_in_row = 0
    while True:
        state = budget_state(study)
        if state.counted >= n_trials:
            return
        if state.counted + state.running >= n_trials:
            if not state.heartbeat:
                return  # without heartbeats a dead worker's trial is indistinguishable from a slow one
            time.sleep(min(cfg.heartbeat_interval, 5))
            continue
        trial = study.ask()
        # params are drawn lazily at the first suggest: seeding from the trial's unique number keeps one worker
        # reproducible and keeps workers that ask at the same moment from drawing the same point
        study.sampler = make_sampler(cfg, seed_offset=trial.number)
        Heartbeat.beat_once(study, trial)  # at once: a trial killed before its first beat would never go stale
        ahead = budget_state(study, before=trial.number)
        if ahead.counted + ahead.running >= n_trials:
            trial.set_user_attr("skipped", "budget filled by other workers")
            study.tell(trial, state=TrialState.FAIL)
            continue
        with Heartbeat(study, trial):
            try:
                trial_state, values = run_trial(ctx, study, trial)
            except UserError:
                study.tell(trial, state=TrialState.FAIL)
                raise
            except Exception as exc:  # NaN logits, OOM at batch size 1, a task that breaks: this candidate only
                reason = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
                trial.set_user_attr("fail_reason", reason)
                study.tell(trial, state=TrialState.FAIL)
                fails_in_row += 1
                log.warning("trial %d failed: %s", trial.number, reason, exc_info=log.isEnabledFor(logging.DEBUG))
                if fails_in_row >= cfg.max_failures_in_row:
                    raise RunFailed(
                        f"search: {fails_in_row} trials in a row failed (last: {reason}); each trial's fail_reason "
                        f"is stored in the study; narrow method.search bounds, lower tasks.batch_size or raise "
                        f"max_failures_in_row") from None
                continue
            except BaseException:  # Ctrl-C: told FAIL without a fail_reason, so not counted; a resume runs another in its place
                study.tell(trial, state=TrialState.FAIL)
                raise
        study.tell(trial, values=values, state=trial_state)
        fails_in_row = 0
        if on_trial is not None:
            on_trial(study)
