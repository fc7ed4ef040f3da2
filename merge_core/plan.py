"""Recipe -> one TensorPlan per output tensor (mergekit 0.1.5 planning rules), and merging one plan."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from merge_core.architecture import Architecture, WeightSpec
from merge_core.errors import UserError
from merge_core.methods import METHODS, PARAM_BOUNDS, REQUIRED
from merge_core.recipe import Condition, Params, Recipe, Setting


@dataclass(frozen=True)
class TensorPlan:
    """How to build one output tensor: inputs (model id -> source tensor name) and resolved params."""

    out_name: str
    inputs: dict[str, str]
    method: str
    base: str | None
    params: dict[str, dict[str, Any]]
    options: dict[str, Any]
    layer: int | None = None
    kind: str = "layer"
    where: str = field(default="recipe", compare=False)


@dataclass(frozen=True)
class _Source:
    model: str
    start: int
    params: Params


@dataclass(frozen=True)
class _Slice:
    sources: tuple[_Source, ...]
    length: int
    base: str | None
    params: Params


def evaluate_setting(tensor_name: str, setting: Setting, t: float) -> Any:
    """A setting's value for one tensor at gradient position t (mergekit's evaluate_setting)."""
    if not isinstance(setting, tuple):
        return setting
    if setting and isinstance(setting[0], Condition):
        for cond in setting:
            if cond.filter is None or cond.filter == "*" or (tensor_name and cond.filter in tensor_name):
                return evaluate_setting(tensor_name, cond.value, t)
        return None
    scaled = t * (len(setting) - 1)
    i0 = int(scaled)
    i1 = min(len(setting) - 1, i0 + 1)
    frac = scaled - i0
    return (1 - frac) * setting[i0] + frac * setting[i1]


def _slices(recipe: Recipe, n_layers: int) -> list[_Slice]:
    if recipe.models is not None:
        srcs = [_Source(m.model, 0, m.parameters) for m in recipe.models]
        if recipe.base_model and recipe.base_model not in {m.model for m in recipe.models}:
            srcs.append(_Source(recipe.base_model, 0, {}))
        return [_Slice(tuple(srcs), n_layers, None, {})]
    out, total = [], 0
    for i, s in enumerate(recipe.slices or ()):
        for j, src in enumerate(s.sources):
            if src.layer_range[1] > n_layers:
                raise UserError(
                    f"{recipe.where}: slices[{i}].sources[{j}].layer_range: {list(src.layer_range)} ends past "
                    f"the model's {n_layers} layers; use an end of at most {n_layers}"
                )
        length = s.sources[0].layer_range[1] - s.sources[0].layer_range[0]
        srcs = tuple(_Source(x.model, x.layer_range[0], x.parameters) for x in s.sources)
        out.append(_Slice(srcs, length, s.base_model, s.parameters))
        total += length
    if total != n_layers and not METHODS[recipe.merge_method].layer_paths:
        raise UserError(
            f"{recipe.where}: slices: cover {total} layers but the models have {n_layers}; "
            f"make the layer ranges add up to {n_layers}"
        )
    return out


def output_layers(recipe: Recipe, n_layers: int) -> int:
    """Decoder layers of the output: the sources' count, or the slices' total length (a passthrough path)."""
    if recipe.slices is None:
        return n_layers
    return sum(s.sources[0].layer_range[1] - s.sources[0].layer_range[0] for s in recipe.slices)


class _Planner:
    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe
        self.spec = METHODS[recipe.merge_method]

    def lookup(self, name: str, model: str | None, tensor: str, t: float, sl: _Slice) -> Any:
        # precedence of mergekit's ConfigReader: source, then slice, then top-level parameters
        levels: list[Params] = [s.params for s in sl.sources if s.model == model] if model else []
        levels += [sl.params, self.recipe.parameters]
        for params in levels:
            if name in params:
                value = evaluate_setting(tensor, params[name], t)
                if value is not None:
                    return value
        return None

    def fail(self, key: str, problem: str, fix: str) -> UserError:
        return UserError(f"{self.recipe.where}: {key}: {problem}; {fix}")

    def plan(self, w: WeightSpec, sources: list[tuple[str, str]], t: float, sl: _Slice) -> TensorPlan:
        recipe, spec = self.recipe, self.spec
        options = {}
        for name, default in spec.global_params.items():
            value = self.lookup(name, None, w.name, t, sl)
            if value is None and default is REQUIRED:
                raise self.fail(f"parameters.{name}", f"no value for {w.name}", f"set {name} for every tensor")
            options[name] = default if value is None else value
        base = sl.base or recipe.base_model
        params: dict[str, dict[str, Any]] = {}
        for model, src_name in sources:
            params[model] = {}
            for name, default in spec.tensor_params.items():
                value = self.lookup(name, model, src_name, t, sl)
                if value is None and default is REQUIRED and (model != base or name in spec.base_needs):
                    raise self.fail(f"{model}.parameters.{name}", f"no value for {src_name}", f"give {model} a {name} that covers it")
                if value is None:
                    value = None if default is REQUIRED else default
                lo, hi = PARAM_BOUNDS.get(name, (float("-inf"), float("inf")))
                if value is not None and not lo <= value <= hi:
                    raise self.fail(f"{model}.parameters.{name}", f"{value} is outside [{lo:g}, {hi:g}] for {src_name}", f"keep {name} in range")
                params[model][name] = value
            p = params[model]
            if "epsilon" in p and model != base and 0 < p["density"] < 1 and not (0 < p["density"] - p["epsilon"] and p["density"] + p["epsilon"] < 1):
                raise self.fail(f"{model}.parameters.epsilon", f"density {p['density']:g} +/- epsilon {p['epsilon']:g} leaves (0, 1) for {src_name}",
                                "choose epsilon < min(density, 1 - density)")
        return TensorPlan(w.name, dict(sources), recipe.merge_method, base, params, options, w.layer, w.kind, recipe.where)


def plan_tensors(recipe: Recipe, arch: Architecture, config: dict[str, Any], output_tied: bool) -> list[TensorPlan]:
    """Plan every output tensor of `recipe` for a model shaped like `config` (head only if untied)."""
    slices = _slices(recipe, arch.num_layers(config))
    planner = _Planner(recipe)
    out: list[TensorPlan] = []
    first, last = slices[0], slices[-1]
    for w in arch.pre_weights(config):
        out.append(planner.plan(w, [(s.model, w.name) for s in first.sources], 0.0, first))
    layer = 0
    for sl in slices:
        for idx in range(sl.length):
            t = idx / (sl.length - 1) if sl.length > 1 else 1.0
            for w_idx, w in enumerate(arch.layer_weights(config, layer)):
                src = [(s.model, arch.layer_weights(config, s.start + idx)[w_idx].name) for s in sl.sources]
                out.append(planner.plan(w, src, t, sl))
            layer += 1
    for w in arch.post_weights(config):
        if w.kind == "head" and output_tied:
            continue
        # mergekit 0.1.5 pairs post weights with the last slice's sources, cut to the first slice's count
        models = [s.model for s in last.sources][: len(first.sources)]
        out.append(planner.plan(w, [(m, w.name) for m in models], 0.0, last))
    return out


def tensor_seed(seed: int, name: str) -> int:
    """Stable 63-bit seed for one output tensor (hashlib, so it survives process restarts)."""
    digest = hashlib.sha256(f"{seed}\0{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def merge_tensor(
    plan: TensorPlan,
    fetch: Callable[[str, str], torch.Tensor],
    seed: int,
    device: torch.device | str = "cpu",
    out: torch.Tensor | None = None,
    align: Callable[[TensorPlan, dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
) -> torch.Tensor:
    """Fetch the plan's inputs, merge them in float32 on `device`; return the float32 result, or `out` filled with it.

    `align` (Sources.align) re-indexes embedding/head rows to the output tokenizer before merging.
    """
    spec = METHODS[plan.method]
    tensors = {m: fetch(m, name).to(device=device) for m, name in plan.inputs.items()}
    if align is not None:
        tensors = align(plan, tensors)
    if not spec.streams:  # streaming methods upcast a chunk at a time instead of whole tensors
        tensors = {m: v.to(torch.float32) for m, v in tensors.items()}
    shapes = {m: tuple(v.shape) for m, v in tensors.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{m} {list(s)}" for m, s in shapes.items())
        raise UserError(f"{plan.where}: {plan.out_name}: shapes differ ({listed}); merge models of the same size and vocabulary")
    if out is not None and tuple(out.shape) != next(iter(shapes.values())):
        raise ValueError(f"{plan.out_name}: out has shape {list(out.shape)}, inputs {list(next(iter(shapes.values())))}")
    generator = torch.Generator(device="cpu").manual_seed(tensor_seed(seed, plan.out_name)) if spec.random else None
    try:
        if spec.streams:
            return spec.fn(tensors, plan.base, plan.params, plan.options, generator, out=out)
        merged = spec.fn(tensors, plan.base, plan.params, plan.options, generator).to(torch.float32)
    except ValueError as e:
        raise UserError(f"{plan.where}: {plan.out_name}: {e}") from None
    return merged if out is None else out.copy_(merged)
