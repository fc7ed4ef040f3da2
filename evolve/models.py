"""Which models a search merges: the preparers that make models on the spot, and resolving every name to a model id.

`models.prepare: NAME` runs a registered preparer (cached, reused across runs); `resolve_models` then maps each of
`models.base` / `models.sources` to a folder or a Hub-cache id, checking it is on this machine (nothing is
downloaded).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from evolve.errors import UserError

# name -> "module:function"; each is prepare(cache_dir, *, seed, progress, **options) -> {name: HF folder}
PREPARERS: dict[str, str] = {
    "toy": "evolve.toy:prepare",
    "smollm2_demo": "evolve.prepare:prepare_demo",
}


def get_preparer(name: str) -> Callable[..., dict[str, Path]]:
    """The preparer function registered under `name`."""
    if name not in PREPARERS:
        raise UserError(f"models.prepare: {name!r} is not a preparer; choose one of {', '.join(PREPARERS)} or null")
    module, func = PREPARERS[name].split(":")
    return getattr(importlib.import_module(module), func)


def resolve_models(cfg: DictConfig, progress: bool = True) -> tuple[str, list[str]]:
    """Base and source model ids/folders: run the preparer if set, then check every model is reachable."""
    from merge_core.lora import is_lora_id, split_lora_id
    from merge_core.sources import locate_model

    named: dict[str, Path] = {}
    if cfg.models.prepare:
        opts = OmegaConf.to_container(cfg.models.prepare_options, resolve=True) or {}
        named = get_preparer(cfg.models.prepare)(Path(cfg.models.cache_dir), seed=cfg.models.seed, progress=progress, **opts)
    keys = [("models.base", cfg.models.base)] + [(f"models.sources[{i}]", s) for i, s in enumerate(cfg.models.sources)]
    resolved = []
    for key, name in keys:
        model_id = str(named[name].resolve()) if name in named else str(name)
        if is_lora_id(str(name)) and split_lora_id(str(name))[0] in named:  # `<prepared name>+<adapter folder>`
            base_name, adapter = split_lora_id(str(name))
            model_id = f"{named[base_name].resolve()}+{adapter}"
        try:
            locate_model(model_id, None, key)
        except UserError:
            raise UserError(
                f"{key}: model {name!r} is not on this machine (no folder, not in the Hugging Face cache; "
                f"nothing is downloaded); point at a local copy, e.g. {key.split('[')[0]}=/path/to/folder"
            ) from None
        resolved.append(model_id)
    return resolved[0], resolved[1:]
