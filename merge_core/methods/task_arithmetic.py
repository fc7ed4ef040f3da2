"""The task-arithmetic family: one sparsify-then-combine core, one line per variant (mergekit's table)."""

from __future__ import annotations

import hashlib
from functools import partial
from typing import Any, Literal

import torch

from merge_core.methods import blend, compiled, fused
from merge_core.methods import sparsify as sp
from merge_core.methods.chunks import row_chunks, scratch
from merge_core.methods.registry import REQUIRED, register

Sparsification = Literal["magnitude", "random", "magnitude_outliers", "della_magprune"]


def model_seed(generator: torch.Generator | None, model: str) -> int:
    """A 63-bit seed for one model's mask, derived from the tensor's generator and the model id."""
    root = generator.initial_seed() if generator is not None else 0
    digest = hashlib.sha256(f"{root}\0{model}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def model_generator(generator: torch.Generator | None, model: str) -> torch.Generator:
    """A CPU generator for one model's DELLA mask, seeded by model_seed."""
    return torch.Generator(device="cpu").manual_seed(model_seed(generator, model))


def weight_divisor(weights: list[float]) -> float:
    """What `normalize` divides by without a sign election: the float32 sum of the weights, 1 when it is ~0."""
    total = float(torch.tensor(weights, dtype=torch.float32).sum())
    return 1.0 if abs(total) < 1e-8 else total


def _keep_mask(
    delta: sp.Delta, shape: tuple[int, ...], how: Sparsification, p: dict[str, Any], generator: torch.Generator | None,
    model: str,
) -> torch.Tensor:
    density = float(p["density"])
    if how == "magnitude":
        return sp.magnitude_mask(delta, shape, density)
    if how == "random":
        return sp.bernoulli_mask(shape, density, model_seed(generator, model))
    whole = delta(slice(None))  # rank-based masks need the whole delta (not used by the benchmarked methods)
    if how == "magnitude_outliers":
        return sp.outlier_mask(whole, density, float(p["gamma"]))
    return sp.della_mask(whole, density, float(p["epsilon"]), model_generator(generator, model))


def generalized_task_arithmetic(
    tensors: dict[str, torch.Tensor],
    base: str | None,
    params: dict[str, dict[str, Any]],
    options: dict[str, Any],
    generator: torch.Generator | None,
    *,
    sparsification: Sparsification | None,
    consensus: Literal["sum"] | None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """base + lambda * combine(weight_i * sparsify(model_i - base)), normalized by the used weights.

    Inputs may be any float dtype; math is float32, a row chunk at a time, written into `out` when given.
    """
    if base is None or base not in tensors:
        raise ValueError("task-arithmetic methods need the base model's tensor")
    base_t = tensors[base]
    shape = tuple(base_t.shape)
    out = torch.empty(shape, dtype=torch.float32, device=base_t.device) if out is None else out
    others = [m for m in tensors if m != base]
    if not others:
        return out.copy_(base_t)

    weights = [float(params[m]["weight"]) for m in others]
    lam, normalize = float(options["lambda"]), bool(options["normalize"])
    dense = sparsification is None or all(float(params[m]["density"]) >= 1 for m in others)
    if consensus is None and dense:
        return _weighted_sum(tensors, base, others, weights, lam, normalize, out)
    if sparsification in (None, "magnitude", "random") and compiled.usable(base_t, out, base_t.numel()):
        try:
            seeds = {m: model_seed(generator, m) for m in others}
            return fused.merge(tensors, base, others, params, weights, options, sparsification, consensus, seeds,
                               weight_divisor(weights), out)
        except Exception as e:  # a compiler missing or failing: say so once, then merge eagerly
            compiled.disable(e)

    def delta_of(m: str) -> sp.Delta:
        # a fresh float32 copy of the source rows (never a view of a float32 source), minus the base rows in place
        return lambda rows: tensors[m][rows].to(torch.float32, copy=True).sub_(base_t[rows])

    keep: dict[str, torch.Tensor | None] = {}
    scale: dict[str, float | None] = {}
    for m in others:
        keep[m], scale[m] = None, None
        if sparsification is not None and float(params[m]["density"]) < 1:
            mask = _keep_mask(delta_of(m), shape, sparsification, params[m], generator, m)
            keep[m] = mask.to(base_t.device)
            if options["rescale"]:
                scale[m] = sp.l1_scale(delta_of(m), shape, keep[m])
    dev = base_t.device
    for rows in row_chunks(shape):
        b = base_t[rows]  # stays in its stored dtype; float32 math happens inside each op
        rshape = b.shape
        deltas = []
        for i, (m, w) in enumerate(zip(others, weights)):
            d = scratch(f"delta{i}", rshape, dev).copy_(tensors[m][rows]).sub_(b)
            if keep[m] is not None:
                d.mul_(keep[m][rows])
            coef = w * (scale[m] if scale[m] is not None else 1.0)
            deltas.append(d.mul_(coef) if coef != 1 else d)
        mixed = scratch("mixed", rshape, dev)
        if len(deltas) > 1:
            torch.add(deltas[0], deltas[1], out=mixed)
        else:
            mixed.copy_(deltas[0])
        for d in deltas[2:]:
            mixed.add_(d)
        if consensus == "sum":
            # TIES election: keep entries whose sign agrees with the sign of the summed weighted deltas
            agree = scratch("agree", rshape, dev, torch.bool)
            majority = scratch("majority", rshape, dev).copy_(torch.ge(mixed, 0, out=agree)).mul_(2).sub_(1)
            divisor = scratch("divisor", rshape, dev).zero_()
            sign = scratch("sign", rshape, dev)
            for i, (d, w) in enumerate(zip(deltas, weights)):
                torch.eq(torch.sign(d, out=sign), majority, out=agree)
                if i == 0:
                    torch.mul(d, agree, out=mixed)  # the sum was only needed for the majority sign
                else:
                    mixed.add_(d.mul_(agree))
                divisor.add_(agree, alpha=w)
            divisor.masked_fill_(torch.eq(divisor, 0, out=agree), 1)
        else:
            divisor = weight_divisor(weights)
        # int8_mask only saves memory in mergekit; a bool mask gives the same numbers
        if normalize:
            mixed.div_(divisor)
        if lam != 1:
            mixed.mul_(lam)
        out[rows] = mixed.add_(b)
    return out


def _weighted_sum(
    tensors: dict[str, torch.Tensor], base: str, others: list[str], weights: list[float], lam: float, normalize: bool,
    out: torch.Tensor,
) -> torch.Tensor:
    # base + lam * sum(w_i (x_i - base)) / div rewritten as one weighted sum: 3 passes instead of ~10 per input;
    # the two forms differ by float32 rounding only
    div = weight_divisor(weights) if normalize else 1.0
    coef = [lam * w / div for w in weights]
    inputs = [(tensors[base], 1.0 - sum(coef))] + [(tensors[m], c) for m, c in zip(others, coef)]
    if blend.weighted_sum([x for x, _ in inputs], [c for _, c in inputs], out):  # one compiled pass, same bits
        return out
    for rows in row_chunks(tuple(out.shape)):
        acc = scratch("acc", inputs[0][0][rows].shape, out.device).copy_(inputs[0][0][rows]).mul_(inputs[0][1])
        for x, c in inputs[1:]:
            acc.add_(x[rows], alpha=c)
        out[rows] = acc
    return out


def _variant(name: str, how: Sparsification | None, consensus: Literal["sum"] | None, normalize: bool, rescale: bool) -> None:
    extra = {"magnitude_outliers": {"gamma": 0.01}, "della_magprune": {"epsilon": 0.15}}.get(how or "", {})
    register(
        name,
        streams=True,
        tensor_params={"weight": REQUIRED, "density": 1.0, **extra},
        global_params={"int8_mask": False, "normalize": normalize, "rescale": rescale, "lambda": 1.0},
        needs_base=True,
        random=how in ("random", "della_magprune"),
    )(partial(generalized_task_arithmetic, sparsification=how, consensus=consensus))


# name, sparsification, consensus, default normalize, default rescale (mergekit 0.1.5 registry.py)
_variant("task_arithmetic", None, None, False, False)
_variant("ties", "magnitude", "sum", True, False)
_variant("dare_ties", "random", "sum", False, True)
_variant("dare_linear", "random", None, False, True)
_variant("breadcrumbs", "magnitude_outliers", None, False, False)
_variant("breadcrumbs_ties", "magnitude_outliers", "sum", False, False)
_variant("della", "della_magprune", "sum", True, True)
_variant("della_linear", "della_magprune", None, False, True)
