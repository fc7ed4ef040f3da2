"""Streaming merges: exact top-k trim without argsort, chunk-size invariance, writing into a bf16 `out`."""

from __future__ import annotations

import pytest
import torch

from merge_core.methods import METHODS, chunks
from merge_core.methods import sparsify as sp


def _delta(t: torch.Tensor):
    return lambda rows: t[rows].float().clone()  # a fresh tensor per call, as sparsify's Delta contract says


@pytest.mark.parametrize("shape", [(37, 11), (500,), (64, 300)])
@pytest.mark.parametrize("density", [0.01, 0.5, 0.93])
def test_magnitude_mask_is_the_argsort_top_k(shape, density, monkeypatch) -> None:
    monkeypatch.setattr(chunks, "CHUNK", 1000)  # several chunks for the bigger shapes
    t = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    k = max(1, int(density * t.numel()))
    expect = torch.zeros(t.numel(), dtype=torch.bool)
    expect[torch.argsort(t.abs().reshape(-1), descending=True)[:k]] = True
    assert torch.equal(sp.magnitude_mask(_delta(t), shape, density), expect.reshape(shape))


@pytest.mark.parametrize("chunk", [64, 1 << 22])  # streamed chunks / magnitudes kept whole
def test_magnitude_mask_ties_keep_exactly_k_lowest_index_first(chunk, monkeypatch) -> None:
    monkeypatch.setattr(chunks, "CHUNK", chunk)
    t = torch.randint(-3, 4, (40, 16), generator=torch.Generator().manual_seed(0)).float()
    mask = sp.magnitude_mask(_delta(t), tuple(t.shape), 0.3)
    k = int(0.3 * t.numel())
    mags = t.abs().reshape(-1)
    kept = mags[mask.reshape(-1)]
    assert mask.sum() == k
    assert kept.min() >= mags[~mask.reshape(-1)].max()
    cut = kept.min()
    at_cut = torch.nonzero(mags == cut).reshape(-1)
    n_cut = int((kept == cut).sum())
    assert mask.reshape(-1)[at_cut[:n_cut]].all() and not mask.reshape(-1)[at_cut[n_cut:]].any()


def test_kth_largest_survives_a_misleading_sample() -> None:
    # the strided sample (every 4th value) sees only zeros, so the first bracket misses the answer
    values = torch.zeros(300_000)
    values[1::4][:60_000] = 5.0
    values[2] = 7.0
    kth, above, equal = sp.kth_largest(lambda: iter([values]), values.numel(), 50_000)
    assert kth.item() == 5.0 and above == 1 and equal == 60_000
    kth, above, equal = sp.kth_largest(lambda: iter([values]), values.numel(), 1)
    assert kth.item() == 7.0 and above == 0 and equal == 1


@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "ties", "dare_ties", "breadcrumbs", "della"])
def test_chunking_and_bf16_out_do_not_change_results(method: str, monkeypatch) -> None:
    spec = METHODS[method]
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(48, 20, generator=gen).bfloat16()
    tensors = {"base": base, "a": (base.float() + 0.1 * torch.randn(48, 20, generator=gen)).bfloat16(),
               "b": (base.float() + 0.1 * torch.randn(48, 20, generator=gen)).bfloat16()}
    params = {m: {k: (0.4 if k == "weight" else v) for k, v in spec.tensor_params.items()} for m in tensors}
    for m in ("a", "b"):
        params[m]["density"] = 0.5 if "density" in params[m] else None
    options = {k: (0.5 if k == "t" else v) for k, v in spec.global_params.items()}
    base_id = None if method == "linear" else "base"

    def run(out=None):
        g = torch.Generator().manual_seed(9) if spec.random else None
        return spec.fn(tensors, base_id, params, options, g, out=out)

    whole = run()
    monkeypatch.setattr(chunks, "CHUNK", 100)  # 5 rows per chunk
    chunked = run()
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-7)
    out = torch.empty(48, 20, dtype=torch.bfloat16)
    assert run(out) is out
    assert torch.equal(out, chunked.bfloat16())


def test_dare_mask_bits_do_not_depend_on_threads_chunks_or_shape(monkeypatch) -> None:
    monkeypatch.setattr(sp, "MASK_BLOCK", 1000)  # 13 independently seeded blocks
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = sp.bernoulli_mask((12_345,), 0.37, 11)
        torch.set_num_threads(2)
        parallel = sp.bernoulli_mask((15, 823), 0.37, 11)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(serial, parallel.reshape(-1))
    assert abs(serial.float().mean().item() - 0.37) < 0.02
    assert not torch.equal(serial[:1000], serial[1000:2000])  # blocks draw different streams
    other = sp.bernoulli_mask((12_345,), 0.37, 12)
    assert 0.1 < (serial ^ other).float().mean().item() < 0.9  # another seed, other bits
    assert not sp.bernoulli_mask((5000,), 0.0, 1).any() and sp.bernoulli_mask((5000,), 1.0, 1).all()
