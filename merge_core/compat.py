"""Config fields that change what the weights mean, compared across base and sources before any tensor is read."""

from __future__ import annotations

import logging
import math
from functools import cache
from typing import Any

from merge_core.errors import UserError

log = logging.getLogger(__name__)

# A difference here makes averaging the weights meaningless (they are read with different positions, norms or
# activations): refused. Absent keys take the model type's transformers default.
MUST_AGREE = ("rope_theta", "rope_type", "head_dim", "rms_norm_eps", "hidden_act", "attention_bias", "mlp_bias")
# A difference here leaves the weights comparable (context length, long-context rope scaling): a warning.
MAY_DIFFER = ("max_position_embeddings", "factor", "low_freq_factor", "high_freq_factor",
              "original_max_position_embeddings", "beta_fast", "beta_slow", "attention_factor")
# Remote-code hooks: an output config that names them makes transformers (and our own eval) want trust_remote_code.
REMOTE_CODE_KEYS = ("auto_map", "custom_pipelines")
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")


@cache
def _defaults(model_type: str | None) -> dict[str, Any]:
    from transformers import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        return {}
    return CONFIG_MAPPING[model_type]().to_dict()


def rope_settings(config: dict[str, Any]) -> dict[str, Any]:
    """One flat dict of rope settings from transformers 5's `rope_parameters` or older `rope_theta`/`rope_scaling`."""
    out: dict[str, Any] = {}
    defaults = _defaults(config.get("model_type"))
    for source in (defaults.get("rope_parameters"), {"rope_theta": defaults.get("rope_theta")},
                   config.get("rope_scaling"), {"rope_theta": config.get("rope_theta")}, config.get("rope_parameters")):
        if isinstance(source, dict):
            source = {("rope_type" if k == "type" else k): v for k, v in source.items()}  # pre-4.45 spelling
            out.update({k: v for k, v in source.items() if v is not None})
    out.setdefault("rope_type", "default")
    return out


def meaning(config: dict[str, Any]) -> dict[str, Any]:
    """The compared fields of one config, defaults filled in (head_dim from hidden_size / heads when absent)."""
    defaults = _defaults(config.get("model_type"))
    merged = {**defaults, **{k: v for k, v in config.items() if v is not None}}
    out = {k: merged.get(k) for k in ("rms_norm_eps", "hidden_act", "attention_bias", "mlp_bias", "max_position_embeddings")}
    out["attention_bias"] = bool(out["attention_bias"])
    out["mlp_bias"] = bool(out["mlp_bias"])
    # head_dim's class default belongs to the default hidden size: derive it from this config's own shape
    heads = merged.get("num_attention_heads")
    out["head_dim"] = config.get("head_dim") or (merged.get("hidden_size") // heads if heads else None)
    out.update(rope_settings(config))
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        # a value that went through float32 (a GGUF conversion's rms_norm_eps 9.999999747e-06) is the same setting
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=0.0)
    return a == b


def check_agreement(configs: dict[str, dict[str, Any]], base_id: str, where: str) -> list[str]:
    """Refuse sources whose meaning-changing config fields differ from the base's; return warnings for harmless ones."""
    base = meaning(configs[base_id])
    warnings: list[str] = []
    for model_id, config in configs.items():
        if model_id == base_id:
            continue
        other = meaning(config)
        for key in MUST_AGREE:
            if not _same(base.get(key), other.get(key)):
                raise UserError(
                    f"{where}: models {base_id!r} and {model_id!r} differ in {key} ({base.get(key)!r} vs "
                    f"{other.get(key)!r}); their weights are not comparable: merge fine-tunes of one base"
                )
        for key in MAY_DIFFER:
            if not _same(base.get(key), other.get(key)):
                warnings.append(f"{where}: models {base_id!r} and {model_id!r} differ in {key} ({base.get(key)!r} vs "
                                f"{other.get(key)!r}); the output keeps the base's value")
    for line in warnings:
        log.warning(line)
    return warnings


def strip_remote_code(config: dict[str, Any]) -> dict[str, Any]:
    """`config` without remote-code entries (auto_map...): the merged model is a plain transformers class."""
    return {k: v for k, v in config.items() if k not in REMOTE_CODE_KEYS}


def check_float(dtype_name: str, tensor: str, model_id: str, path: Any, where: str) -> None:
    """Refuse a non-float stored tensor (e.g. safetensors dtype I32): merging integers as numbers is meaningless."""
    if dtype_name not in FLOAT_DTYPES:
        raise UserError(
            f"{where}: model {model_id!r} ({path}): tensor {tensor} is stored as {dtype_name}, not a float; "
            "only floating-point weights can be merged: use an unquantized float checkpoint"
        )
