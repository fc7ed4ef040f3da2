"""Time building ONE candidate in memory (merge_into a live bf16 model) against the memory-traffic limit.

Checkpoints (a base and two base+noise variants, bf16, real shapes, random weights) are written once under
--cache/synthetic-SIZE (~2.5 GB each at llama1b; writing them takes a few minutes once). Nothing asserts on time:
it prints Markdown tables. Everything below is measured in one process and one run, beside each other.

Build columns: `first` = the first merge_into (source pages read, kernels compiled; for ties/dare_ties with
per-search trims it is the *precomputing* trial, reported apart), `steady` = median of the next --repeats trials
(what every later trial of a search pays; for ties/dare_ties successive trials have different densities on the
0.01 grid, as a search's do), `exact` = one build through the exact path (no per-search trims: what `evolve merge`
of a recipe and every trial before this issue paid), then the ratios the issue asks for: linear/task_arithmetic
`steady / limit` (target <= 1.3), ties `steady / task_arithmetic` (<= 2) and dare_ties (<= 3), taken from
`side by side` = the median of --repeats further steady trials of every method, alternated (one trial of each, in
turn), so that the machine's speed drifting between the methods' own runs does not enter the ratios.

Floors (the same plans' source tensors into the live model's bf16 parameters): `limit` = bytes read and written
(each source tensor read once, each output written once) at the machine's copy bandwidth (best of 5 copies of a
256 MiB bf16 tensor, read + write counted); `fused` = the compiled one-pass weighted sum (methods/blend.py: the
best floor we have, what task_arithmetic runs); `blocked` = an eager float32 weighted sum in 256K-element chunks
with reused scratch (cache-blocked, one op per input per chunk); `whole` = the same per whole tensor.

The precomputation line gives what the per-search trims cost once: seconds, bytes on disk, bytes kept in memory,
and after how many trials they have paid for themselves ((first - steady) / (exact - steady)).

Commands (the lead's quiet-machine run; the first measures everything the issue's Done-when asks for the build):
    python bench/bench_build.py --size llama1b
    python bench/bench_build.py --size smollm2 --repeats 3
    python bench/bench_build.py --size llama1b --methods task_arithmetic --repeats 5     # the limit ratio alone
MERGE_CORE_FUSED=0 times the eager kernels instead; --threads N sets torch's threads; --device cuda runs it all on
a GPU (bench/gpu.sh).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
import yaml
from _common import MERGEKIT_PYTHON, METHODS, SIZES, ensure_models, load_line, print_table, recipe_dict

BLOCK = 1 << 18


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device: torch.device) -> float:
    """Bytes per second of a large tensor copy on `device`, reads and writes both counted (best of 5)."""
    src = torch.randn(1 << 27, device=device).to(torch.bfloat16)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(6):
        _sync(device)
        t = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * src.numel() * src.element_size() / best


def floor_jobs(model: torch.nn.Module, sources, plans) -> list[tuple[torch.Tensor, list[torch.Tensor], list[float]]]:
    """(output parameter, input tensors, weights) per plan: what every floor sums."""
    params = dict(model.named_parameters(remove_duplicate=False))
    device = next(model.parameters()).device
    jobs = []
    for plan in plans:
        inputs = [sources.get(m, name).to(device) for m, name in plan.inputs.items()]
        jobs.append((params[plan.out_name].data, inputs, [0.3 + 0.1 * i for i in range(len(inputs))]))
    return jobs


def traffic_bytes(jobs) -> int:
    """Each input read once and each output written once."""
    return sum(out.numel() * out.element_size() + sum(x.numel() * x.element_size() for x in xs) for out, xs, _ in jobs)


DEVICE = torch.device("cpu")


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):  # the first pass touches the source pages (and compiles): not counted
        _sync(DEVICE)
        t = time.perf_counter()
        with torch.no_grad():
            fn()
        _sync(DEVICE)
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:])


def whole_floor(jobs, repeats: int) -> float:
    """A plain float32 weighted sum per whole tensor into a reused scratch buffer, then cast into the parameter."""
    scratch = torch.empty(max(out.numel() for out, _, _ in jobs), dtype=torch.float32, device=DEVICE)

    def run() -> None:
        for out, inputs, weights in jobs:
            acc = scratch[: out.numel()].view(out.shape)
            acc.copy_(inputs[0]).mul_(weights[0])
            for x, w in zip(inputs[1:], weights[1:]):
                acc.add_(x, alpha=w)
            out.copy_(acc)

    return _median_time(run, repeats)


def blocked_floor(jobs, repeats: int) -> float:
    """The same sum BLOCK elements at a time: the float32 scratch stays in cache."""
    scratch = torch.empty(BLOCK, dtype=torch.float32, device=DEVICE)

    def run() -> None:
        for out, inputs, weights in jobs:
            flat_out, flat_in = out.view(-1), [x.reshape(-1) for x in inputs]
            for s in range(0, flat_out.numel(), BLOCK):
                e = min(s + BLOCK, flat_out.numel())
                acc = scratch[: e - s].copy_(flat_in[0][s:e]).mul_(weights[0])
                for x, w in zip(flat_in[1:], weights[1:]):
                    acc.add_(x[s:e], alpha=w)
                flat_out[s:e].copy_(acc)

    return _median_time(run, repeats)


def fused_floor(jobs, repeats: int) -> float:
    """The compiled one-pass weighted sum (methods/blend.py) per tensor; eager where it does not apply."""
    from merge_core.methods import blend

    def run() -> None:
        for out, inputs, weights in jobs:
            if not blend.weighted_sum(inputs, weights, out):
                blend.eager([x.reshape(-1) for x in inputs], weights, out.view(-1))

    return _median_time(run, repeats)


# Runs inside mergekit's own interpreter: imports first, then times run_merge alone (what mergekit-evolve calls per
# candidate).
_RUN_MERGE = """
import sys, time, yaml
from mergekit.config import MergeConfiguration
from mergekit.merge import MergeOptions, run_merge
cfg = MergeConfiguration.model_validate(yaml.safe_load(open(sys.argv[1])))
t = time.perf_counter()
run_merge(cfg, sys.argv[2], options=MergeOptions(cuda=False, random_seed=0, quiet=True, copy_tokenizer=False))
print("RUN_MERGE_SECONDS", time.perf_counter() - t)
"""


def mergekit_seconds(recipe: dict, timeout: float) -> tuple[float, float] | None:
    """(seconds inside mergekit's run_merge, wall seconds of the whole process) writing `recipe` to a temp folder."""
    if not Path(MERGEKIT_PYTHON).is_file():
        return None
    with tempfile.TemporaryDirectory(dir=".cache") as tmp:
        cfg = Path(tmp) / "recipe.yaml"
        data = {k: v for k, v in recipe.items() if k != "evolve_merge"}
        cfg.write_text(yaml.safe_dump(data, sort_keys=False))
        t = time.perf_counter()
        run = subprocess.run([MERGEKIT_PYTHON, "-c", _RUN_MERGE, str(cfg), str(Path(tmp) / "out")],
                             capture_output=True, text=True, timeout=timeout)
        wall = time.perf_counter() - t
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith("RUN_MERGE_SECONDS")]
    if run.returncode != 0 or not lines:
        print(f"mergekit failed: {run.stderr.strip().splitlines()[-1:]}")
        return None
    return float(lines[-1].split()[1]), wall


def bench_size(size: str, args: argparse.Namespace) -> tuple[list[list[str]], list[str]]:
    """Rows of the build table for one model size, and its floor / precomputation lines."""
    from merge_core.live import build_live_model, merge_into
    from merge_core.methods import precomputed
    from merge_core.plan import plan_tensors
    from merge_core.recipe import parse_recipe
    from merge_core.sources import Sources

    paths = ensure_models(args.cache, size)
    layers = SIZES[size]["layers"]
    model = None
    rows, notes, steady_of, runs = [], [], {}, {}
    for method in args.methods:
        recipe = parse_recipe(recipe_dict(method, paths, layers), f"bench:{method}")
        sources = Sources.open(recipe, check_finite=False)
        if model is None:
            t = time.perf_counter()
            model = build_live_model(sources, DEVICE, "bfloat16")
            print(f"[{size}] build_live_model: {time.perf_counter() - t:.2f}s", flush=True)
            plans = plan_tensors(recipe, sources.architecture, sources.base_config, sources.output_tied)
            jobs = floor_jobs(model, sources, plans)
            bw = copy_bandwidth(DEVICE)
            nbytes = traffic_bytes(jobs)
            limit = nbytes / bw
            fused = fused_floor(jobs, args.repeats)
            blocked = blocked_floor(jobs, args.repeats)
            whole = whole_floor(jobs, args.repeats)
            notes.append(f"[{size}] traffic {nbytes / 1e9:.2f} GB at copy bandwidth {bw / 1e9:.1f} GB/s: limit "
                         f"{limit:.3f}s; fused floor {fused:.3f}s ({fused / limit:.2f}x), blocked floor {blocked:.3f}s "
                         f"({blocked / limit:.2f}x), whole-tensor floor {whole:.3f}s ({whole / limit:.2f}x)")
            print(notes[-1], flush=True)
        sparse = method in ("ties", "dare_ties")
        exact = None
        if sparse:  # the exact path first (no per-search trims): every trial paid this before
            exact = _median_time(lambda model=model, recipe=recipe, sources=sources: merge_into(model, recipe, sources), 1)
            sources = Sources.open(recipe, check_finite=False)  # a fresh search: nothing cached yet
            store = precomputed.attach(sources, Path(args.trims) / f"{size}-{method}")
        times = []
        for trial in range(args.repeats + 1):
            r = parse_recipe(recipe_dict(method, paths, layers, trial=trial), f"bench:{method}:{trial}") if sparse else recipe
            _sync(DEVICE)
            t = time.perf_counter()
            merge_into(model, r, sources)
            _sync(DEVICE)
            times.append(time.perf_counter() - t)
        steady = statistics.median(times[1:])
        steady_of[method] = steady
        runs[method] = sources
        if sparse:
            st = store.stats
            pays = (times[0] - steady) / (exact - steady) if exact > steady else float("inf")
            notes.append(f"[{size}] {method} precomputation (once per search): {st['seconds']:.2f}s computing "
                         f"({st['computed']} tables), {st['bytes_disk'] / 1e6:.1f} MB on disk, "
                         f"{st['bytes_memory'] / 1e6:.1f} MB held in memory; first trial {times[0]:.2f}s vs "
                         f"exact {exact:.2f}s; pays for itself after {pays:.1f} trials")
            print(notes[-1], flush=True)
        print(f"[{size}] {method}: first {times[0]:.2f}s steady {steady:.3f}s exact "
              f"{'-' if exact is None else f'{exact:.2f}s'} limit {limit:.3f}s (load {load_line()})", flush=True)
        mk = mergekit_seconds(recipe_dict(method, paths, layers), args.mergekit_timeout) if method in args.mergekit_methods else None
        rows.append([size, method, f"{times[0]:.2f}", f"{steady:.3f}", "-" if exact is None else f"{exact:.2f}",
                     f"{limit:.3f}", "-" if mk is None else f"{mk[0]:.1f} ({mk[0] / steady:.0f}x)"])
    # side by side: the methods' steady trials alternated, so a drift of the machine's speed between the methods'
    # runs above (minutes apart, the precomputation between them) does not enter their ratios
    side = {m: [] for m in runs}
    for trial in range(1, args.repeats + 1):
        for method, sources in runs.items():
            r = parse_recipe(recipe_dict(method, paths, layers, trial=trial), f"bench:{method}:{trial}")
            _sync(DEVICE)
            t = time.perf_counter()
            merge_into(model, r, sources)
            _sync(DEVICE)
            side[method].append(time.perf_counter() - t)
    side_of = {m: statistics.median(v) for m, v in side.items()}
    for row in rows:
        method = row[1]
        s_ = side_of[method]
        if method in ("linear", "task_arithmetic"):
            target = f"{s_ / limit:.2f}x limit (<= 1.3)"
        elif "task_arithmetic" in side_of:
            bound = 2 if method == "ties" else 3
            target = f"{s_ / side_of['task_arithmetic']:.2f}x task_arithmetic (<= {bound})"
        else:
            target = "-"
        row[6:6] = [f"{s_:.3f}", f"{s_ / limit:.2f}", target]
    return rows, notes


def main() -> int:
    """Parse options, run every size, print the tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=Path(".cache/bench"), help="where the synthetic checkpoints live")
    ap.add_argument("--size", default="llama1b", help="comma list of " + ", ".join(SIZES))
    ap.add_argument("--methods", default=",".join(METHODS), help="comma list; ties/dare_ties ratios need task_arithmetic first")
    ap.add_argument("--repeats", type=int, default=3, help="steady trials (and floor repeats) after the first")
    ap.add_argument("--trims", default=None, help="folder for the per-search trims (default: a temporary one, "
                                                  "so the precomputation is measured)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--mergekit-methods", default="", help="methods also timed with mergekit 0.1.5's run_merge "
                    "(minutes each at llama1b; $EVOLVE_MERGEKIT_PYTHON)")
    ap.add_argument("--no-mergekit", action="store_true", help="no mergekit column (the default unless --mergekit-methods)")
    ap.add_argument("--mergekit-timeout", type=float, default=900)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the live model, source cache and floors there)")
    args = ap.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    args.methods = [m for m in args.methods.split(",") if m]
    args.mergekit_methods = set() if args.no_mergekit else {m for m in args.mergekit_methods.split(",") if m}
    if args.threads:
        torch.set_num_threads(args.threads)
    Path(".cache").mkdir(exist_ok=True)  # mergekit's temporary output folders
    print(f"torch threads {torch.get_num_threads()}, load before: {load_line()}", flush=True)
    rows, notes = [], []
    with tempfile.TemporaryDirectory(prefix="trims-") as tmp:
        args.trims = args.trims or tmp
        for size in args.size.split(","):
            r, n = bench_size(size, args)
            rows += r
            notes += n
    print(f"load after: {load_line()}")
    for line in notes:
        print(line)
    print_table(["size", "method", "first s", "steady s", "exact s", "limit s", "side by side s", "side / limit",
                 "target (side by side)", "mergekit run_merge s (/ steady)"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
