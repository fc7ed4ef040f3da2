"""Time the search's inner step on Llama-3.2-1B-shaped random checkpoints: open + validate, build, merge_into.

Usage: python bench/live_merge_speed.py [--work DIR] [--device auto] [--dtype bfloat16] [--layers 16] [--method ties]
Writes three 1B-shaped checkpoints (about 2.5 GB each in bfloat16) unless they already exist in --work.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch


def main() -> int:
    """Print timings of each stage."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from merge_core.live import build_live_model, merge_into
    from merge_core.recipe import parse_recipe
    from merge_core.sources import Sources
    from merge_core.synthetic import make_checkpoint

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/live-bench"))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--method", default="ties")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    shape = dict(layers=args.layers, hidden=2048, intermediate=8192, heads=32, kv_heads=8, vocab=128256,
                 dtype=getattr(torch, args.dtype), tokenizer=False)
    t = time.perf_counter()
    base = args.work / "base"
    if not (base / "config.json").exists():
        make_checkpoint(base, seed=0, shard_size=1 << 30, **shape)
    names = []
    for i in (1, 2):
        path = args.work / f"ft{i}"
        if not (path / "config.json").exists():
            make_checkpoint(path, like=base, noise=0.002, seed=i, dtype=shape["dtype"], shard_size=1 << 30, tokenizer=False)
        names.append(str(path))
    print(f"checkpoints ready: {time.perf_counter() - t:.1f}s")

    params = {"weight": [0.3, 0.7], "density": 0.6} if args.method != "linear" else {"weight": [0.3, 0.7]}
    data = {"merge_method": args.method, "base_model": str(base), "models": [{"model": n, "parameters": params} for n in names]}
    recipe = parse_recipe(data, "bench")
    t = time.perf_counter()
    sources = Sources.open(recipe)
    print(f"Sources.open (shape + finite checks): {time.perf_counter() - t:.1f}s")
    t = time.perf_counter()
    model = build_live_model(sources, args.device, args.dtype)
    print(f"build_live_model on {next(model.parameters()).device}: {time.perf_counter() - t:.1f}s")
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for i in range(args.repeats):
        t = time.perf_counter()
        merge_into(model, recipe, sources)
        sync()
        print(f"merge_into #{i + 1} ({'fills source cache' if i == 0 else 'cached'}): {time.perf_counter() - t:.2f}s")
    if torch.cuda.is_available():
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
