"""The one registry of merge methods: a name -> MethodSpec table filled by `register`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


class _Required:
    """Marker default: the parameter has no default and must be given in the recipe."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


class MethodFn(Protocol):
    """Per-tensor merge: float32 tensors keyed by model id in, one float32 tensor out."""

    def __call__(
        self,
        tensors: dict[str, torch.Tensor],
        base: str | None,
        params: dict[str, dict[str, Any]],
        options: dict[str, Any],
        generator: torch.Generator | None,
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class MethodSpec:
    """A merge method: its function and its parameter schema (names -> defaults or REQUIRED)."""

    name: str
    fn: MethodFn
    tensor_params: dict[str, Any]
    global_params: dict[str, Any]
    needs_base: bool
    random: bool
    # input-count rules the recipe validator enforces (inputs counted after adding the base)
    exact_inputs: int | None = None
    min_non_base: int = 0
    # per-model params that even the base model must carry (linear weighs every input)
    base_needs: tuple[str, ...] = field(default=())
    # fn takes inputs in their stored dtype (upcasting a row chunk at a time) and an `out=` tensor to fill
    streams: bool = False
    # slices may repeat source layers and set the output's depth (mergekit's passthrough); the base is ignored there
    layer_paths: bool = False


METHODS: dict[str, MethodSpec] = {}

# Value ranges checked when a recipe is read and again when a tensor's params are resolved.
PARAM_BOUNDS: dict[str, tuple[float, float]] = {
    "density": (0.0, 1.0),
    "gamma": (0.0, 1.0),
    "epsilon": (0.0, 1.0),
    # slerp interpolates on the arc from the base (t=0) to the other model (t=1); mergekit does not check t, but
    # a t outside [0, 1] extrapolates (t=1e30 gives a 1e27-scale model that loads and scores garbage)
    "t": (0.0, 1.0),
}
BOOL_PARAMS = frozenset({"normalize", "rescale", "int8_mask", "filter_wise"})


def register(name: str, **spec: Any) -> Callable[[MethodFn], MethodFn]:
    """Decorator: add `fn` to METHODS under `name` with the given MethodSpec fields."""

    def add(fn: MethodFn) -> MethodFn:
        METHODS[name] = MethodSpec(name=name, fn=fn, **spec)
        return fn

    return add
