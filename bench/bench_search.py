"""Search efficiency on conf=tiny or conf=demo: best dev and held-out test score against trials and eval tokens,
per optimizer, with and without multi-fidelity pruning, over several seeds.

    python bench/bench_search.py [--conf tiny|demo] [--trials 24] [--seeds 0,1,2] [--optimizers cmaes,tpe,random]
                                 [--pruners median,none] [--jobs 2] [--threads 1] [--heldout all|final] [--out DIR]

Every run is the CLI (`python -m evolve search conf=C optimizer=X pruner=Y seed=S n_trials=N out_dir=...
progress=false export=false report=false threads=T`), --jobs at a time; each run's wall time and peak RSS (the
child's ru_maxrss) are recorded. All runs use the same fixed models: for tiny the seed-0 toy world (copied once
under --out; conf=tiny's `seed=` would otherwise also retrain them), for demo the demo's prepared models (its
preparer runs once if they are missing), so the seeds here vary the optimizer only. Finished runs are reused.
The held-out score of a best-so-far trial is its recipe merged into one live model and scored by the test-split
Evaluator (once per distinct recipe, cached in --out/heldout.json): after every prefix of trials with
`--heldout all`, for the run's final best only with `--heldout final` (the demo's test splits take minutes each).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # before anything imports tqdm: lm-eval's per-call bars bury the tables
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, load_line, print_table  # noqa: E402  (puts the repository on sys.path)

STYLES = {"median": "-", "halving": "-.", "none": "--"}
COLORS = {"cmaes": "tab:blue", "tpe": "tab:orange", "random": "tab:green", "gp": "tab:red"}


def toy_models(out: Path) -> list[Path]:
    """base, succ, upper: the seed-0 toy models, prepared (or found) in the toy cache and copied under `out`."""
    from evolve.toy import prepare

    names = ["base", "succ", "upper"]
    dest = [out / "models" / n for n in names]
    if all((d / "config.json").is_file() for d in dest):
        return dest
    found = prepare(ROOT / ".cache" / "evolve" / "toy", seed=0, progress=False)
    for name, d in zip(names, dest):
        tmp = d.with_name(f".{d.name}.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(found[name], tmp)
        shutil.rmtree(d, ignore_errors=True)
        tmp.rename(d)
    return dest


def demo_models() -> list[Path]:
    """base, arith, units: the demo's prepared models (the CLI's preparer runs once if they are missing)."""
    from evolve.config import load_config
    from evolve.models import resolve_models

    base, sources = resolve_models(load_config(["conf=demo", "progress=false"])[0], progress=False)
    return [Path(base), *map(Path, sources)]


def model_overrides(models: list[Path]) -> list[str]:
    """Config overrides that point the conf at fixed model folders (no preparer)."""
    return ["models.prepare=null", f"models.base={models[0]}", f"models.sources=[{','.join(map(str, models[1:]))}]"]


def run_dir(out: Path, optimizer: str, pruner: str, seed: int) -> Path:
    """Output folder of one run."""
    return out / "runs" / f"{optimizer}-{pruner}-s{seed}"


def search(out: Path, conf: str, models: list[Path], optimizer: str, pruner: str, seed: int, n_trials: int,
           threads: int) -> dict:
    """Run (or reuse) one search through the CLI; returns {seconds, peak_rss_gib} of its process."""
    d = run_dir(out, optimizer, pruner, seed)
    done = d / "done.json"
    if done.is_file() and json.loads(done.read_text()).get("n_trials") == n_trials:
        return json.loads(done.read_text())
    d.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "evolve", "search", f"conf={conf}", f"optimizer={optimizer}", f"pruner={pruner}",
           f"seed={seed}", f"n_trials={n_trials}", f"out_dir={d}", "progress=false", "export=false", "report=false",
           f"threads={threads}", *model_overrides(models)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    t0 = time.perf_counter()
    with open(d / "log.txt", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (ru_maxrss in KiB on Linux)
        proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{d}: search exited {proc.returncode}; see {d / 'log.txt'}")
    info = {"n_trials": n_trials, "seconds": seconds, "peak_rss_gib": usage.ru_maxrss / 2**20, "cmd": cmd}
    done.write_text(json.dumps(info))
    print(f"  {d.name}: {seconds:.0f} s, peak RSS {info['peak_rss_gib']:.2f} GiB (load {load_line()})", flush=True)
    return info


def read_run(out: Path, study_name: str, optimizer: str, pruner: str, seed: int) -> list[dict]:
    """The counted trials of one run in order: number, state, dev value, tokens, params."""
    import optuna

    from evolve.study import is_counted

    db = run_dir(out, optimizer, pruner, seed) / "study.db"
    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{db}")
    return [{"number": t.number, "state": t.state.name, "value": t.value, "tokens": int(t.user_attrs.get("tokens", 0)),
             "params": t.params} for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
            if is_counted(t)]


class HeldOut:
    """Test-split objective of a parameter point: merged into one live model, scored once, cached on disk."""

    def __init__(self, out: Path, conf: str, models: list[Path], threads: int) -> None:
        """Build the conf's context (live model, dev Evaluator) and the test-split Evaluator."""
        from evolve.config import load_config
        from evolve.context import build_context

        self.cfg = load_config([f"conf={conf}", f"out_dir={out / 'heldout'}", f"threads={threads}", "device=cpu",
                                "progress=false", *model_overrides(models)])[0]
        self.world = build_context(self.cfg)
        self.test = self.world.test_evaluator()
        self.path = out / "heldout.json"
        self.cache = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.evaluated = 0

    def __call__(self, params: dict[str, float]) -> float:
        """Weighted test objective (the dev objective's weights) of the recipe at `params`."""
        from evolve.objective import combined
        from merge_core.live import merge_into

        key = json.dumps(params, sort_keys=True)
        if key not in self.cache:
            merge_into(self.world.model, self.world.recipe(params, None), self.world.sources)
            self.cache[key] = combined(self.test.evaluate().scores, self.cfg, "test")
            self.evaluated += 1
            tmp = self.path.with_suffix(".part")
            tmp.write_text(json.dumps(self.cache))
            tmp.replace(self.path)
        return self.cache[key]


def curves(trials: list[dict], heldout: HeldOut, final_only: bool = False) -> dict[str, list[float]]:
    """Per prefix of trials: cumulative tokens, best complete dev value so far and its held-out score (nan before
    the last prefix when `final_only`)."""
    tokens, dev, test, total, best = [], [], [], 0, None
    for i, t in enumerate(trials):
        total += t["tokens"]
        if t["state"] == "COMPLETE" and (best is None or t["value"] > best["value"]):
            best = t
        tokens.append(total)
        dev.append(best["value"] if best else math.nan)
        scored = best and (not final_only or i == len(trials) - 1)
        test.append(heldout(best["params"]) if scored else math.nan)
    return {"tokens": tokens, "dev": dev, "test": test,
            "pruned": sum(t["state"] == "PRUNED" for t in trials), "n": len(trials)}


def at_tokens(c: dict, grid: list[float], key: str) -> list[float]:
    """Step function: best-so-far `key` once `grid[i]` tokens are spent (nan before the first trial ends and after
    the run's last one)."""
    out, j = [], -1
    for g in grid:
        if g > c["tokens"][-1]:
            out.append(math.nan)
            continue
        while j + 1 < len(c["tokens"]) and c["tokens"][j + 1] <= g:
            j += 1
        out.append(c[key][j] if j >= 0 else math.nan)
    return out


def mean_sd(values: list[float]) -> str:
    """'mean ± sd' of a few values."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {sd:.3f}"


def first_reach(c: dict, target: float) -> float | None:
    """Tokens after which the held-out best-so-far first reaches `target` (None if never)."""
    for tok, v in zip(c["tokens"], c["test"]):
        if v >= target - 1e-12:
            return tok
    return None


def summarize(results: dict, optimizers: list[str], pruners: list[str], seeds: list[int]) -> list[list[str]]:
    """Table rows: final dev/test, tokens, pruned trials; for pruned runs, tokens to match no-pruning's test score."""
    rows = []
    for opt in optimizers:
        for pr in pruners:
            runs = [results[(opt, pr, s)] for s in seeds]
            tokens = statistics.fmean(r["tokens"][-1] for r in runs)
            reach = "-"
            if pr != "none" and "none" in pruners:
                ratios = []
                for s, r in zip(seeds, runs):
                    ref = results[(opt, "none", s)]
                    hit = first_reach(r, ref["test"][-1])
                    ratios.append(f"{hit / ref['tokens'][-1]:.2f}" if hit is not None else "never")
                reach = ", ".join(ratios)
            ref = [results[(opt, "none", s)]["tokens"][-1] for s in seeds] if "none" in pruners else [tokens]
            pruned = statistics.fmean(r["pruned"] for r in runs)
            rows.append([opt, pr, mean_sd([r["dev"][-1] for r in runs]), mean_sd([r["test"][-1] for r in runs]),
                         f"{tokens:,.0f}", f"{tokens / statistics.fmean(ref):.2f}", f"{pruned:.1f}", reach])
    return rows


def plot(results: dict, optimizers: list[str], pruners: list[str], seeds: list[int], path: Path, n_trials: int,
         title: str) -> None:
    """2x2 figure: best dev / held-out test (mean over seeds) against trials and against eval tokens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharey="row")
    top = max(r["tokens"][-1] for r in results.values())
    grid = [top * i / 300 for i in range(301)]
    for opt in optimizers:
        for pr in pruners:
            runs = [results[(opt, pr, s)] for s in seeds]
            label = f"{opt} + {pr}"
            style = dict(color=COLORS.get(opt), linestyle=STYLES.get(pr, ":"), label=label)
            for row, key in enumerate(("dev", "test")):
                n = min(len(r[key]) for r in runs)
                by_trial = [statistics.fmean(r[key][k] for r in runs) for k in range(n)]
                # with --heldout final only the last point exists: a marker shows it
                axes[row][0].plot(range(1, n + 1), by_trial, drawstyle="steps-post", marker="o", markevery=[n - 1],
                                  **style)
                stepped = [at_tokens(r, grid, key) for r in runs]
                by_tok = [statistics.fmean(v[i] for v in stepped) if all(not math.isnan(v[i]) for v in stepped)
                          else math.nan for i in range(len(grid))]
                axes[row][1].plot([g / 1000 for g in grid], by_tok, drawstyle="steps-post", **style)
                # the runs' final point (mean tokens, mean score): the only one with --heldout final
                axes[row][1].plot([statistics.fmean(r["tokens"][-1] for r in runs) / 1000],
                                  [statistics.fmean(r[key][-1] for r in runs)], marker="o", color=style["color"])
    for row, key in enumerate(("best dev score (so far)", "held-out test score of the best-dev trial")):
        axes[row][0].set_ylabel(key)
        axes[row][0].set_xlabel("trials")
        axes[row][1].set_xlabel("eval tokens spent (thousands)")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    axes[0][1].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{title}, {n_trials} trials, mean over seeds {seeds} (solid: median pruner, dashed: none)",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def main() -> None:
    """Run the grid of searches, score the best-so-far trials on the test split, print tables, draw the plot."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--conf", choices=["tiny", "demo"], default="tiny")
    p.add_argument("--trials", type=int, default=24)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--optimizers", default="cmaes,tpe,random")
    p.add_argument("--pruners", default="median,none")
    p.add_argument("--jobs", type=int, default=2, help="searches run at the same time")
    p.add_argument("--threads", type=int, default=1, help="torch threads per search")
    p.add_argument("--heldout", choices=["all", "final"], default=None,
                   help="score every best-so-far trial on test (tiny's default) or each run's final best (demo's)")
    p.add_argument("--out", type=Path, default=None, help="default .cache/bench/search (tiny), search-demo (demo)")
    p.add_argument("--plot", type=Path, default=None)
    args = p.parse_args()
    demo = args.conf == "demo"
    out = args.out or ROOT / ".cache" / "bench" / ("search-demo" if demo else "search")
    plot_path = args.plot or ROOT / "docs" / "img" / ("search_efficiency_demo.png" if demo else "search_efficiency.png")
    final_only = (args.heldout or ("final" if demo else "all")) == "final"
    import torch

    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    optimizers, pruners = args.optimizers.split(","), args.pruners.split(",")
    out.mkdir(parents=True, exist_ok=True)
    models = demo_models() if demo else toy_models(out)
    grid = [(o, p_, s) for s in seeds for o in optimizers for p_ in pruners]
    print(f"{len(grid)} searches, {args.jobs} at a time, {args.threads} thread(s) each, load {load_line()}", flush=True)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = dict(zip(grid, pool.map(
            lambda g: search(out, args.conf, models, *g, args.trials, args.threads), grid)))
    t_search = time.perf_counter() - t0

    import logging

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    t0 = time.perf_counter()
    torch.set_num_threads(max(args.threads, os.cpu_count() or 1))  # the searches are done: one scorer, all cores
    heldout = HeldOut(out, args.conf, models, torch.get_num_threads())
    study_name = heldout.cfg.study_name
    results = {g: curves(read_run(out, study_name, *g), heldout, final_only) for g in grid}
    t_heldout = time.perf_counter() - t0

    title = "conf=demo, task_arithmetic" if demo else "conf=tiny, ties"
    plot(results, optimizers, pruners, seeds, plot_path, args.trials, title)
    seconds = [r["seconds"] for r in runs.values()]
    print(f"\n{datetime.date.today()}  conf={args.conf}  {args.trials} trials  seeds {seeds}  searches {t_search:.0f} s "
          f"(mean {statistics.fmean(seconds):.0f} s per run, {args.jobs} at a time)  held-out scoring "
          f"{t_heldout:.0f} s ({heldout.evaluated} new recipes)  load {load_line()}")
    print_table(["optimizer", "pruner", "final best dev", "held-out test of best dev", "eval tokens",
                 "tokens / no-pruning", "pruned trials", "tokens to reach no-pruning's final test, per seed (ratio)"],
                summarize(results, optimizers, pruners, seeds))
    print()
    print_table(["run", "trials", "pruned", "eval tokens", "wall s", "peak RSS GiB"],
                [[f"{o}-{p_}-s{s}", str(results[(o, p_, s)]["n"]), str(results[(o, p_, s)]["pruned"]),
                  f"{results[(o, p_, s)]['tokens'][-1]:,}", f"{r['seconds']:.0f}",
                  f"{r['peak_rss_gib']:.2f}" if "peak_rss_gib" in r else "-"] for (o, p_, s), r in runs.items()])
    print(f"plot: {plot_path}")
    (out / "summary.json").write_text(json.dumps({f"{o}-{p_}-s{s}": r for (o, p_, s), r in results.items()}))


if __name__ == "__main__":
    main()
