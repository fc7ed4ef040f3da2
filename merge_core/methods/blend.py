"""One compiled pass for a weighted sum of tensors (linear, dense task_arithmetic): each input read once, out written once.

The eager weighted sum (basic.linear, task_arithmetic._weighted_sum) computes, a row chunk at a time,
`acc = x0 * c0` and then `acc.add_(x_i, alpha=c_i)`, which ATen's CPU and CUDA kernels evaluate as the fused
multiply-add fma(x_i, c_i, acc) in float32. Inductor writes `x * c + acc` as a multiply and an add; on CPU it
compiles with -ffp-contract=off by default, which would round twice and change ~25 % of float32 results by an ulp.
This kernel is compiled with contraction allowed, so the compiler emits the same FMAs, and every compiled variant
(input count, dtypes, device) is checked once against the eager formula on a probe before it is trusted: a variant
that does not reproduce the eager bits (another compiler, another backend) is never used and its merges stay eager.
The result is the eager path's bits: same float32 operation order, same rounding into the output dtype.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from merge_core.methods import compiled

log = logging.getLogger(__name__)

PROBE = 4096 + 15  # probe length: the vector body and the longest tail (AVX-512: 16 floats)
_VERIFIED: dict[tuple, bool] = {}  # variant -> whether its compiled kernel reproduced the eager bits
_KERNEL: list[Any] = []


def _wsum(xs: list[torch.Tensor], coef: torch.Tensor, out: torch.Tensor) -> None:
    # max(p, -inf) == p for every float (NaN too), but it is no multiply: the compiler cannot fuse x0 * c0 into the
    # next add, so each `x_i * c_i + acc` below has one contraction, fma(x_i, c_i, acc), as ATen's add(alpha=)
    acc = torch.maximum(xs[0].float() * coef[0], torch.tensor(-math.inf, device=out.device))
    for i in range(1, len(xs)):
        acc = xs[i].float() * coef[i] + acc
    out.copy_(acc)


def _kernel() -> Any:
    if not _KERNEL:
        _KERNEL.append(compiled.compile_kernel(_wsum, inductor={"cpp.enable_floating_point_contract_flag": "fast"}))
    return _KERNEL[0]


def eager(xs: list[torch.Tensor], coefs: list[float], out: torch.Tensor) -> torch.Tensor:
    """The reference weighted sum over whole flat tensors: x0 * c0, then add_(x_i, alpha=c_i), cast into out."""
    acc = xs[0].to(torch.float32, copy=True).mul_(coefs[0])
    for x, c in zip(xs[1:], coefs[1:]):
        acc.add_(x, alpha=c)
    return out.copy_(acc)


def _probe(xs: list[torch.Tensor], out: torch.Tensor) -> tuple[list[torch.Tensor], list[float]]:
    """Inputs like xs whose every entry rounds differently with and without FMAs (vector body and tail)."""
    gen = torch.Generator().manual_seed(len(xs))
    coefs = [0.37 - 0.21 * i for i in range(len(xs))]
    want = PROBE
    picked: list[list[torch.Tensor]] = [[] for _ in xs]
    for _ in range(256):  # bf16 outputs hide most one-ulp float32 differences: a few hundred rounds at worst
        if want <= 0:
            break
        base = torch.randn(4 * PROBE, generator=gen)
        cand = [(base + 0.01 * (i + 1) * torch.randn(4 * PROBE, generator=gen)).to(x.dtype) for i, x in enumerate(xs)]
        fma = eager(cand, coefs, torch.empty(4 * PROBE, dtype=out.dtype))
        plain = cand[0].float() * coefs[0]
        for x, c in zip(cand[1:], coefs[1:]):
            plain = x.float() * c + plain  # two roundings per term
        sensitive = torch.nonzero(fma != plain.to(out.dtype)).reshape(-1)[:want]
        for i, x in enumerate(cand):
            picked[i].append(x[sensitive])
        want -= sensitive.numel()
    if want > 0:  # not enough sensitive entries: fill with plain ones (the probe still checks those)
        fill = torch.randn(want, generator=gen)
        for i, x in enumerate(xs):
            picked[i].append((fill + 0.01 * (i + 1) * torch.randn(want, generator=gen)).to(x.dtype))
    return [torch.cat(p).to(x.device) for p, x in zip(picked, xs)], coefs


def _verified(key: tuple, xs: list[torch.Tensor], out: torch.Tensor) -> bool:
    if key not in _VERIFIED:
        probe, coefs = _probe(xs, out)
        want = eager(probe, coefs, torch.empty(PROBE, dtype=out.dtype, device=out.device))
        got = torch.empty_like(want)
        _kernel()(probe, torch.tensor(coefs, dtype=torch.float32, device=out.device), got)
        _VERIFIED[key] = bool(torch.equal(got, want))
        if not _VERIFIED[key]:
            log.warning("compiled weighted sum differs from the eager one for %s; those merges stay eager", key)
    return _VERIFIED[key]


def weighted_sum(xs: list[torch.Tensor], coefs: list[float], out: torch.Tensor) -> bool:
    """Write sum_i coefs[i] * xs[i] (eager rounding: x0 * c0, then FMAs) into `out` in one pass; False = not done
    (the caller runs its eager loop): fused kernels off, a small tensor, a layout or variant the kernel cannot match."""
    n = out.numel()
    if not compiled.usable(xs[0], out, n) or not all(x.is_contiguous() and x.device == out.device for x in xs):
        return False
    key = (tuple(x.dtype for x in xs), out.dtype, out.device.type)
    flat = [x.reshape(-1) for x in xs]
    try:
        if not _verified(key, flat, out):
            return False
        _kernel()(flat, torch.tensor(coefs, dtype=torch.float32, device=out.device), out.view(-1))
    except Exception as e:  # no compiler: say so once (compiled.disable), merge eagerly from now on
        compiled.disable(e)
        return False
    return True
