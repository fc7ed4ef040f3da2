"""Tensor-by-tensor parity of `evolve merge` with mergekit-yaml on tiny float32 checkpoints.

Usage: python bench/compare_mergekit.py [--work DIR] [--layers 4]
Prints the max abs difference per recipe. mergekit runs in its own environment: EVOLVE_MERGEKIT_YAML (default
/opt/mkvenv/bin/mergekit-yaml) or EVOLVE_MERGEKIT_PYTHON (a python that can import mergekit); all recipes go
through one mergekit process (its import alone takes ~20 s).

Known, intended difference: where mergekit writes `lm_head.weight` beside `tie_word_embeddings: true` (a tied base
with an untied source), we write `tie_word_embeddings: false`, because transformers would otherwise ignore the
written head and reuse the embedding. mergekit's output config is the base_model's, or without one an arbitrary
referenced model's (it takes the first of a set): the passthrough recipes below that mix tied and untied models
name a base_model so that its tie flag is deterministic.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

TOLERANCE = 1e-5
_DRIVER = """
import sys, json
from mergekit.scripts.run_yaml import main
for cfg, out in json.loads(sys.argv[1]):
    main([cfg, out, "--quiet", "--no-cuda", "--no-lazy-unpickle", "--random-seed", "0"], standalone_mode=False)
"""


def make_models(root: Path, layers: int = 4) -> dict[str, Path]:
    """A tied base, two tied fine-tunes and an untied fine-tune, all float32."""
    from merge_core.synthetic import make_checkpoint

    base = make_checkpoint(root / "base", layers=layers, seed=0, tokenizer=True)
    return {
        "base": base,
        "ft_a": make_checkpoint(root / "ft_a", like=base, noise=0.02, seed=1),
        "ft_b": make_checkpoint(root / "ft_b", like=base, noise=0.02, seed=2),
        "untied": make_checkpoint(root / "untied", like=base, noise=0.02, seed=3, tied=False),
    }


def parity_recipes(m: dict[str, Path]) -> dict[str, dict]:
    """Recipes both tools support, covering every method, gradients, filters and slices."""
    base, a, b, u = (str(m[k]) for k in ("base", "ft_a", "ft_b", "untied"))

    def gta(method: str, pa: dict, pb: dict, **glob) -> dict:
        r = {"merge_method": method, "base_model": base,
             "models": [{"model": a, "parameters": pa}, {"model": b, "parameters": pb}], "dtype": "float32"}
        return r | ({"parameters": glob} if glob else {})

    return {
        "linear": {"merge_method": "linear", "dtype": "float32",
                   "models": [{"model": a, "parameters": {"weight": 0.3}}, {"model": b, "parameters": {"weight": 0.7}}]},
        "linear_gradient_filter": {
            "merge_method": "linear", "dtype": "float32",
            "models": [{"model": a, "parameters": {"weight": [{"filter": "self_attn", "value": [0.1, 0.9, 0.4]}, {"value": [1.0, 0.2]}]}},
                       {"model": b, "parameters": {"weight": 0.5}}]},
        "slerp": {"merge_method": "slerp", "base_model": base, "dtype": "float32",
                  "models": [{"model": base}, {"model": a}],
                  "parameters": {"t": [{"filter": "mlp", "value": [0.0, 0.5, 1.0]}, {"value": 0.3}]}},
        "task_arithmetic": gta("task_arithmetic", {"weight": 0.8}, {"weight": [0.2, 0.6, 1.0]}),
        "ties": gta("ties", {"weight": 0.6, "density": 0.5}, {"weight": 0.4, "density": 0.7}),
        "breadcrumbs": gta("breadcrumbs", {"weight": 0.5, "density": 0.8, "gamma": 0.05}, {"weight": 0.7, "density": 0.9, "gamma": 0.02}),
        "model_stock": {"merge_method": "model_stock", "base_model": base, "dtype": "float32",
                        "models": [{"model": a}, {"model": b}]},
        "dare_ties_density1": gta("dare_ties", {"weight": 0.6, "density": 1.0}, {"weight": 0.5, "density": 1.0}),
        "dare_linear_density1": gta("dare_linear", {"weight": 0.6, "density": 1.0}, {"weight": 0.5, "density": 1.0}),
        "della_density1": gta("della", {"weight": 0.6, "density": 1.0, "epsilon": 0.1}, {"weight": 0.5, "density": 1.0, "epsilon": 0.1}),
        "slices_slerp": {
            "merge_method": "slerp", "base_model": base, "dtype": "float32",
            "slices": [
                {"sources": [{"model": base, "layer_range": [0, 2]}, {"model": a, "layer_range": [0, 2]}],
                 "parameters": {"t": 0.25}},
                {"sources": [{"model": base, "layer_range": [2, 4]}, {"model": a, "layer_range": [2, 4]}],
                 "parameters": {"t": [0.5, 0.9]}},
            ]},
        # passthrough layer paths: two models stacked (the untied one last: its head), a repeated slice with its
        # residual writers scaled, one model's layers repeated
        "passthrough_stack": {"merge_method": "passthrough", "dtype": "float32", "slices": [
            {"sources": [{"model": a, "layer_range": [0, 3]}]},
            {"sources": [{"model": u, "layer_range": [1, 4]}]}]},
        "passthrough_repeat_scaled": {"merge_method": "passthrough", "dtype": "float32", "slices": [
            {"sources": [{"model": base, "layer_range": [0, 3]}]},
            {"sources": [{"model": base, "layer_range": [1, 3]}],
             "parameters": {"scale": [{"filter": "o_proj", "value": 0.5}, {"filter": "down_proj", "value": 0.75}]}},
            {"sources": [{"model": b, "layer_range": [2, 4], "parameters": {"scale": [{"filter": "down_proj", "value": 1.25}]}}]}]},
        "passthrough_repeat_one": {"merge_method": "passthrough", "dtype": "float32", "slices": [
            {"sources": [{"model": a, "layer_range": [0, 2]}]},
            {"sources": [{"model": a, "layer_range": [0, 4]}]},
            {"sources": [{"model": a, "layer_range": [3, 4]}]}]},
        # a path whose head side is a tied model while an untied one feeds earlier layers: mergekit writes no head
        # (none of the head's inputs has one), so the output is tied (base_model set: mergekit's config is the
        # base's; without one it takes an arbitrary referenced model's, and its tie flag with it)
        "passthrough_untied_first": {"merge_method": "passthrough", "base_model": a, "dtype": "float32", "slices": [
            {"sources": [{"model": u, "layer_range": [0, 3]}]},
            {"sources": [{"model": a, "layer_range": [1, 4]}]}]},
        "passthrough_untied_middle": {"merge_method": "passthrough", "base_model": a, "dtype": "float32", "slices": [
            {"sources": [{"model": a, "layer_range": [0, 2]}]},
            {"sources": [{"model": u, "layer_range": [1, 3]}]},
            {"sources": [{"model": b, "layer_range": [2, 4]}]}]},
        "ties_untied_source": {"merge_method": "ties", "base_model": base, "dtype": "float32",
                               "models": [{"model": a, "parameters": {"weight": 0.5, "density": 0.6}},
                                          {"model": u, "parameters": {"weight": 0.5, "density": 0.6}}]},
    }


def mergekit_command() -> tuple[list[str], bool] | None:
    """(argv prefix, True if it is a python that runs all recipes in one process); None if mergekit is absent."""
    # the default is the folder scripts/mergekit_venv.sh makes
    default = Path(os.environ.get("TMPDIR") or "/tmp") / "evolve-ci-mergekit" / "bin" / "mergekit-yaml"
    yaml_cli = os.environ.get("EVOLVE_MERGEKIT_YAML", str(default))
    python = os.environ.get("EVOLVE_MERGEKIT_PYTHON") or str(Path(yaml_cli).with_name("python"))
    if Path(python).is_file() and subprocess.run([python, "-c", "import mergekit"], capture_output=True).returncode == 0:
        return [python, "-c", _DRIVER], True
    if shutil.which(yaml_cli):
        return [yaml_cli], False
    return None


def run_mergekit(jobs: list[tuple[Path, Path]], timeout: int = 900) -> None:
    """Build every (recipe, out) pair with mergekit on CPU."""
    found = mergekit_command()
    if found is None:
        raise FileNotFoundError("mergekit-yaml not found; set EVOLVE_MERGEKIT_YAML or EVOLVE_MERGEKIT_PYTHON")
    cmd, batched = found
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    if batched:
        subprocess.run([*cmd, json.dumps([[str(r), str(o)] for r, o in jobs])], check=True, env=env, timeout=timeout)
    else:
        for recipe, out in jobs:
            subprocess.run([*cmd, str(recipe), str(out), "--quiet", "--no-cuda", "--random-seed", "0"],
                           check=True, env=env, timeout=timeout)


def run_ours(recipe: Path, out: Path) -> None:
    """Build one recipe with `evolve merge` in this process."""
    from evolve.cli import main

    rc = main(["merge", f"recipe={recipe}", f"out={out}", "device=cpu"])
    if rc != 0:
        raise RuntimeError(f"evolve merge failed on {recipe} (exit {rc})")


def load_tensors(folder: Path) -> dict:
    """Every tensor of a folder (single file or shards)."""
    from safetensors.torch import load_file

    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(file)))
    return out


def compare(ours: Path, theirs: Path) -> dict:
    """Max abs diff over common tensors, name differences and both tie flags."""
    a, b = load_tensors(ours), load_tensors(theirs)
    common = sorted(set(a) & set(b))
    diffs = {n: (a[n].float() - b[n].float()).abs().max().item() if a[n].shape == b[n].shape else float("inf") for n in common}
    worst = max(diffs, key=diffs.get) if diffs else None
    tie = lambda f: json.loads((f / "config.json").read_text()).get("tie_word_embeddings")  # noqa: E731
    depth = lambda f: json.loads((f / "config.json").read_text()).get("num_hidden_layers")  # noqa: E731
    return {
        "layers_ours": depth(ours), "layers_mergekit": depth(theirs),
        "max_abs_diff": diffs[worst] if worst else float("inf"), "worst_tensor": worst,
        "only_ours": sorted(set(a) - set(b)), "only_mergekit": sorted(set(b) - set(a)),
        "tie_ours": tie(ours), "tie_mergekit": tie(theirs), "head_written": "lm_head.weight" in a,
    }


def run_all(work: Path, layers: int = 4) -> dict[str, dict]:
    """Build models, run both tools on every recipe, return comparison rows by recipe name."""
    models = make_models(work / "models", layers)
    jobs, names = [], []
    for name, recipe in parity_recipes(models).items():
        path = work / "recipes" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        jobs.append((path, work / "mergekit" / name))
        names.append(name)
    run_mergekit(jobs)
    rows = {}
    for name, (recipe, theirs) in zip(names, jobs):
        ours = work / "ours" / name
        run_ours(recipe, ours)
        rows[name] = compare(ours, theirs)
    return rows


def main() -> int:
    """Print the parity table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: a temp folder, removed)")
    ap.add_argument("--layers", type=int, default=4)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = args.work or Path(tempfile.mkdtemp(prefix="parity-"))
    try:
        rows = run_all(work, args.layers)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{'recipe':24} {'max|diff|':>10}  {'tie ours/mk':>12}  tensor sets")
    ok = True
    for name, r in rows.items():
        same = not r["only_ours"] and not r["only_mergekit"]
        good = same and r["max_abs_diff"] <= TOLERANCE
        ok &= good
        print(f"{name:24} {r['max_abs_diff']:10.2e}  {str(r['tie_ours']):>5}/{str(r['tie_mergekit']):<6}  "
              f"{'same' if same else 'ours+' + str(r['only_ours']) + ' mk+' + str(r['only_mergekit'])}{'' if good else '  <-- FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
