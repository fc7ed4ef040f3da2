"""Per-search grid trims and the fused weighted sum: the fast paths give the exact bits of the plain ones."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from merge_core.live import build_live_model, merge_into
from merge_core.methods import METHODS, blend, compiled, cuts, fused, precomputed
from merge_core.methods import sparsify as sp
from merge_core.recipe import parse_recipe
from merge_core.sources import Sources
from merge_core.synthetic import make_checkpoint
from merge_core.writer import write_model


@pytest.fixture
def small(monkeypatch):
    # several spans and blocks per tensor: offsets, the span loop and the block search are all used
    monkeypatch.setenv("MERGE_CORE_FUSED", "1")
    monkeypatch.setattr(compiled, "_broken", [])
    monkeypatch.setattr(fused, "SPAN", 4096)
    monkeypatch.setattr(fused, "SAMPLE", 512)
    monkeypatch.setattr(cuts, "SPAN", 5000)
    monkeypatch.setattr(cuts, "BLOCK", 512)
    monkeypatch.setattr(cuts, "LOG_BLOCK", 9)


def _pair(kind: str, n: int = 30_011) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    if kind == "few":  # magnitudes 0..3: every cut falls inside a big tie group
        return torch.randint(-3, 4, (n,), generator=gen).float(), torch.zeros(n)
    if kind == "zero":  # a source equal to the base
        return torch.zeros(n), torch.zeros(n)
    if kind == "float32":
        return torch.randn(n, generator=gen), torch.randn(n, generator=gen)
    base = (0.02 * torch.randn(n, generator=gen)).bfloat16()
    return (base.float() + 0.002 * torch.randn(n, generator=gen)).bfloat16(), base


@pytest.mark.parametrize("kind", ["few", "zero", "float32", "bfloat16"])
def test_grid_cuts_equal_the_single_density_cut(kind, small) -> None:
    x, b = _pair(kind)
    densities = [0.01, 0.1, 0.25, 0.3, 0.5, 0.77, 0.99, 0.999]
    ks = cuts.ks_for(x.numel(), densities)
    kth, cut = cuts.magnitude_cuts(x, b, ks)
    for d in densities:
        i = ks.index(max(1, int(d * x.numel())))
        assert (kth[i], cut[i]) == fused._magnitude_cut(x, b, d), d


def test_dare_codes_give_bernoulli_masks_bits() -> None:
    grid = [0.01, 0.25, 0.3, 0.5, 0.99]
    ts = sorted(set(cuts.thresholds(cuts.near(grid))))
    n = 2 * sp.MASK_BLOCK + 77  # several random streams, the last one partial
    codes = torch.from_numpy(cuts.dare_codes(n, 1234, ts))
    for d in grid:
        lim = ts.index(cuts.thresholds([d])[0]) + 1
        assert torch.equal(codes < lim, sp.bernoulli_mask((n,), d, 1234)), d


@pytest.mark.parametrize(("method", "dtype"), [("linear", torch.bfloat16), ("linear", torch.float32),
                                               ("task_arithmetic", torch.bfloat16), ("task_arithmetic", torch.float32)])
def test_fused_weighted_sum_has_the_eager_bits(method, dtype, monkeypatch) -> None:
    monkeypatch.setattr(compiled, "_broken", [])
    gen = torch.Generator().manual_seed(0)
    base = (0.02 * torch.randn(70, 301, generator=gen)).to(dtype)
    tensors = {"base": base, **{m: (base.float() + 0.002 * torch.randn(70, 301, generator=gen)).to(dtype) for m in "ab"}}
    params = {"base": {"weight": 0.3}, "a": {"weight": 0.45, "density": 1.0}, "b": {"weight": -0.2, "density": 1.0}}
    spec = METHODS[method]
    options = {**spec.global_params, "lambda": 0.9} if method == "task_arithmetic" else dict(spec.global_params)
    outs = {}
    for mode in ("0", "1"):
        monkeypatch.setenv("MERGE_CORE_FUSED", mode)
        for out_dtype in (torch.bfloat16, torch.float32):
            out = torch.empty(base.shape, dtype=out_dtype)
            spec.fn(tensors, "base", params, options, None, out=out)
            outs[mode, out_dtype] = out
    assert any(v for k, v in blend._VERIFIED.items() if k[0][0] == dtype)  # the compiled kernel ran
    for out_dtype in (torch.bfloat16, torch.float32):
        assert torch.equal(outs["0", out_dtype], outs["1", out_dtype])


def test_a_weighted_sum_kernel_that_rounds_differently_is_never_used(monkeypatch) -> None:
    monkeypatch.setenv("MERGE_CORE_FUSED", "1")
    monkeypatch.setattr(compiled, "_broken", [])
    monkeypatch.setattr(blend, "_VERIFIED", {})
    # a multiply and an add rounded apart, like inductor without contraction: not the eager FMA bits
    monkeypatch.setattr(blend, "_kernel", lambda: lambda xs, coef, out: out.copy_(
        sum((x.float() * c for x, c in zip(xs[1:], coef[1:])), xs[0].float() * coef[0])))
    gen = torch.Generator().manual_seed(1)
    xs = [torch.randn(5000, generator=gen) for _ in range(3)]
    out = torch.empty(5000)
    assert not blend.weighted_sum(xs, [0.3, 0.37, 0.21], out)
    assert blend._VERIFIED and not any(blend._VERIFIED.values())


@pytest.fixture(scope="module")
def bf16_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("bf16")
    base = make_checkpoint(root / "base", seed=0, dtype=torch.bfloat16)
    return {"base": base, **{f"ft{i}": make_checkpoint(root / f"ft{i}", like=base, noise=0.004, seed=i,
                                                        dtype=torch.bfloat16) for i in (1, 2)}}


def _recipe(models, method: str, densities: tuple[float, float], seed: int = 11):
    return parse_recipe({
        "merge_method": method, "base_model": str(models["base"]), "dtype": "float32", "evolve_merge": {"seed": seed},
        "models": [{"model": str(models["ft1"]), "parameters": {"weight": [0.3, 0.8], "density": [densities[0], 0.6]}},
                   {"model": str(models["ft2"]), "parameters": {"weight": 0.5, "density": densities[1]}}],
    }, where="test")


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_search_trims_give_the_recipes_tensors(method, bf16_models, small, tmp_path) -> None:
    folder = tmp_path / "trims"
    trials = [(0.3, 0.45), (0.81, 0.2), (0.123456, 0.5)]  # the last: a density off the grid (exact path)
    plain_src = Sources.open(_recipe(bf16_models, method, trials[0]))
    plain = build_live_model(plain_src, "cpu", torch.bfloat16)
    fast_src = Sources.open(_recipe(bf16_models, method, trials[0]))
    fast = build_live_model(fast_src, "cpu", torch.bfloat16)
    store = precomputed.attach(fast_src, folder)
    for i, densities in enumerate(trials):
        recipe = _recipe(bf16_models, method, densities)
        merge_into(plain, recipe, plain_src)
        merge_into(fast, recipe, fast_src)
        want, got = _state(plain), _state(fast)
        assert all(torch.equal(want[k], got[k]) for k in want), densities
        if i == 0:
            computed = store.stats["computed"]
            assert computed > 0 and store.stats["hits"] > 0 and any(folder.iterdir())
    assert store.stats["computed"] == computed  # later trials only looked their trims up
    assert store.stats["misses"] > 0  # the off-grid density took the exact path
    # `evolve merge` of the first trial's recipe (a new process: no store) writes the same tensors
    recipe = _recipe(bf16_models, method, trials[0])
    merge_into(fast, recipe, fast_src)
    out = write_model(recipe, Sources.open(recipe), tmp_path / "out", dtype="bfloat16", progress=False)
    saved = load_file(str(out / "model.safetensors"))
    live = fast.state_dict()
    assert all(torch.equal(saved[k], live[k]) for k in saved)
    # a resumed search reads the tables back from disk instead of computing them
    again = Sources.open(recipe)
    model = build_live_model(again, "cpu", torch.bfloat16)
    reread = precomputed.attach(again, folder)
    merge_into(model, recipe, again)
    assert reread.stats["computed"] == 0 and reread.stats["hits"] > 0
    assert all(torch.equal(v, live[k]) for k, v in model.state_dict().items())
