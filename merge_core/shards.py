"""Tensors streamed into safetensors shards of bounded size, named as Hugging Face names them once the count is known."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from merge_core.files import file_mode

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"


class ShardWriter:
    """Write tensors in order into `folder`: a new shard starts when the next tensor would pass `shard_size` bytes.

    `shard_size=None` never splits. On `close()` one shard becomes `model.safetensors`, several become
    `model-0000i-of-0000n.safetensors` plus `model.safetensors.index.json` (with `index=True`, even one shard is
    named and indexed that way). Only the current shard is held in memory.
    """

    def __init__(self, folder: str | Path, shard_size: int | None, *, index: bool = False) -> None:
        self.folder = Path(folder)
        self.shard_size = shard_size
        self.index = index
        self._shard: dict[str, torch.Tensor] = {}
        self._shard_bytes = 0
        self.total_bytes = 0
        self._count = 0  # shards written so far
        self._where: dict[str, int] = {}  # tensor name -> shard number (1-based)

    def _partial(self, i: int) -> Path:
        # the final names carry the shard count, known only at close
        return self.folder / f"model-{i:05d}.safetensors.partial"

    def _flush(self) -> None:
        if self._shard:
            self._count += 1
            path = self._partial(self._count)
            save_file(self._shard, str(path), metadata={"format": "pt"})
            path.chmod(file_mode())  # safetensors creates 0600 files; give shards the mode of everything else
        self._shard, self._shard_bytes = {}, 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Append one (CPU, contiguous) tensor."""
        size = tensor.numel() * tensor.element_size()
        if self.shard_size is not None and self._shard and self._shard_bytes + size > self.shard_size:
            self._flush()
        self._shard[name] = tensor
        self._shard_bytes += size
        self.total_bytes += size
        self._where[name] = self._count + 1

    def close(self) -> list[Path]:
        """Write the last shard, rename every shard to its final name, write the index when sharded; the files."""
        self._flush()
        n = self._count
        if n == 1 and not self.index:
            self._partial(1).rename(self.folder / SINGLE)
            return [self.folder / SINGLE]
        names = {i: f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)}
        for i, name in names.items():
            self._partial(i).rename(self.folder / name)
        weight_map = {t: names[i] for t, i in self._where.items()}
        text = json.dumps({"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}, indent=2) + "\n"
        (self.folder / INDEX).write_text(text, encoding="utf-8")
        return [self.folder / name for name in names.values()]
