"""Save one dare_ties build of the bench_trial SmolLM2 models, to compare two code trees entry by entry.

    PYTHONPATH=<tree A> python bench/compare_builds.py A.pt
    PYTHONPATH=<tree B> python bench/compare_builds.py B.pt
    python bench/compare_builds.py --diff A.pt B.pt      # entries that differ, and by how much

The models are bench_trial's (`python bench/bench_trial.py --setting smollm2` writes them under .cache/bench/trial).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1] / ".cache" / "bench" / "trial"


def build(out: str) -> None:
    """Merge the fixed dare_ties recipe into a live bf16 model and save its state dict."""
    from merge_core.live import build_live_model, merge_into
    from merge_core.recipe import parse_recipe
    from merge_core.sources import Sources

    recipe = parse_recipe({
        "merge_method": "dare_ties", "base_model": str(ROOT / "base"), "dtype": "float32", "evolve_merge": {"seed": 3},
        "models": [{"model": str(ROOT / "smollm2_noisy1"), "parameters": {"weight": 0.6, "density": 0.5}},
                   {"model": str(ROOT / "smollm2_noisy2"), "parameters": {"weight": 0.5, "density": 0.3}}],
    }, where="compare_builds")
    sources = Sources.open(recipe, check_finite=False)
    model = build_live_model(sources, "cpu", "bfloat16")
    merge_into(model, recipe, sources)
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, out)


def diff(a_path: str, b_path: str) -> None:
    """Print how many entries of two saved builds differ and the largest difference."""
    a, b = torch.load(a_path), torch.load(b_path)
    total = sum(v.numel() for v in a.values())
    differ = sum(int((a[k] != b[k]).sum()) for k in a)
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    print(f"{differ} of {total} entries differ ({differ / total:.2e}); largest difference {worst:.3g}")


if __name__ == "__main__":
    diff(sys.argv[2], sys.argv[3]) if sys.argv[1] == "--diff" else build(sys.argv[1])
