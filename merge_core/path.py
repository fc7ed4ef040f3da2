"""A live model of variable depth for layer-path (passthrough) recipes, without copying the layers it reuses.

`apply_path` points the live model at a recipe's path: each output layer is a decoder-layer module whose
parameters are views of the cached source tensors (one module per reused source layer, kept in a pool and shared
by every position that repeats it); only tensors the recipe scales get storage of their own. Per candidate only
the `ModuleList` and the scaled layers are rebuilt, never the model. `restore_own_storage` gives the model its own
parameters back before an in-place (non-path) merge writes into them, so the cached sources are never written.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import torch
from torch import nn
from transformers import PreTrainedModel

from merge_core.errors import UserError
from merge_core.plan import TensorPlan, merge_tensor, output_layers, plan_tensors
from merge_core.recipe import Recipe
from merge_core.sources import Sources, with_depth

Fetch = Callable[[str, str], torch.Tensor]
Memo = Callable[[tuple, Callable[[], torch.Tensor]], torch.Tensor]
_POOL = "_merge_core_path_pool"  # attribute of the live model: (model id, source layer prefix) -> layer module
_MODE = "_merge_core_path_mode"  # attribute of the live model: True while its parameters are views of the sources


def _set_param(module: nn.Module, rel_name: str, value: torch.Tensor | nn.Parameter) -> None:
    *parents, leaf = rel_name.split(".")
    for p in parents:
        module = getattr(module, p)
    module._parameters[leaf] = value if isinstance(value, nn.Parameter) else nn.Parameter(value, requires_grad=False)


def _get_param(module: nn.Module, rel_name: str) -> nn.Parameter:
    *parents, leaf = rel_name.split(".")
    for p in parents:
        module = getattr(module, p)
    return module._parameters[leaf]


def _layers_of(model: PreTrainedModel) -> nn.ModuleList:
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList) or not len(layers):
        raise UserError(f"live model {type(model).__name__} has no model.layers; build it with build_live_model(sources)")
    return layers


def _empty_layer(model: PreTrainedModel, index: int) -> nn.Module:
    """A decoder layer shaped like the live model's, its parameters on the meta device (no memory)."""
    cls = type(_layers_of(model)[0])
    with torch.device("meta"):
        layer = cls(model.config, index)
    layer.requires_grad_(False)
    layer.eval()
    if any(True for _ in layer.buffers()):
        raise UserError(f"{cls.__name__} keeps buffers per layer; layer paths support Llama-family layers only")
    return layer


def _set_depth(model: PreTrainedModel, sources: Sources, n: int) -> None:
    # the decoder loop reads config.num_hidden_layers, so the config must follow the path
    key = sources.architecture.num_layers_key
    new = with_depth(model.config.to_dict(), key, n)
    setattr(model.config, key, n)
    if "layer_types" in new and hasattr(model.config, "layer_types"):
        model.config.layer_types = new["layer_types"]


def apply_path(model: PreTrainedModel, recipe: Recipe, sources: Sources, fetch: Fetch, memo: Memo) -> None:
    """Make the live model run `recipe`'s layer path (a passthrough recipe), reusing source tensors as views.

    `fetch`: cached source tensors on the model's device in its dtype; `memo(key, make)`: the same cache for
    tensors derived from the sources (both merge_core.live's, which owns the device cache).
    """
    tied = sources.output_tied_for(recipe)  # a path ending in a tied model's layers has no head of its own
    plans = plan_tensors(recipe, sources.architecture, sources.base_config, tied)
    params = dict(model.named_parameters(remove_duplicate=False))
    dtype = next(iter(params.values())).dtype
    pool: dict[tuple[str, str], nn.Module] = model.__dict__.setdefault(_POOL, {})
    by_layer: dict[int, list[TensorPlan]] = defaultdict(list)
    with torch.no_grad():
        for plan in plans:
            if plan.layer is not None:
                by_layer[plan.layer].append(plan)
            elif plan.out_name not in params:
                raise UserError(f"{recipe.where}: the live model has no parameter {plan.out_name}; build it with build_live_model(sources)")
            else:
                _set_param(model, plan.out_name, _tensor(plan, fetch, recipe, dtype, sources, memo))
        if tied:
            _tie(model, sources)
        layers = [_layer(model, j, by_layer[j], fetch, recipe, dtype, pool) for j in sorted(by_layer)]
    if len(layers) != output_layers(recipe, sources.num_layers):
        raise AssertionError("path planning lost a layer")
    model.model.layers = nn.ModuleList(layers)
    _set_depth(model, sources, len(layers))
    model.__dict__[_MODE] = True


def _tensor(plan: TensorPlan, fetch: Fetch, recipe: Recipe, dtype: torch.dtype, sources: Sources | None = None,
            memo: Memo | None = None) -> torch.Tensor:
    """The cached source tensor itself when unscaled, else the scaled tensor in its own storage."""
    (model_id, name), = plan.inputs.items()
    scaled = plan.params[model_id].get("scale") is not None
    if sources is not None and memo is not None and sources.vocabulary is not None and plan.kind in ("embed", "head"):
        # rows re-indexed to the output tokenizer (vocab.py): own storage, cached while unscaled
        device = fetch(model_id, name).device

        def aligned() -> torch.Tensor:
            return merge_tensor(plan, fetch, recipe.seed, device, align=sources.align).to(dtype)

        return aligned() if scaled else memo(("aligned-path", plan.out_name, model_id, str(device), str(dtype)), aligned)
    if not scaled:
        return fetch(model_id, name)
    return merge_tensor(plan, fetch, recipe.seed, fetch(model_id, name).device).to(dtype)


def _layer(model, index: int, plans: list[TensorPlan], fetch, recipe: Recipe, dtype, pool) -> nn.Module:
    prefix = f"model.layers.{index}."
    if not all(p.out_name.startswith(prefix) for p in plans):
        raise UserError(f"{recipe.where}: layer {index}: tensors outside {prefix}*; layer paths support Llama-family models only")
    rel = [p.out_name.removeprefix(prefix) for p in plans]
    (model_id, src0), = plans[0].inputs.items()
    src_prefix = src0.removesuffix(rel[0])
    scaled = [p.params[model_id].get("scale") is not None for p in plans]
    key = (model_id, src_prefix)
    if not any(scaled) and key in pool:
        return pool[key]
    layer = _empty_layer(model, index)
    for p, name in zip(plans, rel):
        _set_param(layer, name, _tensor(p, fetch, recipe, dtype))
    missing = [n for n, t in layer.named_parameters() if t.is_meta]
    if missing:
        raise UserError(f"{recipe.where}: layer {index} has no planned tensor {missing[0]}; check the architecture data")
    if not any(scaled):
        pool[key] = layer  # a reused unchanged layer: one module, shared by every position that repeats it
    return layer


def _tie(model: PreTrainedModel, sources: Sources) -> None:
    for w in sources.architecture.post_weights(sources.base_config):
        if w.kind == "head" and w.tied_to:
            _set_param(model, w.name, _get_param(model, w.tied_to))


def restore_own_storage(model: PreTrainedModel, sources: Sources) -> None:
    """Give a model that ran a path its own parameters again (base depth, contents garbage until the next merge)."""
    if not model.__dict__.get(_MODE):
        return
    first = next(model.parameters())
    device, dtype = first.device, first.dtype
    n = sources.num_layers
    _set_depth(model, sources, n)
    with torch.device(device):
        cls = type(_layers_of(model)[0])
        layers = nn.ModuleList(cls(model.config, i).to(dtype) for i in range(n))
    layers.requires_grad_(False)
    model.model.layers = layers.eval()
    for name, t in list(model.named_parameters(remove_duplicate=False)):
        if not name.startswith("model.layers."):
            _set_param(model, name, torch.empty(t.shape, dtype=dtype, device=device))
    if sources.output_tied:
        _tie(model, sources)
    model.__dict__[_MODE] = False
    model.__dict__.pop(_POOL, None)
