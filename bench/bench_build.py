"""Time building ONE candidate in memory (merge_into a live bf16 model) against a torch floor and mergekit-yaml.

Usage: python bench/bench_build.py [--cache .cache/bench] [--size smollm2,llama1b] [--methods linear,ties,...]
                                   [--repeats 3] [--no-mergekit] [--mergekit-methods ties,dare_ties]
Checkpoints (a base and two base+noise variants, bf16, real shapes, random weights) are written once under
--cache/synthetic-SIZE (~2.5 GB each at llama1b). Nothing here asserts on time: it prints a Markdown table.

Columns: `first` = the first merge_into (reads source pages from disk / page cache), `steady` = median of the
next --repeats calls (what every later trial of a search pays), `floor` = a plain torch weighted sum of the same
bf16 source tensors with float32 math per tensor into the live model's preallocated bf16 parameters,
`mergekit run_merge` = seconds inside mergekit 0.1.5's `run_merge(config, out_folder)` (load, merge, write; what
mergekit-evolve pays per candidate), timed in mergekit's own interpreter after its imports; `process` = that whole
Python process (start-up and imports included). On CPU, ties/dare_ties run through the compiled kernels of
merge_core/methods/fused.py (`first` includes their compile); MERGE_CORE_FUSED=0 times the eager path instead.
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


def floor_seconds(model: torch.nn.Module, sources, plans, repeats: int) -> float:
    """Median time of a plain float32 weighted sum of the plans' inputs into the live parameters."""
    params = dict(model.named_parameters(remove_duplicate=False))
    jobs = []
    for plan in plans:
        inputs = [sources.get(m, name) for m, name in plan.inputs.items()]
        weights = [0.3 + 0.1 * i for i in range(len(inputs))]
        jobs.append((params[plan.out_name].data, inputs, weights))
    largest = max(out.numel() for out, _, _ in jobs)
    scratch = torch.empty(largest, dtype=torch.float32)
    times = []
    for _ in range(repeats + 1):  # the first pass touches the source pages; not counted
        t = time.perf_counter()
        with torch.no_grad():
            for out, inputs, weights in jobs:
                acc = scratch[: out.numel()].view(out.shape)
                acc.copy_(inputs[0]).mul_(weights[0])
                for x, w in zip(inputs[1:], weights[1:]):
                    acc.add_(x, alpha=w)
                out.copy_(acc)
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:])


# Runs inside mergekit's own interpreter: imports first, then times run_merge alone (what mergekit-evolve calls per
# candidate), then the whole command's wall time is measured around it by the caller.
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


def bench_size(size: str, args: argparse.Namespace) -> list[list[str]]:
    """Rows of the table for one model size."""
    from merge_core.live import build_live_model, merge_into
    from merge_core.plan import plan_tensors
    from merge_core.recipe import parse_recipe
    from merge_core.sources import Sources

    paths = ensure_models(args.cache, size)
    layers = SIZES[size]["layers"]
    rows, floor = [], None
    model = sources0 = None
    for method in args.methods:
        data = recipe_dict(method, paths, layers)
        recipe = parse_recipe(data, f"bench:{method}")
        t = time.perf_counter()
        sources = Sources.open(recipe, check_finite=False)
        opened = time.perf_counter() - t
        if model is None:
            t = time.perf_counter()
            model = build_live_model(sources, "cpu", "bfloat16")
            print(f"[{size}] build_live_model: {time.perf_counter() - t:.2f}s; Sources.open: {opened:.2f}s", flush=True)
            sources0 = sources
        times = []
        for _ in range(args.repeats + 1):
            t = time.perf_counter()
            merge_into(model, recipe, sources)
            times.append(time.perf_counter() - t)
        steady = statistics.median(times[1:])
        if floor is None:
            plans = plan_tensors(recipe, sources0.architecture, sources0.base_config, sources0.output_tied)
            floor = floor_seconds(model, sources0, plans, args.repeats)
        mk = wall = None
        if method in args.mergekit_methods:
            mk, wall = mergekit_seconds(data, args.mergekit_timeout) or (None, None)
        ratio_floor = steady / floor
        ratio_mk = f"{mk / steady:.1f}x" if mk else "-"
        print(f"[{size}] {method}: first {times[0]:.2f}s steady {steady:.2f}s floor {floor:.2f}s "
              f"mergekit run_merge {mk if mk is None else round(mk, 1)}s, process {wall if wall is None else round(wall, 1)}s"
              f" (load {load_line()})", flush=True)
        rows.append([size, method, f"{times[0]:.2f}", f"{steady:.2f}", f"{floor:.2f}", f"{ratio_floor:.2f}",
                     "-" if mk is None else f"{mk:.1f}", "-" if wall is None else f"{wall:.1f}", ratio_mk])
    return rows


def main() -> int:
    """Parse options, run every size, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path(".cache/bench"))
    ap.add_argument("--size", default="smollm2", help="comma list of " + ", ".join(SIZES))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-mergekit", action="store_true")
    ap.add_argument("--mergekit-methods", default=",".join(METHODS), help="methods also timed with mergekit's run_merge")
    ap.add_argument("--mergekit-timeout", type=float, default=900)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    args.methods = [m for m in args.methods.split(",") if m]
    args.mergekit_methods = set() if args.no_mergekit else {m for m in args.mergekit_methods.split(",") if m}
    if args.threads:
        torch.set_num_threads(args.threads)
    Path(".cache").mkdir(exist_ok=True)
    print(f"torch threads {torch.get_num_threads()}, load before: {load_line()}", flush=True)
    rows = []
    for size in args.size.split(","):
        rows += bench_size(size, args)
    print(f"load after: {load_line()}")
    print_table(["size", "method", "first s", "steady s", "floor s", "steady/floor", "mergekit run_merge s",
                 "mergekit process s", "run_merge / steady"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
