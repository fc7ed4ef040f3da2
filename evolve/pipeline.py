"""One whole search: checks before loading, the context, the study, the trial loop, then select -> export -> report.

The only module that knows all the stages; each of them (evolve.search, select, export, report) takes the context
and the study and imports none of the others' callers.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
from omegaconf import DictConfig, OmegaConf

from evolve import identity
from evolve.context import EvaluatorFactory, build_context, eval_options
from evolve.genome import Genome
from evolve.models import resolve_models
from evolve.objective import metric_names
from evolve.outputs import check_outputs
from evolve.search import optimize
from evolve.study import (
    TrialProgress,
    budget_state,
    check_storage,
    make_pruner,
    make_sampler,
    open_study,
    storage_lock,
    storage_url,
)


def start_study(cfg: DictConfig, genome: Genome) -> optuna.Study:
    """Open (or create) the study and enqueue the baseline trials when it is new (one worker at a time: two
    starting together would both see a new study and enqueue the baselines twice)."""
    with storage_lock(storage_url(cfg), "setup"):
        study = open_study(cfg, make_sampler(cfg), make_pruner(cfg))
        if not study.get_trials(deepcopy=False) and not study.user_attrs.get("baselines_enqueued"):
            study.set_user_attr("baselines_enqueued", True)
            for point in genome.baselines():
                study.enqueue_trial(point, user_attrs={"baseline": True})
    study.set_user_attr("config", OmegaConf.to_container(cfg, resolve=True))
    if study.metric_names != metric_names(cfg):
        study.set_metric_names(metric_names(cfg))  # what optuna-dashboard labels the objective axis with
    return study


def check_before_loading(cfg: DictConfig, evaluator_factory: EvaluatorFactory | None = None) -> None:
    """Inputs that would otherwise fail only after the models are loaded: storage, model paths, tasks and their data."""
    check_storage(cfg)
    if not cfg.models.prepare:
        resolve_models(cfg, progress=False)  # only looks for the folders (cheap); a preparer runs after the task check
    if evaluator_factory is None:  # the project's Evaluator: its task names and data files are checked now
        from evolve.tasks import resolve, validate

        include = eval_options(cfg)["include_path"]
        validate(resolve(list(cfg.tasks.names), "dev", include_path=include), include)


def run_search(cfg: DictConfig, evaluator_factory: EvaluatorFactory | None = None) -> optuna.Study:
    """A whole search: build the context, run trials to n_trials (resuming), then select, export and report."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # our own ask/tell loop runs the heartbeat thread Study.optimize would run
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
    if cfg.threads:
        import torch

        # many threads on a tiny model (or a shared machine) spend more time in sync than in math
        torch.set_num_threads(int(cfg.threads))
    check_before_loading(cfg, evaluator_factory)
    check_outputs(cfg, resolve_models(cfg, progress=cfg.progress))
    old = identity.existing_study(cfg)
    if old is not None:  # a resume: the same experiment, or refused before any model is opened
        identity.verify(cfg, old, "search")
    if cfg.genome.kind == "ps_dfs":  # stage 1: the PS search whose best joins the DFS stacks (evolve.ps_dfs)
        run_ps_stage(cfg, evaluator_factory)
    ctx = build_context(cfg, evaluator_factory)
    # the sources' weights as well, before the study is written to
    ident = identity.verify(cfg, old, "search", ctx.models, ctx.hashes) if old is not None else None
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    study = start_study(cfg, ctx.genome)
    if ident is None:
        ident = identity.verify(cfg, study, "search", ctx.models, ctx.hashes)
    identity.record(study, ident)
    study.set_user_attr("source_hashes", ctx.hashes)
    with TrialProgress(study, int(cfg.n_trials), enabled=cfg.progress) as bar:
        optimize(ctx, study, on_trial=bar.update)
    if cfg.export or cfg.report:
        from evolve.select import select

        select(cfg, study, ctx)  # the top trials re-scored on all dev documents: export and report show this pick
    if cfg.export:
        from evolve.export import export_trial

        export_trial(cfg, study, "best", ctx=ctx)
    if cfg.report:
        from evolve.report import make_report

        print(make_report(cfg, study, ctx=ctx))
    return study


def run_ps_stage(cfg: DictConfig, evaluator_factory: EvaluatorFactory | None = None) -> None:
    """genome=ps_dfs: run (or resume) stage 1; a finished stage whose export names its best trial is left as it is."""
    import yaml

    from evolve.ps_dfs import ps_stage_config

    ps_cfg = ps_stage_config(cfg)
    recipe = Path(ps_cfg.out_dir) / "best" / "recipe.yaml"
    if recipe.is_file() and _finished(ps_cfg, yaml.safe_load(recipe.read_text()).get("evolve_merge", {}).get("trial")):
        return
    run_search(ps_cfg, evaluator_factory)


def _finished(ps_cfg: DictConfig, exported_trial: object) -> bool:
    from evolve.export import pick_trial

    try:
        study = open_study(ps_cfg, make_sampler(ps_cfg), make_pruner(ps_cfg), create=False)
    except Exception:  # no stage-1 study yet (or an unreadable one): run_search says what is wrong
        return False
    if budget_state(study).counted < int(ps_cfg.n_trials):
        return False
    try:
        return pick_trial(study, "best").number == exported_trial
    except Exception:
        return False
