"""All models of a recipe, opened once and validated (config, shapes, finite values) before any merging."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from merge_core.architecture import Architecture, get_architecture
from merge_core.checkpoint import Checkpoint
from merge_core.compat import check_agreement, check_float, strip_remote_code
from merge_core.errors import UserError
from merge_core.recipe import Recipe
from merge_core.vocab import Vocabulary, vocab_source

# Config keys that must agree between every source (the output is built from one config).
SHAPE_KEYS = (
    "num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size", "vocab_size",
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_CHUNK = 1 << 22  # elements per isfinite pass: bounded scratch memory on 1B-sized embeddings


def _from_hub_cache(model_id: str) -> Path | None:
    # Local-only lookup of an already-downloaded snapshot; never touches the network.
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model_id, local_files_only=True))
    except Exception:  # any miss (not cached, bad id, no huggingface_hub) means "not local"
        return None


def resolve_model_path(model_id: str, recipe_dir: Path | None, where: str) -> Path:
    """Local folder of a recipe's model id: relative to the recipe's folder, then the CWD, then the HF cache."""
    path = Path(model_id).expanduser()
    candidates = [path] if path.is_absolute() else [*([recipe_dir / path] if recipe_dir else []), Path.cwd() / path]
    for cand in candidates:
        if cand.is_dir():
            return cand.resolve()
    if _HUB_ID.match(model_id) and not model_id.startswith((".", "~")):
        cached = _from_hub_cache(model_id)
        if cached is not None:
            return cached
        raise UserError(
            f"{where}: model {model_id!r} is not a local folder; models must be local (no hub downloads): "
            f"download it first (huggingface-cli download {model_id} --local-dir DIR) and write DIR in the recipe"
        )
    tried = " or ".join(str(c) for c in candidates)
    raise UserError(f"{where}: model folder {model_id!r} not found (looked for {tried}); fix the path in the recipe")


def locate_model(model_id: str, recipe_dir: Path | None, where: str) -> tuple[Path, Path | None]:
    """(model folder, adapter folder or None) of a model id; `<base>+<adapter>` is a LoRA adapter on its base."""
    from merge_core.lora import is_lora_id, split_lora_id

    direct = Path(model_id).expanduser()
    if is_lora_id(model_id) and not (direct.is_absolute() and direct.is_dir()):
        base, adapter = split_lora_id(model_id)
        return resolve_model_path(base, recipe_dir, where), resolve_model_path(adapter, recipe_dir, f"{where}: adapter")
    return resolve_model_path(model_id, recipe_dir, where), None


def has_nonfinite(tensor: torch.Tensor) -> bool:
    """True if any element is NaN or +-inf (checked in chunks to bound scratch memory)."""
    flat = tensor.reshape(-1)
    for start in range(0, flat.numel(), _CHUNK):
        if not torch.isfinite(flat[start : start + _CHUNK]).all():
            return True
    return False


class Sources:
    """The recipe's models by id, one Checkpoint each, plus the facts the output is built from."""

    def __init__(
        self, models: dict[str, Checkpoint], base_id: str, architecture: Architecture, tokenizer_path: Path, where: str
    ) -> None:
        self.models = models
        self.base_id = base_id
        self.architecture = architecture
        self.tokenizer_path = tokenizer_path
        self.where = where
        self.base_config: dict = dict(models[base_id].config)
        # DESIGN.md: the output is tied only when every source is tied (the live model's structure; a recipe whose
        # head is merged only from tied models is tied all the same: output_tied_for)
        self.output_tied: bool = all(ck.tied for ck in models.values())
        # (checkpoint path, stored name, device) -> tensor, filled by live.merge_into's cached fetch
        self.device_cache: dict[tuple[str, str, str], torch.Tensor] = {}
        # set when the recipe names a tokenizer source: embedding/head rows are re-indexed to its tokens (vocab.py)
        self.vocabulary: Vocabulary | None = None

    @classmethod
    def open(
        cls,
        recipe: Recipe,
        recipe_dir: str | os.PathLike | None = None,
        allow_pickle: bool = False,
        check_finite: bool = True,
    ) -> Sources:
        """Open every model of `recipe` once and validate them all; raises UserError before any merging."""
        root = Path(recipe_dir) if recipe_dir is not None else recipe.root
        where = recipe.where
        from merge_core.lora import LoraCheckpoint

        opened: dict[Path, Checkpoint] = {}
        models: dict[str, Checkpoint] = {}
        for model_id in recipe.model_ids():
            path, adapter = locate_model(model_id, root, where)
            if path not in opened:
                opened[path] = Checkpoint(path, allow_pickle=allow_pickle)
            models[model_id] = opened[path] if adapter is None else LoraCheckpoint(opened[path], adapter, model_id, where)
        base_id = recipe.base_model or recipe.model_ids()[0]
        source, block = vocab_source(recipe)
        arch = _check_configs(models, base_id, where, aligned=source is not None)
        _check_weights(models, arch, where, aligned=source is not None)
        tokenizer_path = _tokenizer_path(recipe, models, base_id, root, where)
        opened_sources = cls(models, base_id, arch, tokenizer_path, where)
        if source is not None:
            opened_sources.vocabulary = Vocabulary.build(source, block, models, base_id, tokenizer_path, where)
        if check_finite:  # last: the only check that reads tensor data
            _check_finite(models, arch, where)
        return opened_sources

    def align(self, plan: Any, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A plan's fetched inputs, embedding/head rows re-indexed to the output tokenizer when there is one."""
        if self.vocabulary is None or plan.kind not in ("embed", "head"):
            return tensors
        return self.vocabulary.align(plan.out_name, tensors, plan.base)

    def output_shape(self, plan: Any) -> tuple[int, ...]:
        """Shape of a plan's output tensor (embedding/head rows follow the output tokenizer)."""
        model_id, name = next(iter(plan.inputs.items()))
        shape = self.models[model_id].shape(name)
        if self.vocabulary is not None and plan.kind in ("embed", "head"):
            return (self.vocabulary.size, *shape[1:])
        return shape

    def output_tokenizer(self) -> Any:
        """The output's tokenizer object (built for a union; loaded from the tokenizer folder otherwise)."""
        if self.vocabulary is not None:
            return self.vocabulary.tokenizer
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self.tokenizer_path), trust_remote_code=False)

    def get(self, model_id: str, name: str) -> torch.Tensor:
        """One tensor of one source (CPU, stored dtype); a tied source's head is its embedding."""
        return self.models[model_id].get(name)

    def output_tied_for(self, recipe: Recipe) -> bool:
        """Whether `recipe`'s output is tied: none of the models its head is merged from has a head of its own.

        For a `models:` recipe that is every source (the tied rule); a layer path's head comes from its last slice's
        model only, and where that model is tied mergekit 0.1.5 writes no head (the output's head is then its
        embedding, from the first slice's model), whatever the other slices' models are: so do we."""
        from merge_core.plan import head_models

        return all(self.models[m].tied for m in head_models(recipe, self.num_layers))

    def output_config(self, dtype: torch.dtype, num_layers: int | None = None, tied: bool | None = None) -> dict:
        """The output's config.json: the base's, with the tie flag (`tied`, default the live model's rule), the
        output dtype and depth."""
        config = strip_remote_code(self.base_config)
        if num_layers is not None and num_layers != self.num_layers:
            config = with_depth(config, self.architecture.num_layers_key, num_layers)
        config["tie_word_embeddings"] = self.output_tied if tied is None else tied
        if self.vocabulary is not None:  # rows follow the output tokenizer; special ids keep naming the same tokens
            config["vocab_size"] = self.vocabulary.size
            base_vocab = self.vocabulary.vocabs[self.base_id]
            for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
                if config.get(key) is not None:
                    config[key] = self.vocabulary.translate_ids(config[key], base_vocab)
        config["dtype"] = str(dtype).removeprefix("torch.")
        config.pop("torch_dtype", None)
        return config

    @property
    def num_layers(self) -> int:
        """Decoder layers of the output (the sources all have this many)."""
        return self.architecture.num_layers(self.base_config)


def with_depth(config: dict, key: str, num_layers: int) -> dict:
    """`config` for a model of `num_layers` decoder layers (a per-layer `layer_types` list follows the path's length)."""
    config = dict(config, **{key: num_layers})
    types = config.get("layer_types")
    if isinstance(types, list) and types:
        if len(set(types)) != 1:
            raise UserError(f"config.json: layer_types mixes {sorted(set(types))}; a layer path of such a model is not "
                            "supported, merge it with the models form instead")
        config["layer_types"] = [types[0]] * num_layers
    return config


def _check_configs(models: dict[str, Checkpoint], base_id: str, where: str, aligned: bool = False) -> Architecture:
    base = models[base_id]
    arch = get_architecture(base.config)
    for model_id, ck in models.items():
        try:
            other = get_architecture(ck.config)
        except UserError as exc:
            raise UserError(f"{ck.path / 'config.json'}: {str(exc).split(': ', 1)[-1]}") from None
        if other.name != arch.name:
            raise UserError(
                f"{where}: models {base_id!r} ({arch.name}) and {model_id!r} ({other.name}) are different architectures; "
                "merge models of one family"
            )
        for key in SHAPE_KEYS:
            a, b = base.config.get(key), ck.config.get(key)
            if key == "num_key_value_heads":  # absent means plain multi-head attention
                a = a or base.config.get("num_attention_heads")
                b = b or ck.config.get("num_attention_heads")
            if key == "vocab_size" and aligned:
                continue  # rows are matched by token (vocab.py)
            if a != b and key == "vocab_size":
                raise UserError(
                    f"{where}: models {base_id!r} and {model_id!r} differ in vocab_size ({a} vs {b}); "
                    "set tokenizer_source: base or tokenizer_source: union in the recipe to align embedding rows by token"
                )
            if a != b:
                raise UserError(
                    f"{where}: models {base_id!r} and {model_id!r} differ in {key} ({a} vs {b}); "
                    "merge models of the same size and vocabulary"
                )
    check_agreement({m: ck.config for m, ck in models.items()}, base_id, where)
    return arch


def _check_weights(models: dict[str, Checkpoint], arch: Architecture, where: str, aligned: bool = False) -> None:
    """Header-level checks of every model (tensors present, float dtypes, shapes agree); reads no tensor data."""
    specs = arch.weights(next(iter(models.values())).config)
    shapes: dict[str, tuple[tuple[int, ...], str]] = {}
    for model_id, ck in models.items():
        for spec in specs:
            if not ck.has(spec.name):
                if spec.optional:
                    continue
                raise UserError(f"{where}: model {model_id!r} ({ck.path}) has no tensor {spec.name}; use a complete checkpoint")
            check_float(ck.stored_dtype(spec.name), spec.name, model_id, ck.path, where)
            shape = ck.shape(spec.name)
            first = shapes.setdefault(spec.name, (shape, model_id))
            vocab_axis = aligned and spec.kind in ("embed", "head")  # rows may differ: matched by token
            if (shape[1:] != first[0][1:]) if vocab_axis else (shape != first[0]):
                raise UserError(
                    f"{where}: {spec.name} has shape {list(first[0])} in {first[1]!r} but {list(shape)} in {model_id!r}; "
                    "merge models of the same size"
                )


def _check_finite(models: dict[str, Checkpoint], arch: Architecture, where: str) -> None:
    """Read every tensor once per checkpoint: NaN or inf refused (after every header-level check passed)."""
    specs = arch.weights(next(iter(models.values())).config)
    seen: set[int] = set()
    for model_id, ck in models.items():
        if id(ck) not in seen:
            seen.add(id(ck))
            for spec in specs:
                if spec.kind == "head" and ck.tied or not ck.has(spec.name):
                    continue
                if has_nonfinite(ck.get(spec.name)):
                    raise UserError(
                        f"{where}: model {model_id!r} ({ck.path}): tensor {spec.name} contains NaN or inf; "
                        "use an intact checkpoint (or pass check_finite=false if you really mean it)"
                    )


def recipe_inputs(recipe: Recipe, recipe_dir: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """(what, folder) of every model and tokenizer source a recipe reads, found without opening any of them."""
    root = Path(recipe_dir) if recipe_dir is not None else recipe.root
    ids = recipe.model_ids()
    found = []
    for m in ids:
        folder, adapter = locate_model(m, root, recipe.where)
        found += [(f"model {m!r}", folder)] + ([(f"adapter of {m!r}", adapter)] if adapter is not None else [])
    tok = recipe.tokenizer_source
    if tok not in (None, "base", "union") and tok not in ids:
        found.append(("tokenizer_source", resolve_model_path(tok, root, f"{recipe.where}: tokenizer_source")))
    return found


def _tokenizer_path(recipe: Recipe, models: dict[str, Checkpoint], base_id: str, root: Path | None, where: str) -> Path:
    source = vocab_source(recipe)[0]
    if source in (None, "base", "union"):  # a union is built on the base's tokenizer
        return models[base_id].tokenizer_dir
    if source in models:
        return models[source].tokenizer_dir
    return resolve_model_path(source, root, f"{where}: tokenizer_source")


__all__ = ["SHAPE_KEYS", "Sources", "has_nonfinite", "locate_model", "recipe_inputs", "resolve_model_path"]
