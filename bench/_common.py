"""Shared pieces of the build and memory benchmarks: model sizes, cached checkpoints, recipes, a table printer."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# Exact shapes of the real models (random weights); bf16 like the released checkpoints.
SIZES: dict[str, dict] = {
    "llama1b": dict(layers=16, hidden=2048, intermediate=8192, heads=32, kv_heads=8, vocab=128256),
    "smollm2": dict(layers=30, hidden=576, intermediate=1536, heads=9, kv_heads=3, vocab=49152),
}
METHODS = ("linear", "task_arithmetic", "ties", "dare_ties")
NOISE = 0.002  # fine-tune-like: small offsets from the base
MERGEKIT_PYTHON = os.environ.get("EVOLVE_MERGEKIT_PYTHON", "/opt/mkvenv/bin/python")


def ensure_models(cache: Path, size: str) -> dict[str, Path]:
    """Base plus two fine-tune-like variants of `size`, written once under cache/size (reused if complete)."""
    from merge_core.synthetic import make_checkpoint

    shape = SIZES[size]
    folder = cache / f"synthetic-{size}"  # bench_evaluator keeps real models under cache/SIZE
    paths = {name: folder / name for name in ("base", "ft1", "ft2")}
    need = 3 * _bytes(shape) * 1.05
    missing = [p for p in paths.values() if not (p / "config.json").exists()]
    if missing:
        free = shutil.disk_usage(folder.parent if folder.parent.exists() else Path.cwd()).free
        if free < need:
            raise SystemExit(f"{folder}: need ~{need / 2**30:.1f} GiB free disk for the checkpoints, have {free / 2**30:.1f}")
    for i, (name, path) in enumerate(paths.items()):
        if (path / "config.json").exists():
            continue
        shutil.rmtree(path, ignore_errors=True)
        print(f"writing {path} ...", flush=True)
        # config.json is written last, so its presence marks a complete checkpoint
        if name == "base":
            make_checkpoint(path, seed=0, dtype=torch.bfloat16, tied=True, tokenizer=False, shard_size=1 << 30, **shape)
        else:
            make_checkpoint(path, like=paths["base"], noise=NOISE, seed=i, dtype=torch.bfloat16, tokenizer=False, shard_size=1 << 30)
    return paths


def _bytes(shape: dict) -> int:
    h, i, v, n = shape["hidden"], shape["intermediate"], shape["vocab"], shape["layers"]
    kv = shape["kv_heads"] * h // shape["heads"]
    per_layer = 2 * h * h + 2 * kv * h + 3 * h * i + 2 * h
    return 2 * (v * h + n * per_layer + h)


def folder_bytes(path: Path) -> int:
    """Total size of the safetensors files in a model folder."""
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


def recipe_dict(method: str, paths: dict[str, Path], layers: int, out_dtype: str = "bfloat16", trial: int = 0) -> dict:
    """A recipe with per-layer gradients (one value per layer) for weight and, where used, density.

    Densities lie on the search's grid (multiples of 0.01, like the genome's Optuna step); `trial` shifts them by
    0.01 per trial, so successive "trials" differ as a search's do."""
    def ramp(lo: float, hi: float, digits: int = 4) -> list[float]:
        return [round(lo + (hi - lo) * i / max(1, layers - 1), digits) for i in range(layers)]

    sparse = method in ("ties", "dare_ties")
    models = []
    for name, (lo, hi) in (("ft1", (0.3, 0.7)), ("ft2", (0.7, 0.3))):
        params: dict = {"weight": ramp(lo, hi)}
        if sparse:
            params["density"] = ramp(0.4 + 0.01 * trial, 0.8 - 0.01 * trial, digits=2)
        models.append({"model": str(paths[name]), "parameters": params})
    data: dict = {"merge_method": method, "dtype": "float32", "out_dtype": out_dtype}
    if method == "linear":
        models.insert(0, {"model": str(paths["base"]), "parameters": {"weight": ramp(0.2, 0.4)}})
    else:
        data["base_model"] = str(paths["base"])
    data["models"] = models
    if method == "dare_ties":
        data["evolve_merge"] = {"seed": 1234}
    return data


def rss_now() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in bytes."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, val = line.split(":")
            out[key] = int(val.split()[0]) * 1024
    return out["VmRSS"], out["VmHWM"]


def print_table(header: list[str], rows: list[list[str]]) -> str:
    """Print (and return) a Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def load_line() -> str:
    """The 1/5/15-minute load averages (other jobs share the CPU)."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])
