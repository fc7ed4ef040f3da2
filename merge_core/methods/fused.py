"""Fused CPU kernels (torch.compile) for TIES / DARE merges: one pass over the sources per trim, one per combine.

The eager path (task_arithmetic.py) makes ~30 memory-bound elementwise passes per tensor and source; here the
magnitude trim is one compiled pass that counts and marks a narrow bracket around the k-th largest |delta| (the
exact cut is then found among the marked entries), and the sparsify + sign election + normalisation + cast into
the output is one compiled pass that never materialises a delta or a keep mask. Same keep sets (largest
magnitudes, ties at the cut to the lowest flat index), same DARE bits, same float32 operation order as the eager
path, so results match it up to float32 rounding of the L1 rescale sums.

Used on CPU for tensors of at least FUSED_MIN elements when a C++ compiler works; anything else (CUDA, small
tensors, a failed compile) runs the eager path. MERGE_CORE_FUSED=0 turns it off, =1 also uses it for small tensors.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from merge_core.methods import compiled
from merge_core.methods import sparsify as sp

SPAN = 1 << 24  # flat elements per kernel call: bounds the bool marks, and memory if a kernel ever ran uncompiled
SAMPLE = 1 << 17  # most values in the random sample that brackets the k-th magnitude
MARGIN = 4.5  # bracket half-width in standard deviations of the sample quantile: misses ~1 in 100,000 tensors

def _trim_pass(x: torch.Tensor, b: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mag = (x.float() - b.float()).abs()
    # uint8 marks: inductor stores them twice as fast as bool, and nonzero reads them as fast
    return (mag > hi).sum(), ((mag >= lo) & (mag <= hi)).to(torch.uint8)


def _keep(x: torch.Tensor, bf: torch.Tensor, code: torch.Tensor | None, lim: torch.Tensor, kth: torch.Tensor,
          cut: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    d = x.float() - bf
    mag = d.abs()
    keep = (mag > kth) | ((mag == kth) & (idx <= cut))
    # DARE: kept where the entry's uint8 code is below lim (a drop mask with lim 1, or precomputed grid codes)
    return d, keep if code is None else keep & (code < lim)


def _l1_pass(x: torch.Tensor, b: torch.Tensor, code: torch.Tensor | None, lim: torch.Tensor, kth: torch.Tensor,
             cut: torch.Tensor, start: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    d, keep = _keep(x, b.float(), code, lim, kth, cut, torch.arange(b.numel(), device=b.device, dtype=start.dtype) + start)
    mag = d.abs()
    # float32 sums per span (like the eager path's per chunk), totals in double: float64 sums cost 20 % more
    return mag.sum(), torch.where(keep, mag, 0.0).sum()


def _combine_pass(
    b: torch.Tensor, xs: list[torch.Tensor], codes: list[torch.Tensor | None], lim: torch.Tensor, kth: torch.Tensor,
    cut: torch.Tensor, coef: torch.Tensor, w: torch.Tensor, start: torch.Tensor, div: torch.Tensor, lam: torch.Tensor,
    consensus: bool, normalize: bool, scale_lam: bool, out: torch.Tensor,
) -> None:
    # the eager path's operations in its order (task_arithmetic.generalized_task_arithmetic), fused
    bf = b.float()
    idx = torch.arange(b.numel(), device=b.device, dtype=start.dtype) + start
    ts = []
    for i, x in enumerate(xs):
        d, keep = _keep(x, bf, codes[i], lim[i], kth[i], cut[i], idx)
        ts.append(torch.where(keep, d, 0.0) * coef[i])
    mixed = ts[0]
    for t in ts[1:]:
        mixed = mixed + t
    if consensus:
        majority = torch.where(mixed >= 0, 1.0, -1.0)
        agree = torch.sign(ts[0]) == majority
        mixed = ts[0] * agree
        divisor = agree * w[0]
        for i, t in enumerate(ts[1:], 1):
            agree = torch.sign(t) == majority
            mixed = mixed + t * agree
            divisor = divisor + agree * w[i]
        divisor = torch.where(divisor == 0, 1.0, divisor)
    else:
        divisor = div
    if normalize:
        mixed = mixed / divisor
    if scale_lam:
        mixed = mixed * lam
    out.copy_(mixed + bf)


_KERNELS: dict[str, Any] = {}


def _kernel(name: str) -> Any:
    if name not in _KERNELS:
        _KERNELS[name] = compiled.compile_kernel({"trim": _trim_pass, "l1": _l1_pass, "combine": _combine_pass}[name])
    return _KERNELS[name]


def _index_dtype(n: int) -> torch.dtype:
    # flat indices (and the tie cut, at most n) in int32 when they fit: twice the vector lanes of int64
    return torch.int32 if n < 2**31 - 1 else torch.int64


def _spans(n: int) -> list[tuple[int, int]]:
    return [(i, min(i + SPAN, n)) for i in range(0, n, SPAN)]


def _marked(marks: torch.Tensor) -> torch.Tensor:
    """Ascending flat indices of the nonzero uint8 marks; scans them 8 at a time (few are marked)."""
    whole = marks.numel() // 8 * 8
    words = torch.nonzero(marks[:whole].view(torch.int64)).reshape(-1)
    rows, cols = torch.nonzero(marks[:whole].view(-1, 8)[words], as_tuple=True)
    return torch.cat([words[rows] * 8 + cols, torch.nonzero(marks[whole:]).reshape(-1) + whole])


def _magnitude_cut(x: torch.Tensor, b: torch.Tensor, density: float) -> tuple[float, int]:
    """(kth, cut) such that keeping |d| > kth, or |d| == kth at flat index <= cut, keeps exactly the
    max(1, int(density * n)) largest magnitudes, ties at the cut going to the lowest flat index."""
    n = x.numel()
    if density >= 1:
        return -1.0, n
    if density <= 0:
        return math.inf, -1
    k = max(1, int(density * n))
    # sample work grows with its size m, the bracket (and the work inside it) shrinks as n / sqrt(m): m ~ n^(2/3);
    # positions drawn at random (fixed seed), since a stride can alias with the rows' structure and bias the sample
    m = min(n, SAMPLE, max(1 << 12, int(n ** (2 / 3))))
    at = torch.randint(0, n, (m,), generator=torch.Generator().manual_seed(n)).to(x.device)
    sample = (x[at].float() - b[at].float()).abs()
    # a miss of the bracket costs one wider pass, never a wrong answer
    lo_rank, hi_rank = sp.bracket_ranks(n, k, m, sigmas=MARGIN)
    # two selections instead of a sort: torch.sort of the sample cost more than the whole pass on small tensors
    lo = float(torch.kthvalue(sample, lo_rank + 1).values) if lo_rank is not None else -1.0
    hi = float(torch.kthvalue(sample, hi_rank + 1).values) if hi_rank is not None else math.inf
    trim = _kernel("trim")
    while True:
        above, idx = 0, []
        lo_t, hi_t = torch.tensor(lo, device=x.device), torch.tensor(hi, device=x.device)
        for s, e in _spans(n):
            count, marked = trim(x[s:e], b[s:e], lo_t, hi_t)
            above += int(count)
            idx.append(_marked(marked).add_(s))
        where = torch.cat(idx)
        need = k - above
        if lo == hi and 0 < need <= where.numel():
            # every marked entry equals the one bracket value (e.g. a source tensor equal to the base: all zeros)
            return lo, int(where[need - 1]) if need < where.numel() else n
        values = (x[where].float() - b[where].float()).abs()
        if 0 < need <= values.numel():
            kth = torch.kthvalue(values, values.numel() - need + 1).values
            need -= int(torch.count_nonzero(values > kth))
            ties = where[values == kth]  # ascending flat indices
            return float(kth), int(ties[need - 1]) if need < ties.numel() else n
        lo, hi = (hi, math.inf) if need <= 0 else (-1.0, lo)  # the sample misjudged the bracket (rare)


def merge(
    tensors: dict[str, torch.Tensor], base: str, others: list[str], params: dict[str, dict[str, Any]],
    weights: list[float], options: dict[str, Any], sparsification: str | None, consensus: str | None,
    seeds: dict[str, int], div: float, out: torch.Tensor,
) -> torch.Tensor:
    """The task-arithmetic family for magnitude / random / no sparsification with or without TIES consensus.

    Inside a search (precomputed.active) each trim is looked up from the per-search grid tables; off the grid, or
    outside a search, it is computed here. Either way the kernels see the same cut and the same keep codes.
    """
    from merge_core.methods import precomputed

    store = precomputed.current()
    base_t = tensors[base].reshape(-1)
    xs = [tensors[m].reshape(-1) for m in others]
    n, dev = base_t.numel(), base_t.device
    kth, cut, codes, lims, coef = [], [], [], [], []
    for m, x, w in zip(others, xs, weights):
        density = float(params[m].get("density", 1.0))
        code, lim = None, 0
        if sparsification == "magnitude":
            # the store knows the sources' own tensor objects (not views of them)
            hit = (store.magnitude_cut(tensors[m], tensors[base], density)
                   if store is not None and 0 < density < 1 else None)
            t, c = hit if hit is not None else _magnitude_cut(x, base_t, density)
        else:
            t, c = -1.0, n
            if sparsification == "random" and density < 1:
                hit = store.dare_codes(n, seeds[m], density, dev) if store is not None and density > 0 else None
                if hit is None:  # a drop mask: kept where the code is 0
                    hit = (torch.logical_not(sp.bernoulli_mask((n,), density, seeds[m])).view(torch.uint8).to(dev), 1)
                code, lim = hit
        scale = None
        if sparsification is not None and density < 1 and options["rescale"]:
            scale = _l1_scale(x, base_t, code, lim, t, c)
        kth.append(t)
        cut.append(c)
        codes.append(code)
        lims.append(lim)
        coef.append(w * (scale if scale is not None else 1.0))
    lam = float(options["lambda"])
    scalars = dict(
        lim=torch.tensor(lims, dtype=torch.uint8, device=dev),
        kth=torch.tensor(kth, dtype=torch.float32, device=dev), cut=torch.tensor(cut, dtype=_index_dtype(n), device=dev),
        coef=torch.tensor(coef, dtype=torch.float32, device=dev), w=torch.tensor(weights, dtype=torch.float32, device=dev),
        div=torch.tensor(div, dtype=torch.float32, device=dev), lam=torch.tensor(lam, dtype=torch.float32, device=dev),
        consensus=consensus == "sum", normalize=bool(options["normalize"]), scale_lam=lam != 1,
    )
    flat_out = out.view(-1)
    combine = _kernel("combine")
    for s, e in _spans(n):
        combine(base_t[s:e], [x[s:e] for x in xs], [cd[s:e] if cd is not None else None for cd in codes],
                start=torch.tensor(s, dtype=_index_dtype(n), device=dev), out=flat_out[s:e], **scalars)
    return out


def _l1_scale(x: torch.Tensor, b: torch.Tensor, code: torch.Tensor | None, lim: int, kth: float, cut: int,
              eps: float = 1e-7) -> float | None:
    """Factor that gives the kept delta the whole delta's L1 norm (None when either norm is ~0), as sp.l1_scale."""
    l1 = _kernel("l1")
    dev = x.device
    idx_dtype = _index_dtype(x.numel())
    kth_t, cut_t = torch.tensor(kth, dtype=torch.float32, device=dev), torch.tensor(cut, dtype=idx_dtype, device=dev)
    lim_t = torch.tensor(lim, dtype=torch.uint8, device=dev)
    before = after = 0.0
    for s, e in _spans(x.numel()):
        tb, ta = l1(x[s:e], b[s:e], code[s:e] if code is not None else None, lim_t, kth_t, cut_t,
                    torch.tensor(s, dtype=idx_dtype, device=dev))
        before += float(tb)
        after += float(ta)
    if before < eps or after < eps:
        return None
    return before / after
