"""The task-arithmetic family: one sparsify-then-combine core, one line per variant (mergekit's table)."""

from __future__ import annotations

import hashlib
from functools import partial
from typing import Any, Literal

import torch

from merge_core.methods import sparsify as sp
from merge_core.methods.registry import REQUIRED, register

Sparsification = Literal["magnitude", "random", "magnitude_outliers", "della_magprune"]


def model_generator(generator: torch.Generator | None, model: str) -> torch.Generator:
    """A CPU generator for one model's mask, derived from the tensor's generator and the model id."""
    root = generator.initial_seed() if generator is not None else 0
    digest = hashlib.sha256(f"{root}\0{model}".encode()).digest()
    return torch.Generator(device="cpu").manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def _sparsify(
    delta: torch.Tensor, how: Sparsification, p: dict[str, Any], rescale: bool, gen: torch.Generator
) -> torch.Tensor:
    density = float(p["density"])
    if how == "magnitude":
        return sp.magnitude(delta, density, rescale)
    if how == "magnitude_outliers":
        return sp.magnitude_outliers(delta, density, rescale, float(p["gamma"]))
    if how == "random":
        return sp.bernoulli(delta, density, rescale, gen)
    return sp.della_magprune(delta, density, rescale, float(p["epsilon"]), gen)


def generalized_task_arithmetic(
    tensors: dict[str, torch.Tensor],
    base: str | None,
    params: dict[str, dict[str, Any]],
    options: dict[str, Any],
    generator: torch.Generator | None,
    *,
    sparsification: Sparsification | None,
    consensus: Literal["sum"] | None,
) -> torch.Tensor:
    """base + lambda * combine(weight_i * sparsify(model_i - base)), normalized by the used weights."""
    if base is None or base not in tensors:
        raise ValueError("task-arithmetic methods need the base model's tensor")
    base_t = tensors[base]
    others = [m for m in tensors if m != base]
    if not others:
        return base_t
    deltas = []
    for m in others:
        delta = tensors[m] - base_t
        if sparsification is not None:
            delta = _sparsify(delta, sparsification, params[m], bool(options["rescale"]), model_generator(generator, m))
        deltas.append(delta)
    stacked = torch.stack(deltas)
    weights = torch.tensor([float(params[m]["weight"]) for m in others], dtype=stacked.dtype, device=stacked.device)
    weights = weights.view(-1, *([1] * base_t.dim()))
    weighted = stacked * weights
    if consensus == "sum":
        # TIES election: keep entries whose sign agrees with the sign of the summed weighted deltas
        majority = torch.where(weighted.sum(dim=0) >= 0, 1.0, -1.0).to(weighted.dtype)
        mask = weighted.sign() == majority
        mixed = (weighted * mask).sum(dim=0)
        divisor = (weights * mask).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = weighted.sum(dim=0)
        divisor = weights.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    # int8_mask only saves memory in mergekit; a bool mask gives the same numbers
    if options["normalize"]:
        mixed = mixed / divisor
    if float(options["lambda"]) != 1:
        mixed = mixed * float(options["lambda"])
    return base_t + mixed


def _variant(name: str, how: Sparsification | None, consensus: Literal["sum"] | None, normalize: bool, rescale: bool) -> None:
    extra = {"magnitude_outliers": {"gamma": 0.01}, "della_magprune": {"epsilon": 0.15}}.get(how or "", {})
    register(
        name,
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
