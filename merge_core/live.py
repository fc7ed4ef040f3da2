"""Apply a recipe into a live model in place: built once, then overwritten parameter by parameter per candidate."""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from merge_core.device import resolve_device, resolve_dtype
from merge_core.errors import UserError
from merge_core.methods import precomputed
from merge_core.plan import RecipePlan, merge_tensor, plan_recipe, plan_tensors
from merge_core.recipe import Recipe
from merge_core.sources import Sources, has_nonfinite


def build_live_model(
    sources: Sources, device: str | torch.device | None = "auto", dtype: str | torch.dtype | None = None
) -> PreTrainedModel:
    """One model shaped like the base, on `device`, tied per the rule; its weights are garbage until merge_into."""
    from transformers.initialization import no_init_weights

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, sources.models[sources.base_id].dtype)
    config_dict = sources.output_config(dt)
    config = AutoConfig.for_model(**config_dict)
    # Random init would be thrown away by the first merge; skipping it saves seconds on 1B models.
    with no_init_weights(), torch.device(dev):
        model = AutoModelForCausalLM.from_config(config, dtype=dt)
    if sources.output_tied:
        model.tie_weights()
    model.requires_grad_(False)
    model.eval()
    return model


def plan_merge(recipe: Recipe, sources: Sources) -> RecipePlan:
    """The tensor plan of `recipe`'s structure for these sources: made once per search, passed to every merge_into."""
    return plan_recipe(recipe, sources.architecture, sources.base_config, _live_tied(recipe, sources))


def _live_tied(recipe: Recipe, sources: Sources) -> bool:
    """The recipe's tie rule, which a merge into the live model (tied only if every source is) must share."""
    tied = sources.output_tied_for(recipe)
    if tied != sources.output_tied:
        # only a non-passthrough `slices:` recipe whose last slice holds only tied models, beside untied ones
        raise UserError(f"{recipe.where}: its head is merged only from tied models while other sources are untied; "
                        "the live model cannot follow that, build it with `evolve merge`")
    return tied


def merge_into(
    model: PreTrainedModel, recipe: Recipe, sources: Sources, cache: bool = True, plan: RecipePlan | None = None
) -> None:
    """Write every tensor the recipe plans into the model's parameters in place (no state_dict copies).

    With `cache`, source tensors are kept on the model's device after the first call, so later candidates
    merge without reading the checkpoints again (memory: the sources' total size, in their stored dtype).
    `plan` (plan_merge of a recipe of the same structure, e.g. the search's first) skips planning: only this
    recipe's values are read into it. A passthrough recipe (a layer path, any depth) is applied by
    merge_core.path: its layers are views of the cached sources, only scaled tensors get their own storage.
    """
    from merge_core.methods import METHODS
    from merge_core.path import apply_path, restore_own_storage

    if METHODS[recipe.merge_method].layer_paths:
        # a layer path changes the depth: layers become views of the cached sources (merge_core.path)
        first = next(model.parameters())
        fetch = cached_fetch(sources, first.device, first.dtype)
        apply_path(model, recipe, sources, fetch, _memo(sources))
        return
    restore_own_storage(model, sources)  # a model that ran a path must not write into the cached sources
    if plan is not None:
        plans = plan.bind(recipe)
    else:
        plans = plan_tensors(recipe, sources.architecture, sources.base_config, _live_tied(recipe, sources))
    params = dict(model.named_parameters(remove_duplicate=False))
    missing = [p.out_name for p in plans if p.out_name not in params]
    if missing:
        raise UserError(f"{recipe.where}: the live model has no parameter {missing[0]}; build it with build_live_model(sources)")
    device = next(iter(params.values())).device
    fetch = cached_fetch(sources, device) if cache else sources.get
    align = _cached_align(sources) if cache else sources.align
    with torch.no_grad(), precomputed.active(sources):  # a search's per-search trims, if attached
        for p in plans:
            # streaming methods write row chunks straight into the parameter: no whole-tensor float32 copy
            merge_tensor(p, fetch, recipe.seed, device, out=params[p.out_name].data, align=align)


# The device cache (Sources.device_cache, read and written here only): source tensors on the live model's device,
# so candidates after the first never read the checkpoints again; kept as long as the Sources.


def cached_fetch(sources: Sources, device: torch.device, dtype: torch.dtype | None = None) -> Callable[[str, str], torch.Tensor]:
    """A fetch of source tensors from the device cache: in their stored dtype, or in `dtype` (a layer path's views).

    One copy per source tensor and device, keyed by checkpoint and *resolved* name, so a tied head shares its
    embedding's copy; a copy in another dtype is added only when `dtype` differs from the stored one.
    """
    store = sources.device_cache

    def fetch(model_id: str, name: str) -> torch.Tensor:
        ck = sources.models[model_id]
        key = (ck.cache_key, ck.resolve(name), str(device))
        tensor = store.get(key)
        if tensor is None:
            cpu = ck.get(name)
            if dtype is not None and cpu.dtype != dtype:
                typed = key + (str(dtype),)
                if typed not in store:  # never a stored-dtype copy on the device that nobody reads
                    store[typed] = cpu.to(device=device, dtype=dtype)
                return store[typed]
            tensor = store[key] = cpu.to(device)
        if dtype is None or tensor.dtype == dtype:
            return tensor
        typed = key + (str(dtype),)
        if typed not in store:
            store[typed] = tensor.to(dtype)
        return store[typed]

    return fetch


def _memo(sources: Sources) -> Callable[[tuple, Callable[[], torch.Tensor]], torch.Tensor]:
    # a tensor derived from the sources only (a layer path's re-indexed embedding), computed once per search
    store = sources.device_cache

    def memo(key: tuple, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        if key not in store:
            store[key] = make()
        return store[key]

    return memo


def _cached_align(sources: Sources) -> Callable:
    # Re-indexed embedding/head rows depend only on the sources: computed once per search, like the fetches.
    store = sources.device_cache

    def align(plan, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if sources.vocabulary is None or plan.kind not in ("embed", "head"):
            return tensors
        key = ("aligned", plan.out_name, tuple(tensors), str(next(iter(tensors.values())).device))
        if key not in store:
            store[key] = sources.align(plan, tensors)
        return store[key]

    return align


def first_nonfinite(model: PreTrainedModel) -> str | None:
    """Name of the first parameter holding NaN or inf (a candidate merged from overflowing parameters), else None."""
    for name, param in model.named_parameters():
        if has_nonfinite(param.data):
            return name
    return None
