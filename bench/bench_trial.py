"""Per-trial time of the search loop (merging / model forward / everything else) against a naive write-reload loop.

    python bench/bench_trial.py [--setting tiny|smollm2] [--trials 13] [--naive-trials 3] [--threads 1] [--limit N]

Fast loop: `evolve.search.optimize` itself, timed from outside: `merge_core.live.merge_into`, the live model's
forward (pre/post forward hooks), the Evaluator's request handling (`Evaluator._run` minus forward), `Context.recipe`
and every Optuna call the loop makes (ask, tell, suggest, report, should_prune, set_user_attr, budget, sampler,
heartbeat) are wrapped with timers; "rest" is the loop time none of them covers.
Naive loop: the first complete trials' parameters replayed the way a script without a live model would run them:
ask -> recipe -> `write_model` to disk -> `from_pretrained` -> new HFLM + TaskManager + `simple_evaluate` -> tell.
Its dev scores must equal the fast loop's scores of the same trials (checked and printed).

Settings: `tiny` is conf=tiny (toy models from the toy cache). `smollm2` is conf=demo with the demo specialists when
they are in the demo cache (never trained here), else SmolLM2-135M-Instruct (the demo cache's converted base) plus
two noisy copies of it (merge_core.synthetic.make_checkpoint(like=base, noise=...)), on the demo tasks.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, load_line, print_table  # noqa: E402  (puts the repository on sys.path)

os.environ.setdefault("TQDM_DISABLE", "1")  # lm-eval's per-call progress bars would bury the tables
NOISE = 0.002  # std of the offsets of the synthetic "specialists" (fine-tune-like next to SmolLM2's weights)
OPTUNA_CALLS = ("ask", "tell", "suggest", "report", "should_prune", "set_user_attr", "budget", "sampler", "heartbeat")


class Timers:
    """Seconds accumulated per key since the last `take`."""

    def __init__(self) -> None:
        self.acc: dict[str, float] = defaultdict(float)

    def add(self, key: str, seconds: float) -> None:
        """Add `seconds` to `key`."""
        self.acc[key] += seconds

    @contextlib.contextmanager
    def time(self, key: str):
        """Time a block into `key`."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(key, time.perf_counter() - t0)

    def take(self) -> dict[str, float]:
        """The accumulated seconds, then reset."""
        out, self.acc = dict(self.acc), defaultdict(float)
        return out


@contextlib.contextmanager
def wrapped(obj: object, name: str, timers: Timers, key: str):
    """Replace obj.name by a timing wrapper for the duration of the block (instance or class attribute)."""
    raw = vars(obj).get(name)  # as stored (a staticmethod stays one when put back)
    orig = getattr(obj, name)

    @functools.wraps(orig)
    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return orig(*args, **kwargs)
        finally:
            timers.add(key, time.perf_counter() - t0)

    setattr(obj, name, timed)
    try:
        yield
    finally:
        if raw is not None:
            setattr(obj, name, raw)
        else:
            delattr(obj, name)  # back to the inherited (class) attribute


@contextlib.contextmanager
def forward_timer(model: torch.nn.Module, timers: Timers):
    """Time every top-level forward of `model` (generate's per-token calls included) into 'forward'."""
    start: list[float] = []
    sync = torch.cuda.synchronize if next(model.parameters()).is_cuda else (lambda: None)

    def pre(module, args):
        sync()
        start.append(time.perf_counter())

    def post(module, args, output):
        sync()
        timers.add("forward", time.perf_counter() - start.pop())

    handles = [model.register_forward_pre_hook(pre), model.register_forward_hook(post)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def load_cfg(setting: str, out_dir: Path, n_trials: int, threads: int, limit: int | None, storage: str,
             extra: list[str]):
    """The composed config of a setting (and a line saying which models it uses)."""
    from evolve.config import load_config

    common = [f"out_dir={out_dir}", f"n_trials={n_trials}", f"threads={threads}", "device=cpu", "progress=false",
              "export=false", "report=false"]
    if storage == "journal":
        common.append(f"storage={out_dir / 'study.log'}")
    # lm-eval's `limit` (all the naive loop can pass) takes the first N docs: both loops score those same items
    common.append("tasks.subset_seed=null")
    common += extra
    if limit:
        common.append(f"tasks.limit={limit}")
    if setting == "tiny":
        return load_config(["conf=tiny", *common])[0], "conf=tiny (toy models from the toy cache)"
    cfg = load_config(["conf=demo", *common])[0]
    cache = ROOT / cfg.models.cache_dir
    specialists = [cache / s for s in cfg.models.sources]
    if all((p / "config.json").is_file() for p in specialists):
        models = [str(cache / cfg.models.base), *map(str, specialists)]
        what = "conf=demo with the demo specialists from the demo cache"
    else:
        models = [str(p) for p in synthetic_models(cache)]
        what = f"SmolLM2-135M-Instruct + two noisy copies (noise std {NOISE}); the demo specialists are not prepared"
    over = ["models.prepare=null", f"models.base={models[0]}", f"models.sources=[{','.join(models[1:])}]"]
    return load_config(["conf=demo", *common, *over])[0], what + "; demo tasks"


@contextlib.contextmanager
def sqlite_wal():
    """Open sqlite storages in WAL mode with synchronous=NORMAL (a proposed fix, applied from outside)."""
    from sqlalchemy import event

    import evolve.study as study_mod

    orig = study_mod.make_storage

    def make_storage(cfg):
        storage = orig(cfg)
        engine = getattr(storage, "engine", None)
        if engine is not None and engine.url.get_backend_name() == "sqlite":
            @event.listens_for(engine, "connect")
            def pragmas(conn, record) -> None:
                cur = conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.close()

            engine.dispose()  # connections opened before the listener existed
        return storage

    study_mod.make_storage = make_storage
    try:
        yield
    finally:
        study_mod.make_storage = orig


def synthetic_models(demo_cache: Path) -> list[Path]:
    """The converted SmolLM2 base (reused from the demo cache) and two noisy copies, written once."""
    from merge_core.synthetic import make_checkpoint

    base = demo_cache / "base"
    if not (base / "config.json").is_file():
        from evolve.smollm2 import convert_smollm2

        base = convert_smollm2(ROOT / ".cache" / "bench" / "trial", progress=True)
    out = []
    for seed in (1, 2):
        path = ROOT / ".cache" / "bench" / "trial" / f"smollm2_noisy{seed}"
        if not (path / "config.json").is_file():  # config.json is written last: it marks a complete folder
            shutil.rmtree(path, ignore_errors=True)
            print(f"writing {path} ...", flush=True)
            make_checkpoint(path, like=base, noise=NOISE, seed=seed, tokenizer=False)
        out.append(path)
    return [base, *out]


def fast_loop(cfg) -> tuple[list[dict], object, object]:
    """Run the real search loop with timers; one row of seconds per trial, plus the world and the study."""
    import optuna

    import evolve.search as search
    import merge_core.live as live
    from evolve.context import build_context
    from evolve.pipeline import start_study

    world = build_context(cfg)
    study = start_study(cfg, world.genome)
    timers, rows = Timers(), []
    with contextlib.ExitStack() as stack:
        for obj, name, key in [
            (live, "merge_into", "merge"), (world, "recipe", "recipe"), (world.evaluator, "_run", "eval"),
            (study, "ask", "ask"), (study, "tell", "tell"), (world.genome, "suggest", "suggest"),
            (optuna.trial.Trial, "report", "report"), (optuna.trial.Trial, "should_prune", "should_prune"),
            (optuna.trial.Trial, "set_user_attr", "set_user_attr"), (search, "budget_state", "budget"),
            (search, "make_sampler", "sampler"), (search.Heartbeat, "beat_once", "heartbeat"),
            (search.Heartbeat, "__enter__", "heartbeat"), (search.Heartbeat, "__exit__", "heartbeat"),
        ]:
            stack.enter_context(wrapped(obj, name, timers, key))
        stack.enter_context(forward_timer(world.model, timers))
        mark = [time.perf_counter()]

        def on_trial(study) -> None:
            now = time.perf_counter()
            t = study.get_trials(deepcopy=False)[-1]
            rows.append({"trial": t.number, "state": t.state.name, "value": t.value, "total": now - mark[0],
                         "tokens": t.user_attrs.get("tokens", 0), **timers.take()})
            mark[0] = time.perf_counter()  # the bench's own bookkeeping stays out of the next trial

        search.optimize(world, study, on_trial=on_trial)
    return rows, world, study


def naive_loop(cfg, world, trials: list) -> list[dict]:
    """Replay `trials` (FrozenTrials) through disk: write, reload, fresh lm-eval objects, score; one row per trial."""
    import optuna
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import eval_tasks
    from evolve.objective import objective_values
    from evolve.study import make_sampler
    from merge_core.writer import write_model

    tmp = Path(tempfile.mkdtemp(prefix="naive-", dir=cfg.out_dir))
    study = optuna.create_study(storage=f"sqlite:///{tmp / 'naive.db'}", sampler=make_sampler(cfg),
                                direction="maximize")
    for t in trials:
        study.enqueue_trial(t.params)
    names = {f"{t}_dev" for t in cfg.tasks.names}
    keys = {run.name: f"{run.metric},{run.filter}" for run in world.evaluator.runs}
    timers, rows = Timers(), []
    for ref in trials:
        t0 = time.perf_counter()
        with timers.time("optuna"):
            trial = study.ask()
            params = world.genome.suggest(trial)
        with timers.time("recipe"):
            recipe = world.recipe(params, trial.number)
        out = tmp / "candidate"
        with timers.time("write"):
            write_model(recipe, world.sources, out, dtype=cfg.dtype, device="cpu", progress=False)
        with timers.time("load"):
            model = AutoModelForCausalLM.from_pretrained(out, dtype=getattr(torch, cfg.dtype)).eval()
            tok = AutoTokenizer.from_pretrained(out)
        with timers.time("eval"), forward_timer(model, timers):
            lm = HFLM(pretrained=model, tokenizer=tok, device="cpu", batch_size=cfg.tasks.batch_size)
            tm = TaskManager(include_path=str(eval_tasks.PATH), include_defaults=False)
            res = simple_evaluate(model=lm, tasks=sorted(names), limit=cfg.tasks.limit, task_manager=tm,
                                  bootstrap_iters=0, log_samples=False, verbosity="ERROR")
        scores = {name: float(res["results"][name][keys[name]]) for name in names}
        value = objective_values(cfg, scores)[0]
        with timers.time("optuna"):
            study.tell(trial, value)
        del model, lm
        shutil.rmtree(out)
        rows.append({"trial": ref.number, "value": value, "fast_value": ref.value,
                     "total": time.perf_counter() - t0, **timers.take()})
    shutil.rmtree(tmp, ignore_errors=True)
    return rows


def mean(rows: list[dict], key: str) -> float:
    """Mean of rows[key] (0 when absent)."""
    return statistics.fmean(r.get(key, 0.0) for r in rows) if rows else float("nan")


def fast_table(rows: list[dict]) -> list[list[str]]:
    """Table rows: mean seconds per trial by component, for all steady trials and for complete ones only."""
    out = []
    for label, sel in (("all", rows), ("complete", [r for r in rows if r["state"] == "COMPLETE"]),
                       ("pruned", [r for r in rows if r["state"] == "PRUNED"])):
        if not sel:
            continue
        total, merge, fwd = mean(sel, "total"), mean(sel, "merge"), mean(sel, "forward")
        optuna_s = sum(mean(sel, k) for k in OPTUNA_CALLS)
        lm_eval = mean(sel, "eval") - fwd
        rest = total - merge - mean(sel, "eval") - mean(sel, "recipe") - optuna_s
        else_ = total - merge - fwd
        out.append([label, len(sel), f"{total:.3f}", f"{merge:.3f}", f"{fwd:.3f}", f"{lm_eval:.3f}",
                    f"{mean(sel, 'recipe'):.3f}", f"{optuna_s:.3f}", f"{rest:.3f}", f"{100 * else_ / total:.1f} %"])
    return out


def main() -> None:
    """Run both loops for one setting and print Markdown tables (and optionally JSON rows)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setting", choices=("tiny", "smollm2"), default="tiny")
    p.add_argument("--trials", type=int, default=13, help="fast-loop trials (the first is a warm-up, not summarized)")
    p.add_argument("--naive-trials", type=int, default=3, help="naive trials (the first is a warm-up when >= 2)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--limit", type=int, default=None, help="first N dev items per task (tasks.limit)")
    p.add_argument("--storage", choices=("sqlite", "sqlite-wal", "journal"), default="sqlite",
                   help="sqlite: the default study.db; sqlite-wal: the same in WAL mode; journal: storage=study.log")
    p.add_argument("overrides", nargs="*", help="extra config overrides, e.g. optimizer=random")
    p.add_argument("--json", type=Path, default=None, help="write the per-trial rows here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import logging

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
    logging.getLogger("lm_eval").setLevel(logging.ERROR)

    with tempfile.TemporaryDirectory(prefix="bench_trial-", dir=ROOT / ".cache") as tmp:
        cfg, what = load_cfg(args.setting, Path(tmp), args.trials, args.threads, args.limit, args.storage,
                            args.overrides)
        print(f"setting {args.setting}: {what}; storage {args.storage}; torch threads {args.threads}; "
              f"tasks {list(cfg.tasks.names)} "
              f"limit {cfg.tasks.limit}; stages {list(cfg.tasks.stages)}; {cfg.optimizer.name} + {cfg.pruner.name}",
              flush=True)
        t0 = time.perf_counter()
        with sqlite_wal() if args.storage == "sqlite-wal" else contextlib.nullcontext():
            fast, world, study = fast_loop(cfg)
        print(f"fast loop: {len(fast)} trials in {time.perf_counter() - t0:.1f} s (load {load_line()})", flush=True)
        complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"][: args.naive_trials]
        t0 = time.perf_counter()
        naive = naive_loop(cfg, world, complete) if complete else []
        print(f"naive loop: {len(naive)} trials in {time.perf_counter() - t0:.1f} s (load {load_line()})", flush=True)

    steady = fast[1:] if len(fast) > 1 else fast
    print(f"\n{datetime.date.today()}  setting={args.setting}  storage={args.storage}  threads={args.threads}  "
          f"load {load_line()}")
    print("\nFast loop, mean seconds per trial (trial 0, the warm-up, left out):")
    print_table(["trials", "n", "total s", "merge_into", "forward", "lm-eval handling", "recipe", "optuna", "rest",
                 "everything else"], fast_table(steady))
    if args.json:
        args.json.write_text(json.dumps({"setting": args.setting, "storage": args.storage, "fast": fast,
                                         "naive": naive}, indent=1))
    print("\nOptuna calls of the fast loop, mean seconds per trial:")
    print_table(list(OPTUNA_CALLS), [[f"{mean(steady, k):.3f}" for k in OPTUNA_CALLS]])
    if not naive:
        return
    nsteady = naive[1:] if len(naive) > 1 else naive
    print("\nNaive loop (write + reload + new lm-eval objects), mean seconds per trial:")
    total = mean(nsteady, "total")
    print_table(["n", "total s", "write_model", "from_pretrained", "forward", "lm-eval (HFLM+tasks+rest)",
                 "recipe+optuna", "other"],
                [[len(nsteady), f"{total:.3f}", f"{mean(nsteady, 'write'):.3f}", f"{mean(nsteady, 'load'):.3f}",
                  f"{mean(nsteady, 'forward'):.3f}", f"{mean(nsteady, 'eval') - mean(nsteady, 'forward'):.3f}",
                  f"{mean(nsteady, 'recipe') + mean(nsteady, 'optuna'):.3f}",
                  f"{total - sum(mean(nsteady, k) for k in ('write', 'load', 'eval', 'recipe', 'optuna')):.3f}"]])
    fast_complete = [r for r in steady if r["state"] == "COMPLETE"] or steady
    print(f"\nnaive / fast per complete trial: {total / mean(fast_complete, 'total'):.2f}x; "
          f"naive / fast per trial of the search (pruned included): {total / mean(steady, 'total'):.2f}x")
    diffs = [abs(r["value"] - r["fast_value"]) for r in naive]
    print(f"naive vs fast dev score of the same {len(naive)} trials: max |diff| = {max(diffs):.2e}")


if __name__ == "__main__":
    main()
