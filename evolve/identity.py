"""What a study is: the settings and source weights its stored scores were measured under.

Stored once, when the study is created (user attr `identity`); a resume, export or report under other settings
or other source weights would mix scores of different experiments (or rebuild a trial with another method than
the one that scored it), so it is refused with one line before anything is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf

from evolve.errors import UserError
from evolve.schema import multi_objective

IDENTITY_ATTR = "identity"
# May change between runs of one study: how much to run and how, not what a score means (see README).
FREE_KEYS = (
    "n_trials", "progress", "threads", "device", "seed", "max_failures_in_row", "heartbeat_interval", "grace_period",
    "export", "report", "score_cache", "out_dtype", "optimizer.name", "optimizer.options", "pruner", "tasks.batch_size",
)
_FIX = "a study keeps its method, genome, tasks, evaluation settings and source weights; put the setting back, or " \
       "start a new study with another study_name or out_dir"


def config_identity(cfg: DictConfig) -> dict[str, Any]:
    """The config part of a study's identity: every key that is not free to change, flattened to dotted keys."""
    data = OmegaConf.to_container(cfg, resolve=True)
    if "optimizer" in data:  # single-objective optimizers have no multi_objective key (evolve/schema.py); still recorded
        data["optimizer"] = {**data["optimizer"], "multi_objective": multi_objective(cfg)}
    flat = _flatten({k: v for k, v in data.items() if k in ("method", "genome", "tasks", "optimizer", "dtype")})
    return {k: v for k, v in flat.items() if not any(k == f or k.startswith(f + ".") for f in FREE_KEYS)}


def source_hashes(base: str, sources: list[str], hashes: dict[str, str] | None = None) -> dict[str, Any]:
    """Weight hashes of the base and each source in order (from `hashes` by model id where known, else read)."""
    from merge_core.checkpoint import Checkpoint
    from merge_core.sources import locate_model

    hashes = hashes or {}

    def one(model_id: str) -> str:
        if model_id in hashes:
            return hashes[model_id]
        folder, adapter = locate_model(model_id, None, model_id)
        if adapter is None:
            return Checkpoint(folder).sha256()
        from merge_core.lora import LoraCheckpoint  # `<base>+<adapter>`: the same hash the search stores

        return LoraCheckpoint(Checkpoint(folder), adapter, model_id, model_id).sha256()

    return {"models.base": one(base), **{f"models.sources[{i}]": one(s) for i, s in enumerate(sources)}}


def stored(study: optuna.Study) -> dict[str, Any] | None:
    """The identity a study was created with (None for studies made before identities were stored)."""
    value = study.user_attrs.get(IDENTITY_ATTR)
    return dict(value) if isinstance(value, dict) else None


def check(study: optuna.Study, current: dict[str, Any], what: str) -> None:
    """UserError naming the first setting (or source) that differs from the study's stored identity."""
    old = stored(study)
    if old is None:
        return
    # keys only one side has (a setting added by a newer version, hashes not computed yet) are not compared
    diffs = [k for k in sorted(set(old) & set(current)) if old[k] != current[k]]
    if not diffs:
        return
    key = diffs[0]
    more = f" (and {len(diffs) - 1} more: {', '.join(diffs[1:4])})" if len(diffs) > 1 else ""
    if key.startswith("models."):
        detail = f"{key} has other weights than when the study was created (sha256 {_short(old.get(key))} vs " \
                 f"{_short(current[key])})"
    else:
        detail = f"{key} was {_show(old[key])} when the study was created, now {_show(current[key])}"
    raise UserError(f"{what}: study {study.study_name!r}: {detail}{more}; {_FIX}")


def verify(cfg: DictConfig, study: optuna.Study, what: str, models: tuple[str, list[str]] | None = None,
           hashes: dict[str, str] | None = None) -> dict[str, Any]:
    """Check the config, then (given the resolved base and sources) their weight hashes; returns the identity."""
    current = config_identity(cfg)
    check(study, current, what)  # the cheap part first: no weights read when a setting already differs
    if models is not None:
        current.update(source_hashes(models[0], models[1], hashes))
        check(study, current, what)
    return current


def record(study: optuna.Study, current: dict[str, Any]) -> None:
    """Store the identity on a new study (or one made before identities were stored)."""
    if stored(study) is None:
        study.set_user_attr(IDENTITY_ATTR, current)


def existing_study(cfg: DictConfig) -> optuna.Study | None:
    """The config's study if its storage already holds it, opened without creating any file or table."""
    from evolve.storage_check import is_journal
    from evolve.study import make_storage, storage_url

    url = storage_url(cfg)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        return None
    if is_journal(url) and not Path(url).is_file():
        return None
    try:
        return optuna.load_study(study_name=cfg.study_name, storage=make_storage(cfg))
    except KeyError:
        return None


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: data}


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _short(value: Any) -> str:
    return str(value)[:12] if value else "?"
