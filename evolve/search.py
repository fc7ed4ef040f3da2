"""The Optuna loop: models opened once, one live model and one Evaluator, one merged candidate per trial.

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
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from evolve import identity
from evolve.errors import RunFailed, UserError
from evolve.schema import multi_objective
from evolve.genome import Genome, make_genome
from evolve.outputs import check_outputs
from evolve.preflight import check_tokenizer, layer_count
from evolve.study import TrialProgress, budget_state, check_storage, make_pruner, make_sampler, open_study

log = logging.getLogger(__name__)


@dataclass
class World:
    """Everything a trial needs, built once per search."""

    cfg: DictConfig
    genome: Genome
    sources: Any
    model: Any
    tokenizer: Any
    evaluator: Any
    hashes: dict[str, str] = field(default_factory=dict)


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


def objective_values(cfg: DictConfig, scores: dict[str, float]) -> list[float]:
    """The objective(s): one weighted mean, or one value per task when multi-objective."""
    per_task = [task_score(scores, t) for t in cfg.tasks.names]
    if multi_objective(cfg):
        return per_task
    return [sum(w * s for w, s in zip(task_weights(cfg), per_task))]


def resolve_models(cfg: DictConfig, progress: bool = True) -> tuple[str, list[str]]:
    """Base and source model ids/folders: run the preparer if set, then check every model is reachable."""
    from merge_core.lora import is_lora_id, split_lora_id
    from merge_core.sources import locate_model

    named: dict[str, Path] = {}
    if cfg.models.prepare:
        from evolve.preparers import get_preparer

        opts = OmegaConf.to_container(cfg.models.prepare_options, resolve=True) or {}
        named = get_preparer(cfg.models.prepare)(Path(cfg.models.cache_dir), seed=cfg.models.seed, progress=progress, **opts)
    keys = [("models.base", cfg.models.base)] + [(f"models.sources[{i}]", s) for i, s in enumerate(cfg.models.sources)]
    resolved = []
    for key, name in keys:
        model_id = str(named[name].resolve()) if name in named else str(name)
        if is_lora_id(str(name)) and split_lora_id(str(name))[0] in named:  # `<prepared name>+<adapter folder>`
            base_name, adapter = split_lora_id(str(name))
            model_id = f"{named[base_name].resolve()}+{adapter}"
        try:
            locate_model(model_id, None, key)
        except UserError:
            raise UserError(
                f"{key}: model {name!r} is not on this machine (no folder, not in the Hugging Face cache; "
                f"nothing is downloaded); point at a local copy, e.g. {key.split('[')[0]}=/path/to/folder"
            ) from None
        resolved.append(model_id)
    return resolved[0], resolved[1:]


def build_world(cfg: DictConfig, evaluator_factory: Callable[..., Any] | None = None) -> World:
    """Prepare/open the models, build the live model and the Evaluator once for the whole search."""
    from merge_core.live import build_live_model
    from merge_core.methods import precomputed
    from merge_core.recipe import parse_recipe
    from merge_core.sources import Sources

    base, sources = resolve_models(cfg, progress=cfg.progress)
    tok_source = cfg.models.get("tokenizer_source")
    n_layers = None
    if Path(base).is_dir():  # before any weights are opened: the genome's size and the tokenizer to load
        n_layers = layer_count(base, "models.base")
        if tok_source in (None, "base"):
            check_tokenizer(base, "models.base")
    extra = None
    if cfg.genome.kind == "ps_dfs":
        from evolve.ps_dfs import ps_model_dir

        extra = [str(ps_model_dir(cfg))]
        if not (ps_model_dir(cfg) / "config.json").is_file():
            raise UserError(f"genome=ps_dfs: no PS result at {ps_model_dir(cfg)}; run `evolve search` with this "
                            "config first (its first stage writes it)")
    genome = make_genome(cfg.method, cfg.genome, n_layers=n_layers or 1, base=base, sources=sources,
                         tokenizer_source=tok_source, extra_stacks=extra)
    first = parse_recipe(genome.opening_recipe({"seed": cfg.seed}), where="search")
    opened = Sources.open(first)
    if n_layers is None:  # a hub id: the layer count is only known once opened
        genome = make_genome(cfg.method, cfg.genome, n_layers=opened.num_layers, base=base, sources=sources,
                             tokenizer_source=tok_source, extra_stacks=extra)
    model = build_live_model(opened, cfg.device, cfg.dtype)
    tokenizer = opened.output_tokenizer()  # a union tokenizer exists only in memory until export
    if evaluator_factory is None:  # the project's lm-eval Evaluator; tests inject a fast stand-in in code
        from evolve.evaluate import Evaluator

        evaluator_factory = Evaluator
    t = cfg.tasks
    evaluator = evaluator_factory(model, tokenizer, list(t.names), split="dev", batch_size=t.batch_size,
                                  device=cfg.device, limit=t.limit, subset_seed=t.subset_seed, stages=list(t.stages),
                                  **eval_options(cfg))
    hashes = {mid: ck.sha256() for mid, ck in opened.models.items()}
    # TIES cuts / DARE codes for the genome's density grid: computed at the first trial, reused by every later one
    precomputed.attach(opened, Path(cfg.out_dir) / "cache" / "trims")
    return World(cfg, genome, opened, model, tokenizer, evaluator, hashes)


def eval_options(cfg: DictConfig) -> dict[str, Any]:
    """Evaluator keywords every evaluator of a study shares: the include path and the dev/test partition rule."""
    from evolve.splits import SplitRule

    t = cfg.tasks
    include = [str(p) for p in (t.get("include_path") or [])]
    return {"include_path": include or None, "split_rule": SplitRule.from_conf(t.get("split"))}


def trial_recipe(world: World, params: dict[str, float], trial_number: int | None, scores: dict | None = None):
    """The Recipe of one point of the genome, with provenance."""
    from merge_core.recipe import parse_recipe

    cfg = world.cfg
    prov: dict[str, Any] = {"seed": cfg.seed, "study": cfg.study_name, "trial": trial_number,
                            "source_hashes": dict(world.hashes)}
    if scores is not None:
        prov["scores"] = scores
    data = world.genome.recipe_dict(params, prov, dtype="float32", out_dtype=cfg.out_dtype)
    return parse_recipe(data, where=f"trial {trial_number}")


class _Heartbeat:
    """Records a RUNNING trial's heartbeat in the storage so a killed worker's trial is failed and retried."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial) -> None:
        storage = study._storage
        self.interval = storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None
        self.stop = threading.Event()
        self.thread = None
        if self.interval:
            def beat() -> None:
                while True:
                    storage.record_heartbeat(trial._trial_id)
                    if self.stop.wait(self.interval):
                        return
            self.thread = threading.Thread(target=beat, daemon=True)

    @staticmethod
    def beat_once(study: optuna.Study, trial: optuna.Trial) -> None:
        """Record one heartbeat now (heartbeat storages only)."""
        storage = study._storage
        if getattr(storage, "get_heartbeat_interval", lambda: None)():
            storage.record_heartbeat(trial._trial_id)

    def __enter__(self) -> "_Heartbeat":
        if self.thread:
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.thread:
            self.thread.join()


def run_trial(world: World, study: optuna.Study, trial: optuna.Trial) -> tuple[TrialState, list[float] | None]:
    """Merge, evaluate stage by stage, report and maybe prune; returns the state and values to tell."""
    from merge_core.live import first_nonfinite, merge_into

    cfg = world.cfg
    params = world.genome.suggest(trial)
    trial.set_user_attr("worker", f"{os.uname().nodename}:{os.getpid()}")
    t0 = time.perf_counter()
    merge_into(world.model, trial_recipe(world, params, trial.number), world.sources)
    bad = first_nonfinite(world.model)
    if bad is not None:  # this candidate only: the trial fails with the tensor's name, the search goes on
        raise FloatingPointError(f"merged tensor {bad} has non-finite values (NaN or inf)")
    trial.set_user_attr("merge_seconds", round(time.perf_counter() - t0, 3))
    tokens, eval_s, values, scores = 0, 0.0, None, {}
    try:
        staged = not multi_objective(cfg)
        results = world.evaluator.evaluate_staged() if staged else [world.evaluator.evaluate()]
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


def optimize(world: World, study: optuna.Study, *, on_trial: Callable[[optuna.Study], None] | None = None) -> None:
    """Run trials until the study holds n_trials counted trials (see the module docstring)."""
    cfg = world.cfg
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
        _Heartbeat.beat_once(study, trial)  # at once: a trial killed before its first beat would never go stale
        ahead = budget_state(study, before=trial.number)
        if ahead.counted + ahead.running >= n_trials:
            trial.set_user_attr("skipped", "budget filled by other workers")
            study.tell(trial, state=TrialState.FAIL)
            continue
        with _Heartbeat(study, trial):
            try:
                trial_state, values = run_trial(world, study, trial)
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


def start_study(cfg: DictConfig, genome: Genome) -> optuna.Study:
    """Open (or create) the study and enqueue the baseline trials when it is new."""
    study = open_study(cfg, make_sampler(cfg), make_pruner(cfg))
    if not study.get_trials(deepcopy=False) and not study.user_attrs.get("baselines_enqueued"):
        study.set_user_attr("baselines_enqueued", True)
        for point in genome.baselines():
            study.enqueue_trial(point, user_attrs={"baseline": True})
    study.set_user_attr("config", OmegaConf.to_container(cfg, resolve=True))
    from evolve.select import metric_names

    if study.metric_names != metric_names(cfg):
        study.set_metric_names(metric_names(cfg))  # what optuna-dashboard labels the objective axis with
    return study


def check_before_loading(cfg: DictConfig, evaluator_factory: Callable[..., Any] | None = None) -> None:
    """Inputs that would otherwise fail only after the models are loaded: storage, model paths, tasks and their data."""
    check_storage(cfg)
    if not cfg.models.prepare:
        resolve_models(cfg, progress=False)  # only looks for the folders (cheap); a preparer runs after the task check
    if evaluator_factory is None:  # the project's Evaluator: its task names and data files are checked now
        from evolve.tasks import resolve, validate

        include = eval_options(cfg)["include_path"]
        validate(resolve(list(cfg.tasks.names), "dev", include_path=include), include)


def run_search(cfg: DictConfig, evaluator_factory: Callable[..., Any] | None = None) -> optuna.Study:
    """A whole search: build the world, run trials to n_trials (resuming), then export and report."""
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
        from evolve.ps_dfs import run_ps_stage

        run_ps_stage(cfg, evaluator_factory)
    world = build_world(cfg, evaluator_factory)
    models = resolve_models(cfg, progress=False)
    # the sources' weights as well, before the study is written to
    ident = identity.verify(cfg, old, "search", models, world.hashes) if old is not None else None
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    study = start_study(cfg, world.genome)
    if ident is None:
        ident = identity.verify(cfg, study, "search", models, world.hashes)
    identity.record(study, ident)
    study.set_user_attr("source_hashes", world.hashes)
    with TrialProgress(study, int(cfg.n_trials), enabled=cfg.progress) as bar:
        optimize(world, study, on_trial=bar.update)
    if cfg.export or cfg.report:
        from evolve.select import select

        select(cfg, study, world)  # the top trials re-scored on all dev documents: export and report show this pick
    if cfg.export:
        from evolve.export import export_trial

        export_trial(cfg, study, "best", world=world)
    if cfg.report:
        from evolve.report import make_report

        print(make_report(cfg, study, world=world))
    return study

