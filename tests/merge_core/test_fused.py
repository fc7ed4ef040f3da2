"""Fused CPU kernels (torch.compile): the same keep sets and merged tensors as the eager path, and a safe fallback."""

from __future__ import annotations

import logging

import pytest
import torch

from merge_core.methods import METHODS, compiled, fused
from merge_core.methods import sparsify as sp


def _merge(method: str, tensors: dict, params: dict, options: dict, mode: str, monkeypatch) -> torch.Tensor:
    monkeypatch.setenv("MERGE_CORE_FUSED", mode)
    spec = METHODS[method]
    out = torch.empty(tensors["base"].shape, dtype=torch.bfloat16)
    spec.fn(tensors, "base", params, {**spec.global_params, **options}, torch.Generator().manual_seed(5), out=out)
    return out


@pytest.fixture
def small_spans(monkeypatch):
    # several kernel calls per tensor, the last one not a multiple of 8 long: offsets and the marks' tail are used
    monkeypatch.setattr(fused, "SPAN", 4096)
    monkeypatch.setattr(fused, "SAMPLE", 512)
    monkeypatch.setattr(compiled, "_broken", [])


def _sources(dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    base = (0.02 * torch.randn(70, 301, generator=gen)).to(dtype)
    # bf16 deltas take few distinct values: many magnitudes tie at the cut
    return {"base": base, **{m: (base.float() + 0.002 * torch.randn(70, 301, generator=gen)).to(dtype)
                             for m in ("a", "b", "c")}}


@pytest.mark.parametrize(("method", "options", "dtype"), [
    ("ties", {}, torch.bfloat16),
    ("ties", {"rescale": True, "lambda": 0.7}, torch.float32),
    ("dare_ties", {}, torch.bfloat16),
])
def test_fused_merge_equals_the_eager_merge(method, options, dtype, small_spans, monkeypatch) -> None:
    tensors = _sources(dtype)
    params = {"a": {"weight": 0.6, "density": 0.4}, "b": {"weight": -0.3, "density": 0.25},
              "c": {"weight": 0.5, "density": 1.0}}
    eager = _merge(method, tensors, params, options, "0", monkeypatch)
    fast = _merge(method, tensors, params, options, "1", monkeypatch)
    assert not compiled._broken, compiled._broken  # the kernels compiled and ran: no silent eager fallback
    # the same keep sets, the same float32 operations and the same (exact) L1 rescale norms: the same bits
    assert torch.equal(fast, eager)
    assert not torch.equal(fast, tensors["base"].bfloat16())  # the merge changed something


@pytest.mark.parametrize("values", ["few", "all_zero"])
def test_magnitude_cut_keeps_the_eager_top_k_with_ties(values, small_spans) -> None:
    gen = torch.Generator().manual_seed(0)
    base = torch.zeros(30_011)
    # magnitudes 0..3: the cut falls inside a tie; or a source equal to the base (frozen layers): one value
    x = torch.randint(-3, 4, (30_011,), generator=gen).float() if values == "few" else torch.zeros(30_011)
    for density in (0.01, 0.3, 0.77, 0.999):
        kth, cut = fused._magnitude_cut(x, base, density)
        mag = x.abs()
        keep = (mag > kth) | ((mag == kth) & (torch.arange(x.numel()) <= cut))
        expect = sp.magnitude_mask(lambda rows: x[rows].clone(), (x.numel(),), density)
        assert torch.equal(keep, expect), density


@pytest.mark.parametrize("seen", [0, 2])  # the sample sees only zeros (answer above it) or only the 7 (below)
def test_magnitude_cut_survives_a_misleading_sample(seen, small_spans, monkeypatch) -> None:
    values = torch.zeros(300_000)
    values[1::4][:60_000] = 5.0
    values[2] = 7.0
    monkeypatch.setattr(torch, "randint", lambda lo, hi, size, generator=None: torch.full(size, seen))
    kth, cut = fused._magnitude_cut(values, torch.zeros_like(values), 50_001 / 300_000)
    assert kth == 5.0 and cut == int(torch.nonzero(values == 5.0).reshape(-1)[49_999])


def test_a_failing_compile_falls_back_to_eager_once(small_spans, monkeypatch, caplog) -> None:
    tensors = _sources(torch.bfloat16, seed=1)
    params = {"a": {"weight": 0.5, "density": 0.5}, "b": {"weight": 0.5, "density": 0.5}}
    eager = _merge("ties", {k: tensors[k] for k in ("base", "a", "b")}, params, {}, "0", monkeypatch)

    def no_compiler(name):
        raise RuntimeError("InductorError: no working C++ compiler")

    monkeypatch.setattr(fused, "_kernel", no_compiler)
    with caplog.at_level(logging.WARNING, logger=compiled.__name__):
        first = _merge("ties", {k: tensors[k] for k in ("base", "a", "b")}, params, {}, "1", monkeypatch)
        second = _merge("ties", {k: tensors[k] for k in ("base", "a", "b")}, params, {}, "1", monkeypatch)
    assert torch.equal(first, eager) and torch.equal(second, eager)
    assert len([r for r in caplog.records if "fused merge kernels unavailable" in r.message]) == 1


def test_auto_mode_leaves_small_and_non_cpu_tensors_eager(monkeypatch) -> None:
    monkeypatch.setenv("MERGE_CORE_FUSED", "auto")
    monkeypatch.setattr(compiled, "_broken", [])
    small = torch.zeros(10, 10)
    big = torch.zeros(compiled.FUSED_MIN)
    assert not compiled.usable(small, None, small.numel())
    assert compiled.usable(big, None, big.numel())
    assert not compiled.usable(big.to("meta"), None, big.numel())
    monkeypatch.setenv("MERGE_CORE_FUSED", "0")
    assert not compiled.usable(big, None, big.numel())


def test_cuts_one_entry_apart_split_the_span_into_a_one_entry_piece(monkeypatch) -> None:
    # every |delta| equal: the cut of k kept entries is index k - 1, so cuts 299 and 300 leave the piece [300, 301)
    monkeypatch.setattr(compiled, "_broken", [])
    gen = torch.Generator().manual_seed(4)
    n = 1024
    tensors = {"base": torch.zeros(n), **{m: torch.randint(0, 2, (n,), generator=gen).float() * 2 - 1 for m in "ab"}}
    params = {"a": {"weight": 0.6, "density": 300 / n}, "b": {"weight": 0.4, "density": 301 / n}}
    assert [p[:2] for p in fused._pieces(0, n, [1.0, 1.0], [299, 300])] == [(0, 300), (300, 301), (301, n)]
    eager = _merge("ties", tensors, params, {}, "0", monkeypatch)
    fast = _merge("ties", tensors, params, {}, "1", monkeypatch)
    assert not compiled._broken, compiled._broken
    assert torch.equal(fast, eager)
