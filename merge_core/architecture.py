"""Llama-family weight names as data (`_data/llama.json`): which tensors a model has, per layer."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Literal

from merge_core.errors import UserError

WeightKind = Literal["embed", "layer", "norm", "head"]
_LAYER = "${layer_index}"


@dataclass(frozen=True)
class WeightSpec:
    """One output tensor: its name, layer index (None outside layers), kind and tie target."""

    name: str
    layer: int | None
    kind: WeightKind
    tied_to: str | None = None
    optional: bool = False


@dataclass(frozen=True)
class _Template:
    name: str
    kind: WeightKind
    tied_to: str | None
    optional: bool
    requires: str | None
    filter: str | None = None  # pre/post weights: a mergekit filter selecting this weight and no layer weight

    def applies(self, config: dict[str, Any]) -> bool:
        return self.requires is None or bool(config.get(self.requires, False))

    def spec(self, layer: int | None) -> WeightSpec:
        name = self.name if layer is None else self.name.replace(_LAYER, str(layer))
        return WeightSpec(name, layer, self.kind, self.tied_to, self.optional)


@dataclass(frozen=True)
class Architecture:
    """Weight-name templates of one architecture class (e.g. LlamaForCausalLM)."""

    name: str
    num_layers_key: str
    pre: tuple[_Template, ...]
    layer: tuple[_Template, ...]
    post: tuple[_Template, ...]

    def num_layers(self, config: dict[str, Any]) -> int:
        """Number of decoder layers declared by a HF config."""
        value = config.get(self.num_layers_key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(
                f"config.json: {self.num_layers_key}: {value!r} is not a positive integer; "
                "fix the model's config.json"
            )
        return value

    def pre_weights(self, config: dict[str, Any]) -> list[WeightSpec]:
        """Tensors before the first layer (embeddings)."""
        return [t.spec(None) for t in self.pre if t.applies(config)]

    def layer_weights(self, config: dict[str, Any], index: int) -> list[WeightSpec]:
        """Tensors of decoder layer `index`."""
        return [t.spec(index) for t in self.layer if t.applies(config)]

    def post_weights(self, config: dict[str, Any]) -> list[WeightSpec]:
        """Tensors after the last layer (final norm, optional head)."""
        return [t.spec(None) for t in self.post if t.applies(config)]

    def _outer(self, kind: WeightKind) -> _Template:
        found = [t for t in self.pre + self.post if t.kind == kind]
        if len(found) != 1:
            raise ValueError(f"architecture data of {self.name}: {len(found)} weights of kind {kind!r}, expected one")
        return found[0]

    @property
    def embed_name(self) -> str:
        """The token embedding's tensor name."""
        return self._outer("embed").name

    @property
    def head_name(self) -> str:
        """The output head's tensor name (absent from tied checkpoints: it is the embedding)."""
        return self._outer("head").name

    @property
    def final_norm_name(self) -> str:
        """The final norm's tensor name."""
        return self._outer("norm").name

    def outer_filters(self) -> tuple[str, ...]:
        """mergekit filters of the embedding, the head and the final norm, in that order (none matches a layer)."""
        filters = tuple(self._outer(kind).filter for kind in ("embed", "head", "norm"))
        if None in filters:
            raise ValueError(f"architecture data of {self.name}: an embed/head/norm weight has no filter")
        return filters  # type: ignore[return-value]

    def weights(self, config: dict[str, Any]) -> list[WeightSpec]:
        """Every tensor of a model with this config, in checkpoint order (head included)."""
        out = self.pre_weights(config)
        for i in range(self.num_layers(config)):
            out += self.layer_weights(config, i)
        return out + self.post_weights(config)


def _templates(entries: list[dict[str, Any]], default_kind: WeightKind) -> tuple[_Template, ...]:
    return tuple(
        _Template(
            name=e["name"],
            kind=e.get("kind", default_kind),
            tied_to=e.get("tied_to"),
            optional=bool(e.get("optional", False)),
            requires=e.get("requires"),
            filter=e.get("filter"),
        )
        for e in entries
    )


@lru_cache(maxsize=1)
def _registry() -> dict[str, Architecture]:
    raw = json.loads(resources.files("merge_core").joinpath("_data/llama.json").read_text())
    pre = _templates(raw["pre_weights"], "embed")
    shared = raw["layer_weights"]
    post = _templates(raw["post_weights"], "norm")
    return {
        name: Architecture(
            name=name,
            num_layers_key=raw["num_layers_key"],
            pre=pre,
            layer=_templates(shared + extra["extra_layer_weights"], "layer"),
            post=post,
        )
        for name, extra in raw["architectures"].items()
    }


def supported_architectures() -> list[str]:
    """Names of the architecture classes this library can merge."""
    return sorted(_registry())


def family(config: dict[str, Any] | None = None) -> Architecture:
    """The Architecture of `config` when its class is supported, else the Llama family's data.

    For readers that must not refuse a class before the merge does (a Checkpoint opens any folder): every class
    in `_data/llama.json` shares the weights outside the layers, so their names hold for the whole family.
    """
    names = (config or {}).get("architectures") or []
    name = names[0] if isinstance(names, list) and names else None
    registry = _registry()
    return registry[name] if isinstance(name, str) and name in registry else next(iter(registry.values()))


def layer_count(config: dict[str, Any]) -> int:
    """Decoder layers of a HF config, read by its architecture's data (UserError: unsupported class, or not an int >= 1)."""
    return get_architecture(config).num_layers(config)


def get_architecture(config: dict[str, Any]) -> Architecture:
    """The Architecture for a HF config dict, chosen by `architectures[0]`."""
    names = config.get("architectures") or []
    name = names[0] if isinstance(names, list) and names else None
    arch = _registry().get(name) if isinstance(name, str) else None
    if arch is None:
        raise UserError(
            f"config.json: architectures: {name!r} is not supported; "
            f"use a model of one of {', '.join(supported_architectures())}"
        )
    return arch
