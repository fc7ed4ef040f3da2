"""Peak RSS of the real demo search (lm-eval included) and of writing its candidate to a folder, against budgets.

    python bench/bench_search_memory.py [--batch-sizes 32,8] [--trials 2]

Each case is a fresh child process; VmRSS is read at milestones and the peak (VmHWM, or the child's ru_maxrss for
the CLI) at the end:
- imports: torch, transformers, lm-eval and evolve.search imported: the fixed cost of any search process;
- search (batch B): conf=demo's world built as `evolve search` builds it (sources opened, live model, dev Evaluator
  with batch size B), then --trials candidates merged into the live model and scored on the dev subset;
- write: `python -m evolve merge recipe=R out=DIR` of the same candidate (the export's write step).
Budgets (issue 6): search = the sources' safetensors bytes + one live model; write = sources + one shard (the
largest output file). Needs the demo models prepared (`python -m evolve prepare conf=demo` or a demo search).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import ROOT, folder_bytes, print_table, rss_now

GIB = 2**30


def child(case: str, batch: int, trials: int, recipe_out: str) -> None:
    """Run one case here and print one JSON line."""
    marks = {}
    import lm_eval  # noqa: F401
    import torch
    import transformers  # noqa: F401

    from evolve import context, search  # noqa: F401  (search: the loop's imports count as a search's fixed cost)

    marks["imports"] = rss_now()[0]
    if case == "search":
        from evolve.config import load_config
        from merge_core.live import merge_into
        from merge_core.recipe import save_recipe

        cfg = load_config(["conf=demo", "progress=false", "device=cpu", f"tasks.batch_size={batch}"])[0]
        torch.set_num_threads(int(cfg.threads) if cfg.get("threads") else torch.get_num_threads())
        world = context.build_context(cfg)
        marks["world"] = rss_now()[0]
        live = sum(p.numel() * p.element_size() for p in world.model.parameters())
        points = world.genome.baselines()
        recipe = None
        for i in range(trials):
            recipe = world.recipe(points[i % len(points)], i)
            merge_into(world.model, recipe, world.sources)
            marks[f"merge {i}"] = rss_now()[0]
            world.evaluator.evaluate()
            marks[f"eval {i}"] = rss_now()[0]
        save_recipe(recipe, Path(recipe_out))
        sources = sum(folder_bytes(Path(ck.path)) for ck in world.sources.models.values())
        marks.update(live_bytes=live, sources_bytes=sources)
    print(json.dumps({"hwm": rss_now()[1], **marks}))


def run_child(case: str, batch: int, trials: int, recipe: Path) -> dict:
    """One case in a fresh interpreter."""
    cmd = [sys.executable, __file__, "--child", case, "--batch", str(batch), "--trials", str(trials),
           "--recipe", str(recipe)]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if run.returncode != 0:
        raise SystemExit(f"{case} child failed:\n{run.stderr[-2000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def write_case(recipe: Path, out: Path) -> dict:
    """Peak RSS (ru_maxrss) of `python -m evolve merge` writing the recipe to `out`."""
    proc = subprocess.Popen([sys.executable, "-m", "evolve", "merge", f"recipe={recipe}", f"out={out}", "device=cpu"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"evolve merge failed: {proc.stderr.read().decode()[-2000:]}")
    files = [f.stat().st_size for f in out.glob("*.safetensors")]
    return {"hwm": usage.ru_maxrss * 1024, "written": folder_bytes(out), "largest_file": max(files)}


def main() -> int:
    """Run the cases and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-sizes", default="32,8")
    ap.add_argument("--trials", type=int, default=2)
    ap.add_argument("--child", choices=["imports", "search"], help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=32, help=argparse.SUPPRESS)
    ap.add_argument("--recipe", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.batch, args.trials, args.recipe)
        return 0
    gib = lambda b: f"{b / GIB:.2f}"  # noqa: E731
    rows = []
    with tempfile.TemporaryDirectory(dir=ROOT / ".cache") as tmp:
        recipe = Path(tmp) / "recipe.yaml"
        base = run_child("imports", 0, 0, recipe)
        rows.append(["imports only", gib(base["hwm"]), "", "", "", f"imports {gib(base['imports'])}"])
        search = None
        for b in [int(x) for x in args.batch_sizes.split(",")]:
            search = run_child("search", b, args.trials, recipe)
            budget = search["sources_bytes"] + search["live_bytes"]
            marks = ", ".join(f"{k} {gib(v)}" for k, v in search.items() if k not in ("hwm", "live_bytes", "sources_bytes"))
            rows.append([f"search, batch {b}, {args.trials} candidates", gib(search["hwm"]), gib(budget),
                         f"{search['hwm'] / budget:.2f}", f"{(search['hwm'] - base['hwm']) / budget:.2f}", marks])
        w = write_case(recipe, Path(tmp) / "out")
        budget = search["sources_bytes"] + w["largest_file"]
        rows.append(["write (evolve merge)", gib(w["hwm"]), gib(budget), f"{w['hwm'] / budget:.2f}",
                     f"{(w['hwm'] - base['hwm']) / budget:.2f}", f"wrote {gib(w['written'])}"])
    print(f"sources {gib(search['sources_bytes'])} GiB, live model {gib(search['live_bytes'])} GiB")
    print_table(["case", "peak RSS GiB", "budget GiB", "peak / budget", "(peak - imports) / budget", "VmRSS at milestones, GiB"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
