"""Devices and dtypes by name: the one list of output dtypes, and 'auto'/'cpu'/'cuda' resolved to a usable device."""

from __future__ import annotations

import torch

from merge_core.errors import UserError

# The float dtypes a recipe, a config or the CLI may name (the only list of them; order = how errors list them).
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def dtype_name(dtype: torch.dtype) -> str:
    """The name of one of DTYPES (`torch.bfloat16` -> 'bfloat16'), as config.json and recipes write it."""
    for name, value in DTYPES.items():
        if value == dtype:
            return name
    raise ValueError(f"{dtype} is not one of {', '.join(DTYPES)}")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto'/None -> cuda when available, else cpu; anything else as given (UserError if unusable)."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"device: {device!r} is not a device; use auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device: {device!r} but no CUDA GPU is available; use device=cpu or device=auto")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, default: torch.dtype) -> torch.dtype:
    """A dtype from its name (float32, bfloat16, float16) or None -> default."""
    if dtype is None:
        return default
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise UserError(f"dtype: {dtype!r} is not supported; use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]
