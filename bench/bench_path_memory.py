"""Peak RSS of a dfs search's merging at Llama-3.2-1B shape, paths up to 2x the base's depth, against the budget.

    python bench/bench_path_memory.py [--cache .cache/bench] [--size llama1b] [--candidates 4]

A fresh child process opens the base and one fine-tune (bf16, random weights of the real shape, written once by
bench/_common.ensure_models), builds the live model as `evolve search` does and applies --candidates DFS paths
(genome=dfs layout over both stacks, repeats=2): the base path, then paths of 24 to 32 layers (2x the base's 16)
with a third to all of the kept slots scaled. After each it runs one forward pass. Budget (issue 16): imports +
the sources' safetensors bytes + one live model + the largest candidate's scaled tensors.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

from _common import ensure_models, folder_bytes, print_table, rss_now

GIB = 2**30


def _params(genome, depth: int, scaled_share: float, seed: int) -> dict[str, float]:
    """A point whose path has `depth` layers, `scaled_share` of the kept slots scaled (the rest exactly 1)."""
    rng = random.Random(seed)
    point = {s.on: -0.5 for s in genome.slots} | {s.scale: 1.0 for s in genome.slots if s.scale}
    room = depth - genome.fixed_first - genome.fixed_last
    for s in sorted(rng.sample(genome.slots, room), key=genome.slots.index):
        point[s.on] = 0.5
        if rng.random() < scaled_share:
            point[s.scale] = rng.uniform(0.5, 1.5)
    return point


def child(base: str, ft: str, candidates: int) -> None:
    """Run the case here and print one JSON line."""
    import torch

    from evolve.dfs import declare_dfs
    from merge_core.live import build_live_model, merge_into
    from merge_core.recipe import parse_recipe
    from merge_core.sources import Sources

    torch.set_num_threads(2)
    marks = {"imports": rss_now()[0]}
    genome = declare_dfs({"repeats": 2, "fixed_first": 1, "fixed_last": 1, "scale_low": 0.5, "scale_high": 1.5},
                         n_layers=16, base=base, sources=[ft])
    sources = Sources.open(parse_recipe(genome.opening_recipe({"seed": 0})), check_finite=False)
    live = build_live_model(sources, "cpu", torch.bfloat16)
    live_bytes = sum(p.numel() * p.element_size() for p in live.parameters())
    marks["live model"] = rss_now()[0]
    ids = torch.randint(0, 1000, (1, 8), generator=torch.Generator().manual_seed(0))
    plan = [(16, 0.0)] + [(24 + 8 * (i % 2), (0.33, 1.0)[i % 2]) for i in range(candidates - 1)]
    scaled_max, depths = 0, []
    for i, (depth, share) in enumerate(plan):
        point = genome.baselines()[0] if share == 0.0 else _params(genome, depth, share, seed=i)
        recipe = parse_recipe(genome.recipe_dict(point, {"seed": 0}, dtype="bfloat16"), where=f"candidate {i}")
        merge_into(live, recipe, sources)
        cached = {t.data_ptr() for t in sources.device_cache.values()}
        own = {p.data_ptr(): p.numel() * p.element_size() for p in live.parameters() if p.data_ptr() not in cached}
        scaled_max = max(scaled_max, sum(own.values()))
        with torch.no_grad():
            logits = live(ids).logits
        assert torch.isfinite(logits).all()
        depths.append(len(live.model.layers))
        marks[f"candidate {i} (depth {depths[-1]})"] = rss_now()[0]
    sources_bytes = sum(folder_bytes(Path(ck.path)) for ck in sources.models.values())
    print(json.dumps({"marks": marks, "peak": rss_now()[1], "sources": sources_bytes, "live": live_bytes,
                      "scaled_max": scaled_max, "depths": depths}))


def main() -> int:
    """Run the child, print the table, exit 1 if the peak is over the budget."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path(".cache/bench"))
    ap.add_argument("--size", default="llama1b")
    ap.add_argument("--candidates", type=int, default=4)
    ap.add_argument("--child", nargs=2, metavar=("BASE", "FT"))
    args = ap.parse_args()
    if args.child:
        child(*args.child, args.candidates)
        return 0
    paths = ensure_models(args.cache, args.size)
    cmd = [sys.executable, __file__, "--child", str(paths["base"]), str(paths["ft1"]), "--candidates", str(args.candidates)]
    res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    budget = res["marks"]["imports"] + res["sources"] + res["live"] + res["scaled_max"]
    rows = [[k, f"{v / GIB:.2f}"] for k, v in res["marks"].items()]
    rows.append(["peak (VmHWM)", f"{res['peak'] / GIB:.2f}"])
    print_table(["milestone", "RSS GiB"], rows)
    print(f"sources {res['sources'] / GIB:.2f} GiB + live model {res['live'] / GIB:.2f} GiB + largest scaled set "
          f"{res['scaled_max'] / GIB:.2f} GiB + imports {res['marks']['imports'] / GIB:.2f} GiB = budget {budget / GIB:.2f} GiB; "
          f"peak {res['peak'] / GIB:.2f} GiB ({'within' if res['peak'] <= budget else 'OVER'}); depths {res['depths']}")
    return 0 if res["peak"] <= budget else 1


if __name__ == "__main__":
    sys.exit(main())
