"""mergekit's `passthrough`: one input per tensor, copied, optionally multiplied by `scale` (layer stacking)."""

from __future__ import annotations

from typing import Any

import torch

from merge_core.methods.registry import register


@register(
    "passthrough",
    tensor_params={"scale": None},
    global_params={},
    needs_base=False,
    random=False,
    exact_inputs=1,
    layer_paths=True,
)
def passthrough(
    tensors: dict[str, torch.Tensor], base: str | None, params: dict[str, dict[str, Any]], options: dict[str, Any],
    generator: torch.Generator | None,
) -> torch.Tensor:
    """The single input, times its `scale` when one applies to this tensor (mergekit: `tensor * scale`)."""
    if len(tensors) != 1:
        raise ValueError(f"passthrough takes exactly one model per slice, got {len(tensors)}; give each slice one source")
    (model, tensor), = tensors.items()
    scale = params[model].get("scale")
    return tensor if scale is None else tensor * float(scale)
