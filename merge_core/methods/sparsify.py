"""Sparsification of task vectors (mergekit 0.1.5 semantics) as keep-masks, built a row chunk at a time.

A delta is given as a callable `delta(rows) -> float32 tensor` over row slices (a fresh tensor on every call:
callers modify it in place), so big tensors (a 1B model's embedding) are never held whole in float32. DARE masks
come from seeded counter-like streams (one per block of entries), so chunking never changes their bits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from merge_core.methods import l1
from merge_core.methods.chunks import row_chunks

Delta = Callable[[slice], torch.Tensor]


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1)


def bracket_ranks(total: int, k: int, m: int, sigmas: float) -> tuple[int | None, int | None]:
    """Ranks in an ascending sample of m of `total` values that bracket the k-th largest value with `sigmas`
    standard deviations of the sample quantile's rank each side (None: no bound on that side)."""
    pos = (total - k) / total * m  # where the answer sits in the ascending sample
    q = min(max(pos / m, 0.0), 1.0)
    margin = 32 + sigmas * math.sqrt(m * q * (1 - q))
    return (int(pos - margin) if pos - margin >= 1 else None, int(pos + margin) if pos + margin < m - 1 else None)


def kth_largest(chunks: Callable[[], Iterator[torch.Tensor]], total: int, k: int) -> tuple[torch.Tensor, int, int]:
    """(the k-th largest value v of the chunks' elements, how many are > v, how many are == v), 1 <= k <= total.

    `chunks()` yields the values afresh on each call; a strided sample brackets the answer and only the
    values inside the bracket are selected exactly, so nothing of the tensor's size is sorted or kept.
    """
    step = max(1, total // (1 << 14))
    sample = torch.sort(_cat([_flat(c)[::step] for c in chunks()])).values
    lo_rank, hi_rank = bracket_ranks(total, k, sample.numel(), sigmas=6)
    lo = sample[lo_rank] if lo_rank is not None else None
    hi = sample[hi_rank] if hi_rank is not None else None
    while True:
        above, inside = 0, []
        for c in chunks():
            c = _flat(c)
            if lo is None and hi is None:
                inside.append(c)
                continue
            if hi is None:
                sel = c >= lo
            else:
                sel = c <= hi
                above += c.numel() - int(torch.count_nonzero(sel))
                if lo is not None:
                    sel.logical_and_(c >= lo)
            inside.append(c[sel])
        values = _cat(inside)
        need = k - above
        if 0 < need <= values.numel():
            kth = torch.kthvalue(values, values.numel() - need + 1).values
            return kth, above + int(torch.count_nonzero(values > kth)), int(torch.count_nonzero(values == kth))
        # the sample misjudged the bracket (rare): take everything on the side the answer lies
        lo, hi = (hi, None) if need <= 0 else (None, lo)


KEEP_WHOLE_CHUNKS = 4  # up to this many chunks (16M elements), a tensor's magnitudes are computed once and kept


def magnitude_mask(delta: Delta, shape: tuple[int, ...], density: float) -> torch.Tensor:
    """Keep the max(1, int(density * numel)) largest |delta| (TIES trim); ties at the cut go to the lowest flat index."""
    n = math.prod(shape)
    if density >= 1:
        return torch.ones(shape, dtype=torch.bool)
    if density <= 0 or n == 0:
        return torch.zeros(shape, dtype=torch.bool)
    k = max(1, int(density * n))
    slices = row_chunks(shape)
    if len(slices) <= KEEP_WHOLE_CHUNKS:
        whole = [delta(slice(None)).abs_()]
        chunks: Callable[[], Iterator[torch.Tensor]] = lambda: iter(whole)  # noqa: E731
    else:  # recomputing a chunk's magnitudes is cheaper than holding a big tensor's in float32
        chunks = lambda: (delta(s).abs_() for s in slices)  # noqa: E731
    kth, above, equal = kth_largest(chunks, n, k)
    need = k - above
    if equal == need:  # every value at the cut is kept: one comparison, no tie to break
        return _cat([mag >= kth for mag in chunks()]).reshape(shape)
    out = []
    # mergekit's argsort leaves the order of equal magnitudes unspecified; lowest flat index first is deterministic
    for mag in chunks():
        keep = mag > kth
        if need > 0:
            ties = torch.nonzero(_flat(mag == kth)).reshape(-1)[:need]
            _flat(keep)[ties] = True
            need -= ties.numel()
        out.append(keep)
    return _cat(out).reshape(shape)


def outlier_mask(delta: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """Drop the gamma share of largest entries, then the smallest, keeping `density` (breadcrumbs)."""
    if density >= 1:
        return torch.ones_like(delta, dtype=torch.bool)
    n = delta.numel()
    target = int(density * n)
    # fewer outliers are dropped when gamma + density would exceed the whole tensor
    n_bot = max(0, n - target - int(gamma * n))
    order = torch.sort(delta.abs().reshape(-1)).indices
    mask = torch.zeros(n, dtype=torch.bool, device=delta.device)
    mask[order[n_bot : n_bot + target]] = True
    return mask.reshape_as(delta)


MASK_BLOCK = 1 << 20  # flat entries per independently seeded random stream of a DARE mask


def _mask_block(seed: int, block: int, keep: np.ndarray, threshold: int) -> None:
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, block])))
    words = rng.integers(0, 2**64 - 1, size=(keep.size + 1) // 2, dtype=np.uint64, endpoint=True)
    np.less(words.view(np.uint32)[: keep.size], threshold, out=keep)


def bernoulli_mask(shape: tuple[int, ...], density: float, seed: int) -> torch.Tensor:
    """Keep each entry with probability `density` (DARE), reproducibly from `seed`: a CPU bool tensor.

    Each block of MASK_BLOCK flat entries draws uniform 32-bit numbers from its own PCG64 stream (numpy, seeded by
    (seed, block)) and keeps an entry when its number is below density * 2^32. So the bits do not depend on the
    device, the chunking or the thread count; blocks are drawn in parallel, each 2.5x faster than torch's CPU
    mt19937 `rand` (which made DARE masks the largest cost of a build).
    """
    n = math.prod(shape)
    if density >= 1:
        return torch.ones(shape, dtype=torch.bool)
    keep = torch.empty(n, dtype=torch.bool)
    flat = keep.numpy()
    threshold = np.uint32(min(max(int(density * 2.0**32), 0), 2**32 - 1))
    blocks = range(0, n, MASK_BLOCK)
    run_blocks(_mask_block, [(seed, i // MASK_BLOCK, flat[i : i + MASK_BLOCK], threshold) for i in blocks])
    return keep.reshape(shape)


def run_blocks(fn: Callable[..., None], jobs: list[tuple]) -> None:
    """fn(*job) for every job, on torch's thread count (numpy draws without the GIL): the seeded mask blocks."""
    workers = min(len(jobs), torch.get_num_threads())
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda job: fn(*job), jobs))
    else:
        for job in jobs:
            fn(*job)


def della_mask(delta: torch.Tensor, density: float, epsilon: float, generator: torch.Generator) -> torch.Tensor:
    """Keep entries with probability rising linearly with their magnitude rank in each row (DELLA)."""
    if density >= 1:
        return torch.ones_like(delta, dtype=torch.bool)
    if density <= 0:
        return torch.zeros_like(delta, dtype=torch.bool)
    if density + epsilon >= 1 or density - epsilon <= 0:
        raise ValueError(
            f"density {density} +/- epsilon {epsilon} leaves (0, 1); choose epsilon < min(density, 1 - density)"
        )
    rows = delta.unsqueeze(0) if delta.dim() < 2 else delta
    ranks = torch.argsort(rows.abs(), dim=1).argsort(dim=1).to(torch.float32) + 1
    lo = ranks.min(dim=1, keepdim=True).values
    hi = ranks.max(dim=1, keepdim=True).values
    # a one-column row has hi == lo; mergekit would draw from NaN there
    rank_norm = torch.nan_to_num((ranks - lo) / (hi - lo)).clamp(0, 1)
    probs = (density - epsilon) + rank_norm * 2 * epsilon
    keep = torch.bernoulli(probs.to(generator.device), generator=generator).to(delta.device).bool()
    return keep.reshape(delta.shape)


def l1_scale(delta: Delta, shape: tuple[int, ...], keep: torch.Tensor, eps: float = 1e-7) -> float | None:
    """Factor that gives the masked delta the whole delta's L1 norm (None when either norm is ~0).

    Both norms are exact sums (l1.py), the same floats the fused kernels and the per-search trims compute."""
    bins = sum(l1.sums(delta(s), None, code=torch.logical_not(keep[s]), lim=1.0) for s in row_chunks(shape))
    return l1.scale(l1.value(bins), l1.value(bins[1]), eps)
