"""Recipe -> one TensorPlan per output tensor (mergekit 0.1.5 planning rules), and merging one plan."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from merge_core.architecture import Architecture, WeightSpec
from merge_core.errors import UserError
from merge_core.methods import METHODS, PARAM_BOUNDS, REQUIRED, MethodSpec
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
    level: tuple  # where `params` lives in the recipe (_params_at)


@dataclass(frozen=True)
class _Slice:
    sources: tuple[_Source, ...]
    length: int
    base: str | None
    params: Params
    level: tuple


_TOP: tuple = ("parameters",)
_NONE: tuple = ("none",)  # the base that the models form adds: no parameters of its own


def _params_at(recipe: Recipe, level: tuple) -> Params:
    """The Params of `recipe` at `level`: models[i], slices[i], slices[i].sources[j], the top level or none."""
    if level == _TOP:
        return recipe.parameters
    if level[0] == "models":
        return recipe.models[level[1]].parameters
    if level[0] == "slices":
        s = recipe.slices[level[1]]
        return s.parameters if len(level) == 2 else s.sources[level[2]].parameters
    return {}


def _locate(tensor_name: str, setting: Setting, t: float) -> tuple[int | None, tuple[int, int, float] | None] | None:
    """Where a setting's value for one tensor at gradient position t sits: (condition index, gradient position),
    None when no condition applies. Depends on the filters and the gradient lengths only, never on the numbers."""
    cond = None
    if isinstance(setting, tuple) and setting and isinstance(setting[0], Condition):
        for i, c in enumerate(setting):
            if c.filter is None or c.filter == "*" or (tensor_name and c.filter in tensor_name):
                cond, setting = i, c.value
                break
        else:
            return None
    if not isinstance(setting, tuple):
        return cond, None
    scaled = t * (len(setting) - 1)
    i0 = int(scaled)
    return cond, (i0, min(len(setting) - 1, i0 + 1), scaled - i0)


def _value_at(setting: Setting, cond: int | None, grad: tuple[int, int, float] | None) -> Any:
    if cond is not None:
        setting = setting[cond].value  # type: ignore[index, union-attr]
    if grad is None:
        return setting
    i0, i1, frac = grad
    return (1 - frac) * setting[i0] + frac * setting[i1]  # type: ignore[index]


def evaluate_setting(tensor_name: str, setting: Setting, t: float) -> Any:
    """A setting's value for one tensor at gradient position t (mergekit's evaluate_setting)."""
    where = _locate(tensor_name, setting, t)
    return None if where is None else _value_at(setting, *where)


@dataclass(frozen=True)
class _Ref:
    """Where one parameter's value for one tensor is read from: the recipe's Params at `level`, then _locate's spot."""

    level: tuple
    name: str
    cond: int | None
    grad: tuple[int, int, float] | None

    def value(self, recipe: Recipe) -> Any:
        return _value_at(_params_at(recipe, self.level)[self.name], self.cond, self.grad)


@dataclass(frozen=True)
class _TensorTemplate:
    """One output tensor planned for a recipe's structure: its inputs and, per parameter, where its value is read."""

    weight: WeightSpec
    inputs: tuple[tuple[str, str], ...]  # (model id, source tensor name)
    base: str | None
    options: tuple[tuple[str, _Ref | None, Any], ...]  # (name, ref, default)
    params: tuple[tuple[str, str, tuple[tuple[str, _Ref | None, Any], ...]], ...]  # (model, source name, specs)


def _slices(recipe: Recipe, n_layers: int) -> list[_Slice]:
    if recipe.models is not None:
        srcs = [_Source(m.model, 0, m.parameters, ("models", i)) for i, m in enumerate(recipe.models)]
        if recipe.base_model and recipe.base_model not in {m.model for m in recipe.models}:
            srcs.append(_Source(recipe.base_model, 0, {}, _NONE))
        return [_Slice(tuple(srcs), n_layers, None, {}, _NONE)]
    out, total = [], 0
    for i, s in enumerate(recipe.slices or ()):
        for j, src in enumerate(s.sources):
            if src.layer_range[1] > n_layers:
                raise UserError(
                    f"{recipe.where}: slices[{i}].sources[{j}].layer_range: {list(src.layer_range)} ends past "
                    f"the model's {n_layers} layers; use an end of at most {n_layers}"
                )
        length = s.sources[0].layer_range[1] - s.sources[0].layer_range[0]
        srcs = tuple(_Source(x.model, x.layer_range[0], x.parameters, ("slices", i, j)) for j, x in enumerate(s.sources))
        out.append(_Slice(srcs, length, s.base_model, s.parameters, ("slices", i)))
        total += length
    if total != n_layers and not METHODS[recipe.merge_method].layer_paths:
        raise UserError(
            f"{recipe.where}: slices: cover {total} layers but the models have {n_layers}; "
            f"make the layer ranges add up to {n_layers}"
        )
    return out


def head_models(recipe: Recipe, n_layers: int) -> list[str]:
    """The models the output head is merged from: the last slice's sources, cut to the first slice's count (mergekit
    0.1.5's pairing of the post weights); for a `models:` recipe, every model and the base."""
    return _head_models(_slices(recipe, n_layers))


def _head_models(slices: list[_Slice]) -> list[str]:
    return [s.model for s in slices[-1].sources][: len(slices[0].sources)]


def output_layers(recipe: Recipe, n_layers: int) -> int:
    """Decoder layers of the output: the sources' count, or the slices' total length (a passthrough path)."""
    if recipe.slices is None:
        return n_layers
    return sum(s.sources[0].layer_range[1] - s.sources[0].layer_range[0] for s in recipe.slices)


def _lookup(recipe: Recipe, name: str, model: str | None, tensor: str, t: float, sl: _Slice) -> _Ref | None:
    # precedence of mergekit's ConfigReader: source, then slice, then top-level parameters
    levels: list[tuple[tuple, Params]] = [(s.level, s.params) for s in sl.sources if s.model == model] if model else []
    levels += [(sl.level, sl.params), (_TOP, recipe.parameters)]
    for level, params in levels:
        if name in params:
            where = _locate(tensor, params[name], t)
            if where is not None:
                return _Ref(level, name, *where)
    return None


def _template(recipe: Recipe, w: WeightSpec, sources: list[tuple[str, str]], t: float, sl: _Slice) -> _TensorTemplate:
    spec = METHODS[recipe.merge_method]
    options = tuple((name, _lookup(recipe, name, None, w.name, t, sl), default) for name, default in spec.global_params.items())
    params = tuple(
        (model, src_name, tuple((name, _lookup(recipe, name, model, src_name, t, sl), default)
                                for name, default in spec.tensor_params.items()))
        for model, src_name in sources
    )
    return _TensorTemplate(w, tuple(sources), sl.base or recipe.base_model, options, params)


def _fail(recipe: Recipe, key: str, problem: str, fix: str) -> UserError:
    return UserError(f"{recipe.where}: {key}: {problem}; {fix}")


_UNBOUNDED = (float("-inf"), float("inf"))


def _bind(tt: _TensorTemplate, recipe: Recipe, spec: MethodSpec) -> TensorPlan:
    """The TensorPlan of one template with `recipe`'s values, checked as they are read (mergekit 0.1.5's rules)."""
    w, base = tt.weight, tt.base
    options = {}
    for name, ref, default in tt.options:
        value = ref.value(recipe) if ref is not None else None
        if value is None and default is REQUIRED:
            raise _fail(recipe, f"parameters.{name}", f"no value for {w.name}", f"set {name} for every tensor")
        options[name] = default if value is None else value
    params: dict[str, dict[str, Any]] = {}
    for model, src_name, specs in tt.params:
        p = params[model] = {}
        for name, ref, default in specs:
            value = ref.value(recipe) if ref is not None else None
            if value is None and default is REQUIRED and (model != base or name in spec.base_needs):
                raise _fail(recipe, f"{model}.parameters.{name}", f"no value for {src_name}", f"give {model} a {name} that covers it")
            if value is None:
                value = None if default is REQUIRED else default
            lo, hi = PARAM_BOUNDS.get(name, _UNBOUNDED)
            if value is not None and not lo <= value <= hi:
                raise _fail(recipe, f"{model}.parameters.{name}", f"{value} is outside [{lo:g}, {hi:g}] for {src_name}", f"keep {name} in range")
            p[name] = value
        if "epsilon" in p and model != base and 0 < p["density"] < 1 and not (0 < p["density"] - p["epsilon"] and p["density"] + p["epsilon"] < 1):
            raise _fail(recipe, f"{model}.parameters.epsilon", f"density {p['density']:g} +/- epsilon {p['epsilon']:g} leaves (0, 1) for {src_name}",
                        "choose epsilon < min(density, 1 - density)")
    return TensorPlan(w.name, dict(tt.inputs), recipe.merge_method, base, params, options, w.layer, w.kind, recipe.where)


def _shape(setting: Setting) -> Any:
    if isinstance(setting, tuple) and setting and isinstance(setting[0], Condition):
        return tuple((c.filter, _shape(c.value)) for c in setting)  # type: ignore[union-attr]
    return len(setting) if isinstance(setting, tuple) else None


def _params_shape(params: Params) -> tuple:
    return tuple((name, _shape(v)) for name, v in params.items())


def structure(recipe: Recipe) -> tuple:
    """What a tensor plan depends on: method, models, slices, parameter names, filters and gradient lengths (no numbers)."""
    models = tuple((m.model, _params_shape(m.parameters)) for m in recipe.models or ()) if recipe.models is not None else None
    slices = None if recipe.slices is None else tuple(
        (tuple((x.model, x.layer_range, _params_shape(x.parameters)) for x in s.sources), s.base_model, _params_shape(s.parameters))
        for s in recipe.slices
    )
    return (recipe.merge_method, recipe.base_model, models, slices, _params_shape(recipe.parameters))


@dataclass(frozen=True)
class RecipePlan:
    """The tensor plan of a recipe's structure, made once; `bind` fills in the values of any recipe of that structure.

    A search's trials differ only in numbers (the genome's values): planning (layer ranges, filters, gradient
    positions, which level a parameter comes from) is done once, and each trial only reads its values.
    """

    structure: tuple
    templates: tuple[_TensorTemplate, ...]

    def bind(self, recipe: Recipe) -> list[TensorPlan]:
        """One TensorPlan per output tensor, with `recipe`'s values; ValueError if its structure is another one."""
        if structure(recipe) != self.structure:
            raise ValueError(f"{recipe.where}: its models, parameter names, filters or gradient lengths differ from "
                             "the planned recipe's; plan it with plan_recipe")
        spec = METHODS[recipe.merge_method]
        return [_bind(tt, recipe, spec) for tt in self.templates]


def plan_recipe(recipe: Recipe, arch: Architecture, config: dict[str, Any], output_tied: bool) -> RecipePlan:
    """Plan every output tensor of `recipe`'s structure for a model shaped like `config` (head only if untied)."""
    slices = _slices(recipe, arch.num_layers(config))
    out: list[_TensorTemplate] = []
    first, last = slices[0], slices[-1]
    for w in arch.pre_weights(config):
        out.append(_template(recipe, w, [(s.model, w.name) for s in first.sources], 0.0, first))
    layer = 0
    for sl in slices:
        for idx in range(sl.length):
            t = idx / (sl.length - 1) if sl.length > 1 else 1.0
            inputs = [(s.model, arch.layer_weights(config, s.start + idx)) for s in sl.sources]  # once per layer
            for w_idx, w in enumerate(arch.layer_weights(config, layer)):
                out.append(_template(recipe, w, [(m, ws[w_idx].name) for m, ws in inputs], t, sl))
            layer += 1
    for w in arch.post_weights(config):
        if w.kind == "head" and output_tied:
            continue
        out.append(_template(recipe, w, [(m, w.name) for m in _head_models(slices)], 0.0, last))
    return RecipePlan(structure(recipe), tuple(out))


def plan_tensors(recipe: Recipe, arch: Architecture, config: dict[str, Any], output_tied: bool) -> list[TensorPlan]:
    """Plan every output tensor of `recipe` for a model shaped like `config` (head only if untied)."""
    plan, spec = plan_recipe(recipe, arch, config, output_tied), METHODS[recipe.merge_method]
    return [_bind(tt, recipe, spec) for tt in plan.templates]


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
