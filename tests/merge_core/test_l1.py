"""Exact L1 norms and the threaded bincount: the same floats whatever the order, grouping or thread split."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from merge_core.methods import compiled, counting, l1


def _values(n: int = 50_000) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    b = torch.randn(n, generator=gen)
    x = b + torch.randn(n, generator=gen) * torch.logspace(-40, 3, n)  # 43 decades: subnormals to 1e3
    x[:5] = b[:5]  # zero deltas
    x[5] = b[5] + 1e-44  # a subnormal delta
    return x, b


def _exact(mag: torch.Tensor) -> float:
    return float(sum((Fraction(v) for v in mag.double().tolist()), Fraction(0)))


@pytest.mark.parametrize("fused", ["0", "1"])
def test_sums_are_exact_and_order_free(fused, monkeypatch) -> None:
    monkeypatch.setenv("MERGE_CORE_FUSED", fused)
    monkeypatch.setattr(compiled, "_broken", [])
    monkeypatch.setattr(l1, "SPAN", 4096)  # many spans, the last one partial
    x, b = _values()
    mag = (x - b).abs()
    want = _exact(mag)
    assert l1.value(l1.sums(x, b)) == want
    perm = torch.randperm(x.numel(), generator=torch.Generator().manual_seed(1))
    assert l1.value(l1.sums(x[perm], b[perm])) == want
    # float32 and float64 sums in torch's order do not give this float in general; here they differ
    assert float(mag.sum()) != want
    code = torch.randint(0, 9, (x.numel(),), generator=torch.Generator().manual_seed(2)).bfloat16()
    per_code = l1.sums(x, b, code=code, groups=9)
    kept = l1.sums(x, b, code=code, lim=4.0)
    assert l1.value(per_code[:4]) == l1.value(kept[1]) == _exact(mag[code.float() < 4])
    assert l1.value(l1.sums(x, b, thr=0.5)[1]) == _exact(mag[mag >= 0.5])
    assert l1.value(l1.sums(x - b, None)) == want


def test_non_finite_magnitudes_give_inf() -> None:
    x = torch.tensor([1.0, float("inf"), 2.0])
    assert l1.value(l1.sums(x, torch.zeros(3))) == float("inf")


def test_threaded_bincount_equals_torchs(monkeypatch) -> None:
    monkeypatch.setattr(counting, "MIN_SPLIT", 16)
    gen = torch.Generator().manual_seed(3)
    keys = torch.randint(0, 70, (100_001,), generator=gen)
    weights = torch.randint(0, 1 << 24, (100_001,), generator=gen).double()
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        try:
            assert torch.equal(counting.bincount(keys, 64), torch.bincount(keys, minlength=70)[:64])
            assert torch.equal(counting.bincount(keys, 64, weights), torch.bincount(keys, weights, minlength=70)[:64])
        finally:
            torch.set_num_threads(2)
