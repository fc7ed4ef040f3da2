"""Linear, SLERP and Model Stock merges (mergekit 0.1.5 semantics), one per-tensor function each."""

from __future__ import annotations

import math
from typing import Any

import torch

from merge_core.methods import blend
from merge_core.methods.chunks import row_chunks, scratch
from merge_core.methods.registry import REQUIRED, register

Tensors = dict[str, torch.Tensor]
Params = dict[str, dict[str, Any]]


@register(
    "linear",
    tensor_params={"weight": REQUIRED},
    global_params={"normalize": True},
    needs_base=False,
    random=False,
    base_needs=("weight",),
    streams=True,
)
def linear(
    tensors: Tensors, base: str | None, params: Params, options: dict[str, Any], generator: torch.Generator | None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted sum of every input, divided by the weight sum when `normalize` (float32 math, chunk by chunk)."""
    inputs = list(tensors.values())
    weights = [float(params[m]["weight"]) for m in tensors]
    total = float(torch.tensor(weights, dtype=torch.float32).sum())
    if options["normalize"] and total == 0:
        raise ValueError("linear weights sum to 0 with normalize: true; give some model a non-zero weight")
    if options["normalize"]:  # folded into the weights: one pass fewer, differs from sum-then-divide by rounding only
        weights = [w / total for w in weights]
    first = inputs[0]
    out = torch.empty(first.shape, dtype=torch.float32, device=first.device) if out is None else out
    if blend.weighted_sum(inputs, weights, out):  # one compiled pass, same bits as the loop below
        return out
    for rows in row_chunks(tuple(first.shape)):
        acc = scratch("acc", inputs[0][rows].shape, first.device).copy_(inputs[0][rows]).mul_(weights[0])
        for x, w in zip(inputs[1:], weights[1:]):
            acc.add_(x[rows], alpha=w)
        out[rows] = acc
    return out


@register("slerp", tensor_params={}, global_params={"t": REQUIRED}, needs_base=True, random=False, exact_inputs=2)
def slerp(tensors: Tensors, base: str | None, params: Params, options: dict[str, Any], generator: torch.Generator | None) -> torch.Tensor:
    """Spherical interpolation from the base (t=0) to the other model (t=1); lerp when ~parallel."""
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    if len(tensors) != 2 or base not in tensors:
        raise ValueError("slerp needs exactly two inputs, one of them the base model")
    v0 = tensors[base]
    v1 = next(v for m, v in tensors.items() if m != base)
    t = float(options["t"])
    eps = 1e-8
    n0, n1 = v0.norm(), v1.norm()
    u0 = v0 / n0 if n0 > eps else v0
    u1 = v1 / n1 if n1 > eps else v1
    dot = float((u0 * u1).sum())
    if abs(dot) > 0.9995:
        return (1 - t) * v0 + t * v1
    theta0 = math.acos(dot)
    s0 = math.sin(theta0 - theta0 * t) / math.sin(theta0)
    s1 = math.sin(theta0 * t) / math.sin(theta0)
    return s0 * v0 + s1 * v1


@register(
    "model_stock",
    tensor_params={},
    global_params={"filter_wise": False},
    needs_base=True,
    random=False,
    min_non_base=2,
)
def model_stock(tensors: Tensors, base: str | None, params: Params, options: dict[str, Any], generator: torch.Generator | None) -> torch.Tensor:
    """Move from the base toward the models' mean by t = N cos / (1 + (N-1) cos) of their offsets."""
    if base is None or base not in tensors:
        raise ValueError("model_stock needs the base model's tensor")
    w0 = tensors[base]
    ws = [v for m, v in tensors.items() if m != base]
    if not ws:
        return w0
    if len(ws) < 2:
        raise ValueError("model_stock needs at least two models besides the base")
    shape = w0.shape
    if options["filter_wise"]:
        # one angle per output row; 1-D tensors count as a single row
        if w0.dim() == 1:
            w0, ws = w0.unsqueeze(0), [w.unsqueeze(0) for w in ws]
    else:
        w0, ws = w0.reshape(-1), [w.reshape(-1) for w in ws]
    offsets = [w - w0 for w in ws]
    cosines = []
    for i in range(len(offsets)):
        for j in range(i + 1, len(offsets)):
            norms = offsets[i].norm(dim=-1) * offsets[j].norm(dim=-1)
            cosines.append(((offsets[i] * offsets[j]).sum(dim=-1) / norms.clamp(min=1e-6)).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    n = len(ws)
    denominator = 1 + (n - 1) * cos
    singular = denominator.abs() < 1e-6
    # no finite estimate at the singularity: keep the base there rather than blow up
    t = torch.where(singular, torch.zeros_like(cos), n * cos / torch.where(singular, torch.ones_like(denominator), denominator))
    mean = sum(ws) / n
    return (t * mean + (1 - t) * w0).reshape(shape)
