"""Peak RSS of (i) a search without the evaluator (live model + several merge_into) and (ii) a folder export.

Usage: python bench/bench_memory.py [--cache .cache/bench] [--size smollm2] [--merges 4] [--shard-size 1000000000]
Each case runs in a fresh child process that reports its VmHWM (peak resident set) from /proc/self/status.
Budgets: (i) sources' file bytes + one live model; (ii) sources + one shard (at least the largest tensor).
Memory-mapped source pages count in RSS once touched (file-backed and reclaimable, but counted), so a merge
that reads every source tensor shows the sources' full size in its RSS even though nothing was copied.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import METHODS, SIZES, ensure_models, folder_bytes, load_line, print_table, recipe_dict, rss_now


def child(args: argparse.Namespace) -> None:
    """Run one case in this process and print one JSON line with its peak RSS."""
    import torch

    from merge_core.live import build_live_model, merge_into
    from merge_core.recipe import parse_recipe
    from merge_core.sources import Sources
    from merge_core.writer import write_model

    paths = {n: Path(p) for n, p in json.loads(args.paths).items()}
    layers = SIZES[args.size]["layers"]
    recipes = [parse_recipe(recipe_dict(m, paths, layers), f"bench:{m}") for m in args.methods.split(",")]
    baseline = rss_now()[0]  # interpreter + torch + transformers, before any model memory
    t = time.perf_counter()
    sources = Sources.open(recipes[0], check_finite=False)
    if args.child == "search":
        model = build_live_model(sources, "cpu", "bfloat16")
        live = sum(p.numel() * p.element_size() for p in model.parameters())
        # one Sources for every candidate, as a search does (all recipes name the same three models)
        for i in range(args.merges):
            merge_into(model, recipes[i % len(recipes)], sources)
        extra = {"live_bytes": live}
    else:
        with tempfile.TemporaryDirectory(dir=args.cache) as tmp:
            out = write_model(recipes[0], sources, Path(tmp) / "out", shard_size=args.shard_size, dtype=torch.bfloat16, progress=False)
            written = folder_bytes(out)
        extra = {"written_bytes": written}
    print(json.dumps({"hwm": rss_now()[1], "baseline": baseline, "seconds": time.perf_counter() - t, **extra}))


def run_child(mode: str, args: argparse.Namespace, paths: dict[str, Path], methods: str) -> dict:
    """Start a child for one case and return its JSON report."""
    cmd = [sys.executable, __file__, "--child", mode, "--size", args.size, "--cache", str(args.cache),
           "--merges", str(args.merges), "--shard-size", str(args.shard_size), "--methods", methods,
           "--paths", json.dumps({k: str(v) for k, v in paths.items()})]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"{mode} child failed:\n{run.stderr[-2000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> int:
    """Run both cases per size and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path(".cache/bench"))
    ap.add_argument("--size", default="smollm2", help="one of " + ", ".join(SIZES))
    ap.add_argument("--merges", type=int, default=4, help="merge_into calls in the search case")
    ap.add_argument("--methods", default=",".join(METHODS), help="recipes cycled through by the search case")
    ap.add_argument("--export-method", default="ties")
    ap.add_argument("--shard-size", type=int, default=1_000_000_000)
    ap.add_argument("--child", choices=["search", "export"], help=argparse.SUPPRESS)
    ap.add_argument("--paths", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return 0
    paths = ensure_models(args.cache, args.size)
    sources = sum(folder_bytes(p) for p in paths.values())
    gib = lambda b: f"{b / 2**30:.2f}"  # noqa: E731
    print(f"load before: {load_line()}", flush=True)
    search = run_child("search", args, paths, args.methods)
    export = run_child("export", args, paths, args.export_method)
    print(f"load after: {load_line()}")
    from safetensors import safe_open

    largest = 0
    for f in paths["base"].glob("*.safetensors"):
        with safe_open(str(f), "pt") as h:
            largest = max(largest, *(2 * math.prod(h.get_slice(n).get_shape()) for n in h.keys()))  # bf16
    shard = min(max(args.shard_size, largest), export["written_bytes"])
    rows = []
    for name, rep, budget in (("(i) search: live model + merge_into", search, sources + search["live_bytes"]),
                              (f"(ii) export ({args.export_method})", export, sources + shard)):
        rows.append([args.size, name, gib(rep["hwm"]), gib(rep["baseline"]), gib(budget), f"{rep['hwm'] / budget:.2f}",
                     f"{(rep['hwm'] - rep['baseline']) / budget:.2f}", f"{rep['seconds']:.0f}"])
    print(f"sources {gib(sources)} GiB; live model {gib(search['live_bytes'])} GiB; shard bound {gib(shard)} GiB")
    print_table(["size", "case", "peak RSS GiB", "baseline GiB", "budget GiB", "peak/budget", "(peak-baseline)/budget", "s"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
