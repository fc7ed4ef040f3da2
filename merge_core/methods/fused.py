"""Fused kernels (torch.compile) for TIES / DARE merges: one pass over the sources per trim, one per combine.

The eager path (task_arithmetic.py) makes ~30 memory-bound elementwise passes per tensor and source; here the
magnitude trim is one compiled pass that counts and marks a narrow bracket around the k-th largest |delta| (the
exact cut is then found among the marked entries), and the sparsify + sign election + normalisation + cast into
the output is one compiled pass that never materialises a delta or a keep mask. A source's magnitude keep rule
(|d| > kth, or == kth up to the cut index) becomes one compare per entry by splitting the span at each cut
(|d| >= kth before it, |d| >= next float above kth after it); a DARE keep is `code < lim` on bf16 codes. Same keep
sets (largest magnitudes, ties at the cut to the lowest flat index), same DARE bits, same float32 operation order
and the same exact L1 rescale norms (l1.py) as the eager path, so results equal it bit for bit.

Used on CPU (and CUDA) for tensors of at least FUSED_MIN elements when torch.compile works; anything else (small
tensors, a failed compile) runs the eager path. MERGE_CORE_FUSED=0 turns it off, =1 also uses it for small tensors.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from merge_core.methods import compiled, cuts, l1
from merge_core.methods import sparsify as sp

SPAN = 1 << 24  # flat elements per kernel call: bounds the bool marks, and memory if a kernel ever ran uncompiled
SAMPLE = 1 << 17  # most values in the random sample that brackets the k-th magnitude
MARGIN = 4.5  # bracket half-width in standard deviations of the sample quantile: misses ~1 in 100,000 tensors

def _trim_pass(x: torch.Tensor, b: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mag = (x.float() - b.float()).abs()
    # uint8 marks: inductor stores them twice as fast as bool, and nonzero reads them as fast
    return (mag > hi).sum(), ((mag >= lo) & (mag <= hi)).to(torch.uint8)


def _combine_pass(
    b: torch.Tensor, xs: list[torch.Tensor], codes: list[torch.Tensor | None], lim: torch.Tensor,
    thr: torch.Tensor | None, coef: torch.Tensor, w: torch.Tensor, div: torch.Tensor, lam: torch.Tensor,
    consensus: bool, normalize: bool, scale_lam: bool, out: torch.Tensor,
) -> None:
    # the eager path's operations in its order (task_arithmetic.generalized_task_arithmetic), fused; a source is
    # kept where its DARE code is below lim, or (magnitude) where |delta| >= its threshold for this piece
    bf = b.float()
    ts = []
    for i, x in enumerate(xs):
        d = x.float() - bf
        if codes[i] is not None:
            d = torch.where(codes[i].float() < lim[i], d, 0.0)
        elif thr is not None:
            d = torch.where(d.abs() >= thr[i], d, 0.0)
        ts.append(d * coef[i])
    mixed = ts[0]
    for t in ts[1:]:
        mixed = mixed + t
    if consensus:
        # agree_i = sign(t_i) == majority, written as t_i * majority > 0 (fewer vector ops, the same truth values,
        # NaN and zeros included); the kept terms stay products, so zero signs are the eager path's
        majority = torch.where(mixed >= 0, 1.0, -1.0)
        agree = [t * majority > 0 for t in ts]
        mixed = ts[0] * agree[0].float()
        divisor = torch.where(agree[0], w[0], 0.0)  # w * agree but for the sign of a zero, which becomes 1 below
        for i in range(1, len(ts)):
            mixed = mixed + ts[i] * agree[i].float()
            divisor = divisor + torch.where(agree[i], w[i], 0.0)
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
        _KERNELS[name] = compiled.compile_kernel({"trim": _trim_pass, "combine": _combine_pass}[name])
    return _KERNELS[name]


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
        code, lim, norms = None, 0.0, None
        t, c = -1.0, n
        if sparsification == "magnitude":
            # the store knows the sources' own tensor objects (not views of them)
            hit = (store.magnitude_cut(tensors[m], tensors[base], density)
                   if store is not None and 0 < density < 1 else None)
            t, c = hit if hit is not None else _magnitude_cut(x, base_t, density)
        elif sparsification == "random" and density < 1:
            hit = (store.dare_codes(tensors[m], tensors[base], seeds[m], density, options["rescale"])
                   if store is not None and density > 0 else None)
            if hit is None:  # a drop code: kept where it is 0
                hit = (torch.logical_not(sp.bernoulli_mask((n,), density, seeds[m])).to(device=dev, dtype=cuts.CODE_DTYPE),
                       1.0, None)
            code, lim, norms = hit
        scale = None
        if sparsification is not None and density < 1 and options["rescale"]:
            before, after = norms if norms is not None else _l1_norms(x, base_t, code, lim, t, c)
            scale = l1.scale(before, after)
        kth.append(t)
        cut.append(c)
        codes.append(code)
        lims.append(lim)
        coef.append(w * (scale if scale is not None else 1.0))
    lam = float(options["lambda"])
    scalars = dict(
        lim=torch.tensor(lims, dtype=torch.float32, device=dev),
        coef=torch.tensor(coef, dtype=torch.float32, device=dev), w=torch.tensor(weights, dtype=torch.float32, device=dev),
        div=torch.tensor(div, dtype=torch.float32, device=dev), lam=torch.tensor(lam, dtype=torch.float32, device=dev),
        consensus=consensus == "sum", normalize=bool(options["normalize"]), scale_lam=lam != 1,
    )
    flat_out = out.view(-1)
    combine = _kernel("combine")
    for s, e in _spans(n):
        for lo, hi, thr in _pieces(s, e, kth, cut) if sparsification == "magnitude" else [(s, e, None)]:
            thr_t = torch.tensor(thr, dtype=torch.float32, device=dev) if thr is not None else None
            _run(combine, lo, hi, [base_t, *xs, *codes], flat_out, len(xs), thr=thr_t, **scalars)
    return out


def _run(kernel: Any, lo: int, hi: int, inputs: list[torch.Tensor | None], out: torch.Tensor, nsrc: int,
         **kwargs: Any) -> None:
    """The combine kernel over entries [lo, hi) of the flat inputs (base, sources, codes) into out."""
    if hi - lo >= 2:
        part, dst = [t[lo:hi] if t is not None else None for t in inputs], out[lo:hi]
    else:  # one entry: a length-1 call would make torch.compile specialise and recompile; run it on the entry twice
        part = [t[lo:hi].repeat(2) if t is not None else None for t in inputs]
        dst = torch.empty(2, dtype=out.dtype, device=out.device)
    kernel(part[0], part[1:1 + nsrc], part[1 + nsrc:], out=dst, **kwargs)
    if hi - lo < 2:
        out[lo:hi] = dst[:1]


def _strict(k: float) -> float:
    """The threshold t with |d| >= t exactly when |d| > k (float32); for k = +inf (keep nothing) NaN."""
    return math.nan if k == math.inf else float(np.nextafter(np.float32(k), np.float32(np.inf)))


def _pieces(s: int, e: int, kth: list[float], cut: list[int]) -> list[tuple[int, int, list[float]]]:
    """Pieces [lo, hi) of the span [s, e) with each source's threshold there: a source keeps |d| >= kth up to its
    cut index and |d| > kth after it, so splitting at every cut turns its tie rule into one compare per entry."""
    edges = [s, *sorted({c + 1 for c in cut if s < c + 1 < e}), e]
    return [(lo, hi, [k if hi - 1 <= c else _strict(k) for k, c in zip(kth, cut)]) for lo, hi in zip(edges, edges[1:])]


def _l1_norms(x: torch.Tensor, b: torch.Tensor, code: torch.Tensor | None, lim: float, kth: float,
              cut: int) -> tuple[float, float]:
    """Exact L1 norms (l1.py) of the whole delta and of its kept entries (code < lim, or the magnitude cut)."""
    if code is not None:
        bins = l1.sums(x, b, code=code, lim=lim)
    else:
        bins = sum(l1.sums(x[lo:hi], b[lo:hi], thr=thr[0]) for lo, hi, thr in _pieces(0, x.numel(), [kth], [cut]))
    return l1.value(bins), l1.value(bins[1])
