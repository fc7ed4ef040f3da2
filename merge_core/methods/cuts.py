"""Exact trims for many densities at once: the TIES cut (k-th magnitude, last kept tie) and DARE draw codes.

Both answer, for every density of a list, exactly what fused._magnitude_cut and sparsify.bernoulli_mask answer for
one density, so a merge that looks its trim up here keeps the same entries as one that computes it afresh.

Magnitude cuts use a two-level radix histogram of the float32 bits of |x - b| (non-negative floats order like their
bit patterns): the top 19 bits locate each k-th value's bin, the low 12 bits of the entries in those bins give the
exact value and how many entries equal it; only where the cut splits a tie group is the flat index of the last kept
tie looked for, block by block. Three streaming passes per tensor and source, whatever the number of densities.

DARE codes: an entry is kept at density d when its uniform 32-bit draw u is below T(d) = int(d * 2^32); with the
sorted thresholds T_0 < T_1 < ... of the densities, code(u) = #{i: T_i <= u} (at most 255; kept as bf16 for the
kernels, see CODE_DTYPE), so the keep mask of density i is `code < i + 1`, the same bits as
bernoulli_mask(shape, d, seed) (same PCG64 streams per block).
"""

from __future__ import annotations

import numpy as np
import torch

from merge_core.methods import compiled, counting
from merge_core.methods import sparsify as sp

CODE_DTYPE = torch.bfloat16  # DARE codes as the kernels read them: inductor loads 8-bit vectors through a slow path
SPAN = 1 << 24  # flat elements per streamed span: bounds the int32 scratch
LOW = 12  # low bits of a magnitude resolved by the second histogram
NHI = 1 << (31 - LOW)  # bins of the first histogram (the sign bit of a magnitude is 0)
LOG_BLOCK = 16
BLOCK = 1 << LOG_BLOCK  # granularity at which the position of a tie is counted before it is searched


def _spans(n: int) -> list[tuple[int, int]]:
    return [(i, min(i + SPAN, n)) for i in range(0, n, SPAN)]


def _bits(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # the fused kernels' magnitude: float32(x) - float32(b), then abs (exact operations, same bits on any path)
    return (x.float() - b.float()).abs().view(torch.int32)


def _hi_keys(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _bits(x, b) >> LOW


def _low_keys(x: torch.Tensor, b: torch.Tensor, slot: torch.Tensor, dummy: torch.Tensor) -> torch.Tensor:
    # entries in a target bin: slot * 2^LOW + their low bits; the rest: one dummy key
    u = _bits(x, b)
    sl = slot[(u >> LOW).long()]
    return torch.where(sl >= 0, (sl << LOW) | (u & ((1 << LOW) - 1)), dummy)


def _tie_keys(x: torch.Tensor, b: torch.Tensor, slot: torch.Tensor, vals: torch.Tensor, start: torch.Tensor,
              nvals: torch.Tensor, dummy: torch.Tensor) -> torch.Tensor:
    # entries equal to a searched value: block * nvals + the value's slot; the rest: one dummy key
    u = _bits(x, b)
    sl = slot[(u >> LOW).long()]
    # block of each entry by a shift of an int32 position (an int64 floor division is a scalar loop in inductor)
    block = (torch.arange(u.numel(), device=u.device, dtype=torch.int32) + start) >> LOG_BLOCK
    return torch.where(vals[sl.long()] == u, block * nvals + sl, dummy)


def _count(keys: torch.Tensor, bins: int) -> torch.Tensor:
    # counted where the keys are (CUDA has bincount too); the dummy key (== bins) is dropped
    return counting.bincount(keys, bins)


def _top_index(counts: torch.Tensor, ranks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each rank r (1-based, from the largest): the bin holding it and how many entries lie in higher bins."""
    at_or_above = counts.flip(0).cumsum(0).flip(0)  # at_or_above[i] = entries in bins >= i
    where = torch.searchsorted(-at_or_above, -ranks, right=True) - 1
    above = torch.where(where + 1 < counts.numel(), at_or_above[(where + 1).clamp(max=counts.numel() - 1)], 0)
    return where, above


def magnitude_cuts(x: torch.Tensor, b: torch.Tensor, ks: list[int]) -> tuple[list[float], list[int]]:
    """For each k (1 <= k < n): (kth, cut) such that |d| > kth, or |d| == kth at flat index <= cut, keeps exactly
    the k largest |x - b|, ties at the cut to the lowest flat index (cut = n when the whole tie group is kept)."""
    x, b = x.reshape(-1), b.reshape(-1)
    n, dev = x.numel(), x.device
    if not ks:
        return [], []
    hist = torch.zeros(NHI, dtype=torch.int64)
    for s, e in _spans(n):
        hist += _count(compiled.or_eager(_hi_keys)(x[s:e], b[s:e]), NHI)
    hi, above_hi = _top_index(hist, torch.tensor(ks, dtype=torch.int64))
    bins = torch.unique(hi)
    slot = torch.full((NHI,), -1, dtype=torch.int32)
    slot[bins] = torch.arange(bins.numel(), dtype=torch.int32)
    nlow = bins.numel() << LOW
    low = torch.zeros(nlow, dtype=torch.int64)
    slot_d, dummy = slot.to(dev), torch.tensor(nlow, dtype=torch.int32, device=dev)
    for s, e in _spans(n):
        low += _count(compiled.or_eager(_low_keys)(x[s:e], b[s:e], slot_d, dummy), nlow)
    # second level, all ks at once: each k's bin row of low-bit counts, its rank r inside the bin from the top
    rows = low.view(bins.numel(), 1 << LOW)[slot[hi].long()]
    at_or_above = rows.flip(1).cumsum(1).flip(1)
    rank = torch.tensor(ks, dtype=torch.int64) - above_hi
    lo = torch.searchsorted(-at_or_above, -rank[:, None], right=True).reshape(-1) - 1
    nxt = (lo + 1).clamp(max=(1 << LOW) - 1)[:, None]
    above_lo = torch.where(lo + 1 < 1 << LOW, at_or_above.gather(1, nxt).reshape(-1), 0)
    equal = rows.gather(1, lo[:, None]).reshape(-1)
    need = rank - above_lo  # entries equal to the k-th value that are kept (1 <= need <= equal)
    bits = (hi << LOW) | lo
    kth = bits.to(torch.int32).view(torch.float32).tolist()
    cut = [n] * len(ks)
    pending = [(i, b_, nd) for i, (b_, nd, eq) in enumerate(zip(bits.tolist(), need.tolist(), equal.tolist())) if nd < eq]
    if pending:
        _tie_indices(x, b, pending, cut)
    return kth, cut


def _tie_indices(x: torch.Tensor, b: torch.Tensor, pending: list[tuple[int, int, int]], cut: list[int]) -> None:
    """cut[i] = flat index of the need-th entry whose magnitude bits equal `bits`, for each (i, bits, need)."""
    n, dev = x.numel(), x.device
    while pending:
        # one value per first-level bin per round (values sharing a bin, rare, wait for the next round)
        by_bin: dict[int, int] = {}
        for _, bits, _ in pending:
            by_bin.setdefault(bits >> LOW, bits)
        values = sorted(set(by_bin.values()))
        now = [p for p in pending if p[1] in values]
        pending = [p for p in pending if p[1] not in values]
        nv = len(values)
        vals = torch.tensor(values + [-1], dtype=torch.int32, device=dev)
        slot = torch.full((NHI,), nv, dtype=torch.int32)
        slot[torch.tensor([v >> LOW for v in values])] = torch.arange(nv, dtype=torch.int32)
        slot = slot.to(dev)
        seen = [0] * nv
        todo = {v: sorted((need, i) for i, bits, need in now if bits == v) for v in values}
        for s, e in _spans(n):
            if not any(todo.values()):
                break
            nblocks = -(-(e - s) // BLOCK)
            dummy = torch.tensor(nblocks * nv, dtype=torch.int32, device=dev)
            keys = compiled.or_eager(_tie_keys)(x[s:e], b[s:e], slot, vals, torch.tensor(0, dtype=torch.int32, device=dev),
                                      torch.tensor(nv, dtype=torch.int32, device=dev), dummy)
            per_block = _count(keys, nblocks * nv).view(nblocks, nv)
            u = None  # the span's magnitude bits, computed once if some tie lies in it
            for j, v in enumerate(values):
                running = seen[j] + per_block[:, j].cumsum(0)
                while todo[v] and todo[v][0][0] <= int(running[-1]):
                    need, i = todo[v].pop(0)
                    blk = int(torch.searchsorted(running, torch.tensor(need)))
                    before = int(running[blk - 1]) if blk else seen[j]
                    if u is None:
                        u = compiled.or_eager(_bits)(x[s:e], b[s:e])
                    local = torch.nonzero(u[blk * BLOCK:(blk + 1) * BLOCK] == v).reshape(-1)
                    cut[i] = s + blk * BLOCK + int(local[need - before - 1])
                seen[j] = int(running[-1])


def thresholds(densities: list[float]) -> list[int]:
    """bernoulli_mask's uint32 threshold of each density (keep when the draw is below it)."""
    return [min(max(int(d * 2.0**32), 0), 2**32 - 1) for d in densities]


WIDE = 22  # draws are bucketed by their top 32 - WIDE bits; a bucket may hold at most two thresholds


def _tables(ts: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # code(u) = (thresholds below u's bucket) + (u >= first threshold in it) + (u >= second threshold in it)
    nb = 1 << (32 - WIDE)
    base = np.zeros(nb, dtype=np.uint8)
    first = np.full(nb, 1 << 32, dtype=np.int64)
    second = np.full(nb, 1 << 32, dtype=np.int64)
    arr = np.array(ts, dtype=np.int64)
    for bucket in range(nb):
        base[bucket] = int(np.count_nonzero(arr < (bucket << WIDE)))
    for t in ts:
        bucket = t >> WIDE
        if first[bucket] == 1 << 32:
            first[bucket] = t
        elif second[bucket] == 1 << 32:
            second[bucket] = t
        else:
            raise ValueError(f"more than two DARE thresholds within 2^{WIDE} of each other: {ts}")
    return base, first, second


def _code_block(seed: int, block: int, out: np.ndarray, tables: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, block])))
    # the same draws as sparsify._mask_block
    words = rng.integers(0, 2**64 - 1, size=(out.size + 1) // 2, dtype=np.uint64, endpoint=True)
    u = words.view(np.uint32)[: out.size]
    bucket = u >> WIDE
    base, first, second = tables
    code = base[bucket]
    code += u >= first[bucket]
    code += u >= second[bucket]
    out[:] = code


def dare_codes(n: int, seed: int, ts: list[int], out: np.ndarray | None = None) -> np.ndarray:
    """One byte per entry: how many of the sorted thresholds `ts` (at most 255) its draw is at or above."""
    if len(ts) > 255 or ts != sorted(set(ts)):
        raise ValueError("thresholds must be at most 255 distinct values, ascending")
    out = np.empty(n, dtype=np.uint8) if out is None else out
    tables = _tables(ts)
    sp.run_blocks(_code_block, [(seed, i // sp.MASK_BLOCK, out[i:i + sp.MASK_BLOCK], tables)
                                for i in range(0, n, sp.MASK_BLOCK)])
    return out


def near(values: list[float], eps: float = 1e-12) -> list[float]:
    """Each value and its neighbours a relative eps away: densities that reach a recipe through float arithmetic
    (an Optuna step, a gradient's interpolation) can sit an ulp off the grid point and floor to a neighbour."""
    return sorted({v * f for v in values for f in (1 - eps, 1.0, 1 + eps)})


def ks_for(n: int, densities: list[float]) -> list[int]:
    """The kept counts max(1, int(d * n)) of the densities below 1 (distinct, ascending)."""
    return sorted({max(1, int(d * n)) for d in densities if 0 < d < 1})
