"""A PEFT LoRA adapter on its base as one source (`model: <base>+<adapter folder>`), built a tensor at a time.

Each targeted weight is base + scale * B @ A (what peft's merge_and_unload writes), computed when the tensor is
read; untargeted tensors are the base's own (memory-mapped), so no second full model is ever held in memory.
Scale is lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora; r is read from A's shape (rank_pattern needs no
special case), alpha from alpha_pattern when a pattern names the module. lora_dropout only acts in training.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from merge_core.checkpoint import Checkpoint, _read_json
from merge_core.errors import UserError

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
_PREFIX = "base_model.model."
_KEY = re.compile(r"^(?P<module>.+?)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B|base_layer|modules_to_save"
                  r"|original_module)(?:\.default)?(?:\.weight)?$")
# Adapter options whose effect on the weights we do not compute: refused, one line each, rather than merged wrong.
_UNSUPPORTED = {
    "use_dora": "DoRA rescales each weight's columns by a learned magnitude; merge the adapter with peft first "
                "(model.merge_and_unload()) and use the saved folder",
    "lora_bias": "the adapter trains a bias on lora_B; merge it with peft first (merge_and_unload) and use the saved folder",
    "layer_replication": "the adapter duplicates layers; merge it with peft first and use the saved folder",
    "trainable_token_indices": "the adapter trains single token rows; merge it with peft first and use the saved folder",
    "target_parameters": "the adapter targets raw parameters; merge it with peft first and use the saved folder",
}


def is_lora_id(model_id: str) -> bool:
    """True for a mergekit `<base>+<adapter>` model id."""
    return model_id.count("+") == 1 and all(model_id.split("+"))


def split_lora_id(model_id: str) -> tuple[str, str]:
    """(base id, adapter id) of `<base>+<adapter>`."""
    base, adapter = model_id.split("+")
    return base, adapter


class _Delta:
    """One targeted module: its A and B tensor names and scale."""

    def __init__(self, a: str, b: str, embedding: bool) -> None:
        self.a, self.b, self.embedding = a, b, embedding
        self.scale = 0.0


class LoraCheckpoint:
    """`<base>+<adapter>` with the Checkpoint interface; tensors are base + scale * B @ A, in the base's dtype."""

    def __init__(self, base: Checkpoint, adapter_dir: Path, model_id: str, where: str) -> None:
        self.base, self.path, self.model_id = base, Path(adapter_dir), model_id
        self.cache_key = f"{base.path}+{self.path}"
        cfg_path = self.path / ADAPTER_CONFIG
        if not cfg_path.is_file():
            raise UserError(f"{where}: {model_id}: {self.path} has no {ADAPTER_CONFIG}; point after '+' at a PEFT "
                            "adapter folder (adapter_config.json + adapter_model.safetensors)")
        self.adapter_config: dict[str, Any] = _read_json(cfg_path)
        self._check_options(where)
        weights = self.path / ADAPTER_WEIGHTS
        if not weights.is_file():
            raise UserError(f"{where}: {model_id}: {weights} missing (pickled adapter_model.bin is refused); "
                            "save the adapter with safetensors (save_pretrained(..., safe_serialization=True))")
        try:
            self._file = safe_open(str(weights), framework="pt", device="cpu")
        except (SafetensorError, OSError) as exc:
            raise UserError(f"{weights}: not a readable safetensors file ({exc}); save the adapter again") from None
        self._deltas: dict[str, _Delta] = {}
        self._replaced: dict[str, str] = {}  # base tensor name -> adapter key holding its full replacement
        self._index(where)
        self.config: dict[str, Any] = dict(base.config)
        embed_rows = self.shape(base.embed_name)[0] if base.embed_name in base.names else None
        if embed_rows is not None and embed_rows != base.config.get("vocab_size"):
            self.config["vocab_size"] = embed_rows  # the adapter saved a resized embedding (added tokens)
        self.tied: bool = base.tied
        self.head_name, self.embed_name = base.head_name, base.embed_name
        self.names: set[str] = set(base.names)
        self._sha: str | None = None

    def _check_options(self, where: str) -> None:
        cfg = self.adapter_config
        if cfg.get("peft_type", "LORA") != "LORA":
            raise UserError(f"{where}: {self.model_id}: adapter type {cfg.get('peft_type')!r} is not LoRA; "
                            "only LoRA adapters can be merged as base+adapter")
        for key, fix in _UNSUPPORTED.items():
            if cfg.get(key):
                raise UserError(f"{where}: {self.model_id}: {ADAPTER_CONFIG}: {key} is not supported; {fix}")
        if not isinstance(cfg.get("lora_alpha", 8), (int, float)) or not isinstance(cfg.get("r", 8), int):
            raise UserError(f"{where}: {self.model_id}: {ADAPTER_CONFIG}: r / lora_alpha are not numbers; "
                            "restore the adapter's config")

    def _index(self, where: str) -> None:
        parts: dict[str, dict[str, str]] = {}
        for key in self._file.keys():
            name = key.removeprefix(_PREFIX)
            m = _KEY.match(name)
            if m is None:
                if name == self.base.head_name and self.base.tied:
                    continue  # a tied model's head is its embedding: what transformers loads
                if name in self.base.names:  # modules_to_save, older peft: the whole tensor under its own name
                    self._replaced.setdefault(name, key)
                    continue
                raise UserError(f"{where}: {self.model_id}: adapter tensor {key!r} matches no weight of the base; "
                                "use an adapter trained on this base model")
            parts.setdefault(m["module"], {})[m["part"]] = key
        for module, found in parts.items():
            target = f"{module}.weight"
            if target not in self.base.names and not (target == self.base.head_name and self.base.tied):
                raise UserError(f"{where}: {self.model_id}: adapter module {module!r} is not a weight of the base; "
                                "use an adapter trained on this base model")
            if "modules_to_save" in found:  # the trained copy wins over the frozen original
                self._replaced[target] = found["modules_to_save"]
            elif "base_layer" in found:  # a saved (e.g. resized) embedding layer under the LoRA
                self._replaced[target] = found["base_layer"]
            kind = "lora_embedding_" if "lora_embedding_A" in found else "lora_"
            a, b = found.get(kind + "A"), found.get(kind + "B")
            if (a is None) != (b is None):
                raise UserError(f"{where}: {self.model_id}: adapter module {module!r} has only one of lora_A/lora_B; "
                                "restore the adapter file")
            if a is not None:
                delta = self._deltas[target] = _Delta(a, b, kind == "lora_embedding_")
                rank = self._file.get_slice(a).get_shape()[0]
                delta.scale = self._alpha(module) / (math.sqrt(rank) if self.adapter_config.get("use_rslora") else rank)
        if self.base.tied and self.base.head_name in {*self._deltas, *self._replaced}:
            if self.base.head_name in self._deltas:
                raise UserError(f"{where}: {self.model_id}: the adapter changes lm_head of a base with tied embeddings; "
                                "merge it with peft first (merge_and_unload) and use the saved folder")
            del self._replaced[self.base.head_name]  # a tied model's head is its embedding: what transformers loads

    def _alpha(self, module: str) -> float:
        # peft's get_pattern_key: an exact module name, else a regex matching the name's tail
        patterns = self.adapter_config.get("alpha_pattern") or {}
        for pattern, alpha in patterns.items():
            if pattern == module or re.match(rf"(.*\.)?({pattern})$", module):
                return float(alpha)
        return float(self.adapter_config.get("lora_alpha", 8))

    # --- the Checkpoint interface -------------------------------------------------------------------------------
    def resolve(self, name: str) -> str:
        """The stored name behind `name` (a tied head is the embedding)."""
        return self.base.resolve(name)

    def has(self, name: str) -> bool:
        """True if `name` can be read."""
        return self.base.has(name)

    def get(self, name: str) -> torch.Tensor:
        """base (or the adapter's saved copy) + scale * B @ A, computed in float32, returned in the base's dtype."""
        real = self.resolve(name)
        key = self._replaced.get(real)
        weight = self._file.get_tensor(key) if key is not None else self.base.get(real)
        delta = self._deltas.get(real)
        if delta is None:
            return weight
        a = self._file.get_tensor(delta.a).to(torch.float32)
        b = self._file.get_tensor(delta.b).to(torch.float32)
        # peft: Linear delta is B @ A; Embedding delta is (B @ A).T (A is r x vocab, B is dim x r)
        update = (b @ a).T if delta.embedding else b @ a
        if self.adapter_config.get("fan_in_fan_out") and not delta.embedding:
            update = update.T
        return (weight.to(torch.float32) + delta.scale * update).to(weight.dtype)

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of one tensor without computing it."""
        key = self._replaced.get(self.resolve(name))
        return tuple(self._file.get_slice(key).get_shape()) if key is not None else self.base.shape(name)

    def stored_dtype(self, name: str) -> str:
        """The stored dtype name of one tensor (the base's, or the adapter's saved copy's)."""
        key = self._replaced.get(self.resolve(name))
        return self._file.get_slice(key).get_dtype() if key is not None else self.base.stored_dtype(name)

    @property
    def dtype(self) -> torch.dtype:
        """The base's dtype (LoRA tensors are returned in it)."""
        return self.base.dtype

    @property
    def files(self) -> list[Path]:
        """The base's weight files and the adapter's."""
        return [*self.base.files, self.path / ADAPTER_CONFIG, self.path / ADAPTER_WEIGHTS]

    @property
    def tokenizer_dir(self) -> Path:
        """The adapter folder when it carries a tokenizer (added tokens), else the base's."""
        has = any((self.path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))
        return self.path if has else self.base.path

    def sha256(self) -> str:
        """SHA-256 over the base's weight hash and the adapter's config and weights."""
        if self._sha is None:
            digest = hashlib.sha256(self.base.sha256().encode())
            for file in (self.path / ADAPTER_CONFIG, self.path / ADAPTER_WEIGHTS):
                digest.update(file.read_bytes())
            self._sha = digest.hexdigest()
        return self._sha

    def __repr__(self) -> str:
        return f"LoraCheckpoint({str(self.base.path)!r} + {str(self.path)!r}, deltas={len(self._deltas)})"
