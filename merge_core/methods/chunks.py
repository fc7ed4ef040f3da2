"""Row chunks and reused scratch buffers: how every streaming method bounds its float32 working memory."""

from __future__ import annotations

import math

import torch

CHUNK = 1 << 22  # elements per row chunk: bounded float32 scratch, still big enough for fast kernels


def row_chunks(shape: torch.Size | tuple[int, ...]) -> list[slice]:
    """Slices along dim 0, each holding at most CHUNK elements (at least one row)."""
    if len(shape) == 0:
        return [slice(None)]
    per_row = max(1, math.prod(shape[1:]))
    step = max(1, CHUNK // per_row)
    return [slice(i, min(i + step, shape[0])) for i in range(0, shape[0], step)] or [slice(0, 0)]


_SCRATCH: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}


def scratch(tag: str, shape: torch.Size | tuple[int, ...], device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A reused buffer of `shape` (contents undefined), one per tag, device and dtype; at most a chunk in size.

    Fresh chunk-sized allocations cost page faults and zeroing on every tensor of every candidate; these stay.
    """
    n = math.prod(shape)
    key = (tag, torch.device(device), dtype)
    buf = _SCRATCH.get(key)
    if buf is None or buf.numel() < n:
        buf = _SCRATCH[key] = torch.empty(max(n, CHUNK if n <= CHUNK else n), dtype=dtype, device=device)
    return buf[:n].view(shape)
