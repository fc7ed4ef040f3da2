"""Lazy, memory-mapped reading of one Hugging Face model folder, a tensor at a time."""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from merge_core.architecture import family
from merge_core.errors import UserError
from merge_core.files import files_sha256
from merge_core.textfile import read_text

MAX_JSON_BYTES = 1 << 26  # config.json is ~1 KB, a shard index of the largest models a few MB
_PICKLE_FIX = "convert it to safetensors, or pass allow_pickle=true if you trust the file"


@cache
def default_tied(model_type: str | None) -> bool:
    """What transformers assumes for tie_word_embeddings when a config of this model type omits it."""
    from transformers import CONFIG_MAPPING, PretrainedConfig

    cls = CONFIG_MAPPING[model_type] if model_type in CONFIG_MAPPING else PretrainedConfig
    return bool(getattr(cls(), "tie_word_embeddings", True))


def _read_json(path: Path) -> dict:
    if not path.exists():
        raise UserError(f"{path}: file missing; point at a Hugging Face model folder containing it")
    text = read_text(path, str(path), limit=MAX_JSON_BYTES)  # never blocks on a FIFO; UTF-8 checked
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc}); restore the file from the original model") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object; restore the file from the original model")
    return data


class Checkpoint:
    """One HF folder: config.json plus model.safetensors, shards with an index, or (opt-in) pickled .bin files.

    Tensors are read on demand from memory-mapped files; `get(head_name)` returns the embedding when the config
    says the head is tied (`head_name`, `embed_name`: from the architecture data).
    """

    def __init__(self, path: str | os.PathLike, allow_pickle: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise UserError(f"{self.path}: model folder not found; give the path of a local Hugging Face model folder")
        self.cache_key = str(self.path)  # names this source in device caches (a LoRA source names base+adapter)
        self.config: dict = _read_json(self.path / "config.json")
        tie = self.config.get("tie_word_embeddings")
        self.tied: bool = default_tied(self.config.get("model_type")) if tie is None else bool(tie)
        names = family(self.config)  # the tie pair by the architecture data (any class: checked later, by Sources)
        self.head_name, self.embed_name = names.head_name, names.embed_name
        self._where: dict[str, Path] = {}  # tensor name -> file holding it
        self._handles: dict[Path, object] = {}
        self._pickled: dict[Path, dict[str, torch.Tensor]] = {}
        self._sha: str | None = None
        self._index_files(allow_pickle)
        self.names: set[str] = set(self._where)
        if self.embed_name in self.names and not self.tied and self.head_name not in self.names:
            raise UserError(
                f"{self.path}: untied model (tie_word_embeddings false) has no {self.head_name}; "
                "restore the missing weight or set tie_word_embeddings: true in its config.json if the head is the embedding"
            )

    def _index_files(self, allow_pickle: bool) -> None:
        single, index = self.path / "model.safetensors", self.path / "model.safetensors.index.json"
        if index.exists():
            self._map_index(index)
        elif single.exists():
            self._map_file(single)
        else:
            bins = [self.path / "pytorch_model.bin.index.json", self.path / "pytorch_model.bin"]
            found = next((b for b in bins if b.exists()), None)
            if found is None:
                raise UserError(
                    f"{self.path}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin; "
                    "point at a folder with the model weights"
                )
            if not allow_pickle:
                raise UserError(f"{found}: pickled checkpoint refused (it can run code when loaded); {_PICKLE_FIX}")
            if found.name.endswith(".json"):
                self._map_index(found, pickled=True)
            else:
                self._map_file(found, pickled=True)

    def _map_index(self, index: Path, pickled: bool = False) -> None:
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise UserError(f"{index}: no weight_map; restore the index file from the original model")
        for file in sorted(set(weight_map.values())):
            self._map_file(self.path / file, pickled=pickled, index=index)

    def _map_file(self, file: Path, pickled: bool = False, index: Path | None = None) -> None:
        if not file.exists():
            raise UserError(f"{file}: shard listed in {index} is missing; restore it from the original model")
        if not file.is_file():  # a FIFO or device named by an index would block the read
            raise UserError(f"{file}: not a regular file; point {index or 'the folder'} at real weight files")
        if pickled:
            try:
                tensors = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except Exception as exc:  # torch raises many types for a bad pickle
                raise UserError(f"{file}: cannot be read as a PyTorch checkpoint ({exc}); {_PICKLE_FIX}") from None
            if not isinstance(tensors, dict):
                raise UserError(f"{file}: expected a dict of tensors; restore the file from the original model")
            self._pickled[file] = tensors
            names = list(tensors)
        else:
            try:
                handle = safe_open(str(file), framework="pt", device="cpu")
            except (SafetensorError, OSError) as exc:
                raise UserError(f"{file}: not a readable safetensors file ({exc}); restore it from the original model") from None
            self._handles[file] = handle
            names = list(handle.keys())
        for name in names:
            self._where[name] = file

    def resolve(self, name: str) -> str:
        """The stored name behind `name` (a tied head is the embedding)."""
        # A tied head is the embedding (that is what transformers loads), even if a stale head is stored too.
        if name == self.head_name and self.tied:
            return self.embed_name
        return name

    def has(self, name: str) -> bool:
        """True if `name` can be read (a tied head counts as present when the embedding is)."""
        return self.resolve(name) in self._where

    def get(self, name: str) -> torch.Tensor:
        """Read one tensor (CPU, stored dtype)."""
        real = self.resolve(name)
        file = self._where.get(real)
        if file is None:
            raise UserError(f"{self.path}: has no tensor {name!r}; check the model matches the recipe's architecture")
        if file in self._pickled:
            return self._pickled[file][real]
        try:
            return self._handles[file].get_tensor(real)
        except SafetensorError as exc:
            raise UserError(f"{file}: tensor {real!r} cannot be read ({exc}); restore the file") from None

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of one tensor without reading its data."""
        real = self.resolve(name)
        file = self._where.get(real)
        if file is None:
            raise UserError(f"{self.path}: has no tensor {name!r}; check the model matches the recipe's architecture")
        if file in self._pickled:
            return tuple(self._pickled[file][real].shape)
        return tuple(self._handles[file].get_slice(real).get_shape())

    def stored_dtype(self, name: str) -> str:
        """The safetensors dtype name (F32, BF16, I32...) of one tensor, from the header alone."""
        real = self.resolve(name)
        file = self._where[real]
        if file in self._pickled:
            found = self._pickled[file][real].dtype
            return next((k for k, v in _SAFETENSORS_DTYPES.items() if v == found), str(found))
        return self._handles[file].get_slice(real).get_dtype()

    @property
    def dtype(self) -> torch.dtype:
        """Stored dtype of the embedding (or of the first tensor)."""
        name = self.embed_name if self.embed_name in self._where else next(iter(sorted(self._where)))
        file = self._where[name]
        if file in self._pickled:
            return self._pickled[file][name].dtype
        return _SAFETENSORS_DTYPES.get(self._handles[file].get_slice(name).get_dtype(), torch.float32)

    @property
    def tokenizer_dir(self) -> Path:
        """Where this model's tokenizer files are."""
        return self.path

    @property
    def files(self) -> list[Path]:
        """Weight files, sorted."""
        return sorted(set(self._where.values()))

    def sha256(self) -> str:
        """SHA-256 over the weight files' bytes (cached)."""
        if self._sha is None:
            self._sha = files_sha256(self.files)
        return self._sha

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r}, tied={self.tied}, tensors={len(self.names)})"


_SAFETENSORS_DTYPES = {
    "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}
