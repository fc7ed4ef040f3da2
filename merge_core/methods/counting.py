"""torch.bincount on all of torch's CPU threads: ATen's CPU bincount runs on one, and the per-search trims and the
exact L1 norms spend most of their time in it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

_POOLS: dict[int, ThreadPoolExecutor] = {}  # by worker count
MIN_SPLIT = 1 << 16  # entries below which one call is cheaper than handing halves to threads


def bincount(keys: torch.Tensor, bins: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Counts (or weight sums) of keys 0 .. bins - 1 on the CPU; keys >= bins are dropped. Sums of integer-valued
    float64 weights below 2^53 are exact, so splitting the keys between threads changes no result."""
    keys = keys.reshape(-1)
    weights = weights.reshape(-1) if weights is not None else None
    workers = torch.get_num_threads()
    if keys.device.type != "cpu" or workers < 2 or keys.numel() < MIN_SPLIT:
        return torch.bincount(keys, weights=weights, minlength=bins)[:bins].cpu()
    pool = _POOLS.get(workers) or _POOLS.setdefault(workers, ThreadPoolExecutor(workers, thread_name_prefix="bincount"))
    step = -(-keys.numel() // workers)

    def part(i: int) -> torch.Tensor:
        s = slice(i * step, (i + 1) * step)
        return torch.bincount(keys[s], weights=weights[s] if weights is not None else None, minlength=bins)[:bins]

    parts = list(pool.map(part, range(workers)))
    out = parts[0]
    for p in parts[1:]:
        out = out + p
    return out
