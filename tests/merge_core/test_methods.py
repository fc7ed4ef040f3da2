"""Merge methods: one contract test over the registry, hand-computed references, and mergekit 0.1.5 parity."""

from __future__ import annotations

import json
import math
import os
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from merge_core.methods import METHODS, REQUIRED
from merge_core.methods.task_arithmetic import model_seed
from tests.external import require_mergekit

SHAPE = (6, 5)


def _rand(seed: int, shape: tuple[int, ...] = SHAPE) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _inputs(method: str, equal: bool = False) -> tuple[dict[str, torch.Tensor], str]:
    n = METHODS[method].exact_inputs or 3
    base = _rand(0)
    tensors = {"base": base}
    for i in range(1, n):
        tensors[f"m{i}"] = base.clone() if equal else base + 0.3 * _rand(i)
    return tensors, "base"


def _call(method: str, tensors, base, gen_seed=7, weight=0.6, **opts):
    spec = METHODS[method]
    params = {m: {k: (weight if v is REQUIRED else v) for k, v in spec.tensor_params.items()} for m in tensors}
    for m, p in params.items():
        if "density" in p and m != base:
            p["density"] = 0.5
    options = {k: (0.4 if v is REQUIRED else v) for k, v in spec.global_params.items()} | opts
    gen = torch.Generator().manual_seed(gen_seed) if spec.random else None
    return spec.fn({k: v.clone() for k, v in tensors.items()}, base, params, options, gen)


# (a) contract: every registered method
@pytest.mark.parametrize("method", sorted(METHODS))
def test_contract(method: str) -> None:
    spec = METHODS[method]
    tensors, base = _inputs(method)
    rng_before = torch.get_rng_state()
    out = _call(method, tensors, base)
    assert torch.equal(torch.get_rng_state(), rng_before), "methods must not touch the global RNG"
    assert out.shape == SHAPE and out.dtype == torch.float32 and torch.isfinite(out).all()
    if spec.layer_paths:  # passthrough copies its one input, times `scale` where one applies
        assert torch.equal(out, tensors[base])
        scaled = spec.fn(tensors, base, {base: {"scale": 0.5}}, {}, None)
        assert torch.equal(scaled, tensors[base] * 0.5)
    else:
        assert not torch.allclose(out, tensors[base]), "a real merge moves away from the base"

    same, _ = _inputs(method, equal=True)
    torch.testing.assert_close(_call(method, same, base), same[base], rtol=0, atol=1e-6)

    if "weight" in spec.tensor_params:
        params = {m: {k: (0.0 if v is REQUIRED else v) for k, v in spec.tensor_params.items()} for m in tensors}
        if method == "linear":
            params[base]["weight"] = 1.0
        options = {k: v for k, v in spec.global_params.items()}
        gen = torch.Generator().manual_seed(1) if spec.random else None
        torch.testing.assert_close(spec.fn(tensors, base, params, options, gen), tensors[base], rtol=0, atol=1e-6)
    if method == "slerp":
        torch.testing.assert_close(_call(method, tensors, base, t=0.0), tensors[base], rtol=0, atol=1e-6)

    again = _call(method, tensors, base)
    assert torch.equal(out, again), "same seed, same bits"
    if spec.random:
        assert not torch.equal(out, _call(method, tensors, base, gen_seed=8)), "another seed draws another mask"


# (b) references computed independently in numpy
def _np(t: torch.Tensor) -> np.ndarray:
    return t.double().numpy()


def test_linear_reference() -> None:
    a, b, c = _rand(1), _rand(2), _rand(3)
    w = {"a": 0.2, "b": 0.5, "c": 1.3}
    out = METHODS["linear"].fn({"a": a, "b": b, "c": c}, None, {k: {"weight": v} for k, v in w.items()}, {"normalize": True}, None)
    expect = (0.2 * _np(a) + 0.5 * _np(b) + 1.3 * _np(c)) / 2.0
    np.testing.assert_allclose(out.numpy(), expect, atol=1e-5)
    raw = METHODS["linear"].fn({"a": a, "b": b}, None, {"a": {"weight": 2.0}, "b": {"weight": -1.0}}, {"normalize": False}, None)
    np.testing.assert_allclose(raw.numpy(), 2 * _np(a) - _np(b), atol=1e-5)


def test_slerp_reference() -> None:
    v0, v1 = _rand(1), _rand(2)
    for t in (0.0, 0.25, 0.7, 1.0):
        out = METHODS["slerp"].fn({"b": v0, "x": v1}, "b", {"b": {}, "x": {}}, {"t": t}, None)
        a, b = _np(v0).ravel(), _np(v1).ravel()
        omega = math.acos(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
        expect = (math.sin((1 - t) * omega) * a + math.sin(t * omega) * b) / math.sin(omega)
        np.testing.assert_allclose(out.numpy().ravel(), expect, atol=1e-5)
    # nearly parallel inputs fall back to plain lerp of the unnormalized tensors
    out = METHODS["slerp"].fn({"b": v0, "x": 2 * v0}, "b", {}, {"t": 0.5}, None)
    np.testing.assert_allclose(out.numpy(), 1.5 * _np(v0), atol=1e-6)


@pytest.mark.parametrize("filter_wise", [False, True])
def test_model_stock_reference(filter_wise: bool) -> None:
    w0, w1, w2, w3 = (_rand(i) for i in range(4))
    w1, w2, w3 = w0 + 0.5 * w1, w0 + 0.5 * w2 + 0.2 * w1, w0 + 0.4 * w3
    out = METHODS["model_stock"].fn({"b": w0, "x": w1, "y": w2, "z": w3}, "b", {}, {"filter_wise": filter_wise}, None)
    rows = [slice(None)] if not filter_wise else [slice(i, i + 1) for i in range(SHAPE[0])]
    expect = np.zeros(SHAPE)
    for r in rows:
        base = _np(w0)[r].ravel()
        offs = [_np(w)[r].ravel() - base for w in (w1, w2, w3)]
        cos = np.mean([offs[i] @ offs[j] / np.linalg.norm(offs[i]) / np.linalg.norm(offs[j]) for i, j in ((0, 1), (0, 2), (1, 2))])
        t = 3 * cos / (1 + 2 * cos)
        mean = np.mean([_np(w)[r].ravel() for w in (w1, w2, w3)], axis=0)
        expect[r] = (t * mean + (1 - t) * base).reshape(expect[r].shape)
    np.testing.assert_allclose(out.numpy(), expect, atol=1e-5)


def _ties_by_hand(base, models, weights, density, normalize=True, lam=1.0):
    b = _np(base)
    trimmed = []
    for m in models:
        d = _np(m) - b
        k = int(density * d.size)
        thresh = np.sort(np.abs(d).ravel())[::-1][k - 1]
        trimmed.append(np.where(np.abs(d) >= thresh, d, 0.0))
    weighted = [w * d for w, d in zip(weights, trimmed)]
    elected = np.where(sum(weighted) >= 0, 1.0, -1.0)
    num = np.zeros_like(b)
    den = np.zeros_like(b)
    for w, wd in zip(weights, weighted):
        agree = np.sign(wd) == elected
        num += np.where(agree, wd, 0.0)
        den += np.where(agree, w, 0.0)
    den[den == 0] = 1
    return b + lam * (num / den if normalize else num)


def test_ties_reference() -> None:
    base, a, b = _rand(0), _rand(1), _rand(2)
    params = {"base": {"weight": None, "density": 1.0}, "a": {"weight": 0.7, "density": 0.4}, "b": {"weight": 0.3, "density": 0.4}}
    opts = {"int8_mask": False, "normalize": True, "rescale": False, "lambda": 0.9}
    out = METHODS["ties"].fn({"base": base, "a": a, "b": b}, "base", params, opts, None)
    np.testing.assert_allclose(out.numpy(), _ties_by_hand(base, [a, b], [0.7, 0.3], 0.4, lam=0.9), atol=1e-5)


def test_task_arithmetic_and_breadcrumbs_reference() -> None:
    base, a, b = _rand(0, (10, 10)), _rand(1, (10, 10)), _rand(2, (10, 10))
    opts = {"int8_mask": False, "normalize": False, "rescale": False, "lambda": 0.5}
    params = {"a": {"weight": 0.7, "density": 0.5, "gamma": 0.1}, "b": {"weight": -0.2, "density": 0.5, "gamma": 0.1}, "base": {}}
    ta = METHODS["task_arithmetic"].fn({"base": base, "a": a, "b": b}, "base", params, opts, None)
    np.testing.assert_allclose(ta.numpy(), _np(base) + 0.5 * (0.7 * (_np(a) - _np(base)) - 0.2 * (_np(b) - _np(base))), atol=1e-5)

    out = METHODS["breadcrumbs"].fn({"base": base, "a": a, "b": b}, "base", params, opts, None)
    expect = _np(base).copy()
    for m, w in ((a, 0.7), (b, -0.2)):
        d = (_np(m) - _np(base)).ravel()
        order = np.argsort(np.abs(d))
        keep = np.zeros(100, bool)
        keep[order[40:90]] = True  # drop the 10 largest (gamma) and the 40 smallest: 50 kept
        expect += 0.5 * w * np.where(keep, d, 0).reshape(10, 10)
    np.testing.assert_allclose(out.numpy(), expect, atol=1e-5)


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties"])
def test_dare_statistics(method: str) -> None:
    base, a = _rand(0, (100, 100)), _rand(1, (100, 100))
    params = {"base": {}, "a": {"weight": 1.0, "density": 0.3}}
    opts = {"int8_mask": False, "normalize": False, "rescale": False, "lambda": 1.0}
    gen = torch.Generator().manual_seed(5)
    delta = (METHODS[method].fn({"base": base, "a": a}, "base", params, opts, gen) - base)
    kept = delta != 0
    assert abs(kept.float().mean().item() - 0.3) < 0.02
    torch.testing.assert_close(delta[kept], (a - base)[kept])
    # the mask is exactly the one drawn from the model's seed: PCG64 stream of block 0, uniform 32-bit < 0.3 * 2^32
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([model_seed(torch.Generator().manual_seed(5), "a"), 0])))
    u32 = rng.integers(0, 2**64 - 1, size=5000, dtype=np.uint64, endpoint=True).view(np.uint32)
    expect = torch.from_numpy(u32 < int(0.3 * 2**32)).reshape(100, 100)
    assert torch.equal(kept, expect & ((a - base) != 0))
    rescaled = METHODS[method].fn({"base": base, "a": a}, "base", params, opts | {"rescale": True}, torch.Generator().manual_seed(5)) - base
    torch.testing.assert_close(rescaled.abs().sum(), (a - base).abs().sum(), rtol=1e-5, atol=0)


def test_della_keep_probability_follows_rank() -> None:
    # one row of 11 entries with magnitudes 1..11: keep prob = (density - eps) + rank/10 * 2 eps
    delta = torch.arange(1.0, 12.0)[torch.randperm(11, generator=torch.Generator().manual_seed(0))]
    base = torch.zeros(1, 11)
    params = {"base": {}, "a": {"weight": 1.0, "density": 0.5, "epsilon": 0.3}}
    opts = {"int8_mask": False, "normalize": False, "rescale": False, "lambda": 1.0}
    hits = torch.zeros(1, 11)
    n = 600
    for s in range(n):
        out = METHODS["della_linear"].fn({"base": base, "a": delta.view(1, 11)}, "base", params, opts, torch.Generator().manual_seed(s))
        hits += out != 0
    expect = 0.2 + (delta.view(1, 11) - 1) / 10 * 0.6
    assert (hits / n - expect).abs().max() < 0.08


# (c) parity with mergekit 0.1.5, run in its own interpreter
MK_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from safetensors.torch import load_file, save_file
    from mergekit import merge_methods
    from mergekit.merge_methods import ParameterScope, merge_tensors

    tensors = load_file(sys.argv[1])
    cases = json.load(open(sys.argv[2]))
    out = {}
    for i, c in enumerate(cases):
        method = merge_methods.get(c["method"])
        params = dict(c["options"])
        for p in method.spec.parameters:
            if p.scope != ParameterScope.SHARED:
                ids = [m for m in c["models"] if p.scope == ParameterScope.INPUT or m != c["base"]]
                params[p.name] = {m: c["params"][m][p.name] for m in ids}
        inputs = [tensors[c["shape"] + "/" + m].clone() for m in c["models"]]
        res = merge_tensors(inputs, method, parameters=params, ids=c["models"], base_index=c["models"].index(c["base"]), name=c["name"])
        out[str(i)] = res.float().contiguous()
    save_file(out, sys.argv[3])
    """
)


def _parity_cases() -> list[dict]:
    gta = {"int8_mask": False, "lambda": 1.0}
    cases = []

    def add(method, shape, options, params, models=("base", "a", "b")):
        spec = METHODS[method]
        opts = {k: v for k, v in spec.global_params.items() if v is not REQUIRED} | options
        full = {m: {k: v for k, v in spec.tensor_params.items() if v is not REQUIRED} | params.get(m, {}) for m in models}
        cases.append({"method": method, "shape": shape, "options": opts, "params": full, "models": list(models), "base": "base", "name": "w"})

    w = {"a": {"weight": 0.6}, "b": {"weight": 0.3}, "base": {"weight": 0.4}}
    for shape in ("m", "v"):
        add("linear", shape, {}, w)
        add("linear", shape, {"normalize": False}, w)
        add("slerp", shape, {"t": 0.35}, {}, ("base", "a"))
        add("task_arithmetic", shape, {"lambda": 0.8}, w)
        add("model_stock", shape, {}, {})
        add("model_stock", shape, {"filter_wise": True}, {})
        dense = {"a": {"weight": 0.6, "density": 0.45}, "b": {"weight": 0.5, "density": 0.6}}
        add("ties", shape, {}, dense)
        add("ties", shape, {"int8_mask": True, "rescale": True, "normalize": False}, dense)
        add("breadcrumbs", shape, {}, {"a": {"weight": 0.6, "density": 0.6, "gamma": 0.05}, "b": {"weight": 0.5, "density": 0.8}})
        add("breadcrumbs_ties", shape, dict(gta), {"a": {"weight": 0.6, "density": 0.6, "gamma": 0.05}, "b": {"weight": 0.5, "density": 0.8}})
        # random methods agree exactly at density 1 (no mask drawn)
        for m in ("dare_ties", "dare_linear", "della", "della_linear"):
            add(m, shape, {}, {"a": {"weight": 0.6}, "b": {"weight": 0.5}})
    return cases


def test_parity_with_mergekit(tmp_path: Path) -> None:
    mk_python = require_mergekit()
    base_m, base_v = _rand(10, (16, 16)), _rand(11, (24,))
    tensors = {"m/base": base_m, "v/base": base_v}
    for i, m in enumerate(("a", "b")):
        tensors[f"m/{m}"] = base_m + 0.1 * _rand(20 + i, (16, 16))
        tensors[f"v/{m}"] = base_v + 0.1 * _rand(30 + i, (24,))
    cases = _parity_cases()
    save_file(tensors, tmp_path / "in.safetensors")
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    (tmp_path / "mk.py").write_text(MK_SCRIPT)
    run = subprocess.run(
        [str(mk_python), str(tmp_path / "mk.py"), str(tmp_path / "in.safetensors"), str(tmp_path / "cases.json"), str(tmp_path / "out.safetensors")],
        capture_output=True, text=True, timeout=120, env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stderr[-2000:]
    theirs = load_file(tmp_path / "out.safetensors")
    for i, c in enumerate(cases):
        spec = METHODS[c["method"]]
        ours = spec.fn({m: tensors[f"{c['shape']}/{m}"] for m in c["models"]}, "base", c["params"], c["options"], torch.Generator().manual_seed(0))
        torch.testing.assert_close(ours, theirs[str(i)], rtol=0, atol=1e-5, msg=lambda s, c=c: f"{c['method']} {c['options']}: {s}")
