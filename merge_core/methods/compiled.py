"""The compiled-kernel switch shared by every fused method kernel: when to use them, how to compile, and the fallback.

fused.py (TIES/DARE), blend.py (weighted sums) and cuts.py (per-search trims) all compile with torch.compile and
fall back to eager code on the first compile failure; this module holds that one state, so none of them imports
another for it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger(__name__)

FUSED_MIN = 1 << 16  # smaller tensors stay eager: too small for a compiled pass to pay; tests on tiny models never compile
DEVICES = ("cpu", "cuda")  # where torch.compile has a backend (inductor: C++ on CPU, Triton on CUDA)
RECOMPILE_LIMIT = 64  # variants: model count, dtypes, masks, consensus / normalize / lambda; torch's default is 8

_broken: list[str] = []  # the first compile error, once seen: everything stays eager afterwards


def mode() -> str:
    """'off', 'on' (any size) or 'auto' (large CPU tensors), from MERGE_CORE_FUSED=0/1/auto."""
    v = os.environ.get("MERGE_CORE_FUSED", "auto").strip().lower()
    return {"0": "off", "false": "off", "off": "off", "1": "on", "true": "on", "on": "on"}.get(v, "auto")


def enabled() -> bool:
    """Whether compiled kernels may run at all (not switched off, no compile failure seen)."""
    return mode() != "off" and not _broken


def usable(base: torch.Tensor, out: torch.Tensor | None, n: int) -> bool:
    """Whether this tensor's merge goes through the compiled kernels."""
    m = mode()
    if not enabled() or base.device.type not in DEVICES or n == 0 or (m == "auto" and n < FUSED_MIN):
        return False
    return out is None or (out.is_contiguous() and out.device == base.device)


def disable(error: BaseException) -> None:
    """Remember a compile failure and say once that merges run eager from now on."""
    if not _broken:
        _broken.append(repr(error))
        log.warning("fused merge kernels unavailable (%s); using the eager path", str(error).splitlines()[0][:200])


def compile_kernel(fn: Callable[..., Any], inductor: dict[str, Any] | None = None) -> Callable[..., Any]:
    """fn compiled by torch.compile (dynamic shapes, one graph) with the given inductor settings (which are part of
    inductor's cache key, so such a kernel never shares code compiled without), called under our recompile limit."""
    compiled = torch.compile(fn, dynamic=True, fullgraph=True, options=inductor or None)
    # torch < 2.6 names the limit cache_size_limit
    limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    cfg = torch._dynamo.config

    def call(*args: Any, **kwargs: Any) -> Any:
        # raised for the call and put back after it, without config.patch: that context manager costs ~40 us a
        # call, a few per cent of a TIES trial's build (hundreds of kernel calls)
        before = getattr(cfg, limit)
        if before >= RECOMPILE_LIMIT:
            return compiled(*args, **kwargs)
        setattr(cfg, limit, RECOMPILE_LIMIT)
        try:
            return compiled(*args, **kwargs)
        finally:
            setattr(cfg, limit, before)

    return call


_WITH_FALLBACK: dict[Callable[..., Any], Callable[..., Any]] = {}


def or_eager(fn: Callable[..., Any]) -> Callable[..., Any]:
    """fn compiled once, called compiled while kernels are enabled and eagerly otherwise; the first compile failure
    is remembered (disable) and fn runs eagerly from then on. For kernels whose result is exact either way."""
    if fn not in _WITH_FALLBACK:
        kernel = compile_kernel(fn)

        def call(*args: Any) -> Any:
            if not enabled():
                return fn(*args)
            try:
                return kernel(*args)
            except Exception as e:  # no compiler: say so once, then eager
                disable(e)
                return fn(*args)

        _WITH_FALLBACK[fn] = call
    return _WITH_FALLBACK[fn]
