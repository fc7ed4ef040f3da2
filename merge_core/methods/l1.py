"""Exact L1 norms of (masked) task vectors: magnitudes summed without rounding, so every path gets the same bits.

DARE's rescale (and TIES' with `rescale: true`) multiplies a source's kept delta by L1(delta) / L1(kept delta). The
per-search trims know every grid density's kept L1 norm from one pass (a sum per draw code), and a trial that looks
it up must get the very float a single merge computes, whatever order either summed in. So both sum exactly: a
float32 magnitude is m * 2^(e - 150) (m its 24-bit significand, e its biased exponent, 1 for subnormals); the m are
summed per (group, e) by bincount (exact in float64 for spans of at most 2^24 entries, then in int64), and the 256
exponent sums are combined in Python integers and rounded once to a double.
"""

from __future__ import annotations

import torch

from merge_core.methods import compiled, counting

EXPONENTS = 256
SPAN = 1 << 20  # entries per bincount call: its int32 keys and float64 significands stay in cache
_MANTISSA = (1 << 23) - 1


def _keys(x: torch.Tensor, b: torch.Tensor | None, code: torch.Tensor | None, lim: torch.Tensor, thr: torch.Tensor,
          mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    # key = group * 256 + exponent; group: "code" the code itself, "lim" 1 where code < lim, "thr" 1 where
    # |delta| >= thr, "all" none
    mag = (x.float() - b.float()).abs() if b is not None else x.float().abs()
    u = mag.view(torch.int32)
    e = u >> 23
    m = torch.where(e > 0, (u & _MANTISSA) | (1 << 23), u & _MANTISSA)
    key = torch.clamp(e, min=1)
    if mode == "code":
        key = key + code.to(torch.int32) * EXPONENTS
    elif mode == "lim":
        key = key + (code.float() < lim).to(torch.int32) * EXPONENTS
    elif mode == "thr":
        key = key + (mag >= thr).to(torch.int32) * EXPONENTS
    return key, m.to(torch.float64)


def sums(x: torch.Tensor, b: torch.Tensor | None, code: torch.Tensor | None = None, lim: float | None = None,
         thr: float | None = None, groups: int | None = None) -> torch.Tensor:
    """Exact significand sums of |float(x) - float(b)| (|x| without b) per (group, exponent): an int64 (groups, 256)
    tensor.

    Groups: with `groups`, each entry's code (0 .. groups - 1); with a code and `lim`, 0 = dropped and 1 = kept
    (code < lim); with `thr`, kept where |delta| >= thr; otherwise one group of every entry."""
    mode = "code" if groups is not None else "lim" if code is not None else "thr" if thr is not None else "all"
    ngroups = groups if groups is not None else 1 if mode == "all" else 2
    x, b = x.reshape(-1), b.reshape(-1) if b is not None else None
    code = code.reshape(-1) if code is not None else None
    n, dev = x.numel(), x.device
    lim_t = torch.tensor(lim or 0.0, dtype=torch.float32, device=dev)
    thr_t = torch.tensor(thr if thr is not None else 0.0, dtype=torch.float32, device=dev)
    bins = ngroups * EXPONENTS
    total = torch.zeros(bins, dtype=torch.int64)
    for s in range(0, n, SPAN):
        e = min(s + SPAN, n)
        args = (x[s:e], b[s:e] if b is not None else None, code[s:e] if code is not None else None, lim_t, thr_t, mode)
        # compiled where it can be (a length-1 span would only make torch.compile specialise); exact either way
        key, m = compiled.or_eager(_keys)(*args) if e - s >= 2 and dev.type in compiled.DEVICES else _keys(*args)
        # float64 sums of at most 2^24 significands below 2^24 are exact integers
        total += counting.bincount(key, bins, weights=m).to(torch.int64)
    return total.view(ngroups, EXPONENTS)


def value(bins: torch.Tensor) -> float:
    """The exact sum that per-exponent significand sums stand for, rounded once to a double (inf if non-finite)."""
    bins = bins.reshape(-1, EXPONENTS).sum(0).tolist()
    if bins[EXPONENTS - 1]:
        return float("inf")
    return sum(int(s) << e for e, s in enumerate(bins) if s) / (1 << 150)


def scale(before: float, after: float, eps: float = 1e-7) -> float | None:
    """Factor giving the kept delta the whole delta's L1 norm (None when either norm is ~0), as sp.l1_scale."""
    if before < eps or after < eps:
        return None
    return before / after
