"""What a run reads and where it writes: no output of a search or export may be, or lie inside, one of its inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from evolve.study import storage_file
from merge_core.overlap import refuse_overlap


def run_inputs(cfg: DictConfig, models: tuple[str, list[str]]) -> list[tuple[str, Any]]:
    """(what, path) of everything a search, export or report reads: the base, each source, the study's file."""
    from merge_core.sources import locate_model

    named = [("models.base", models[0]), *((f"models.sources[{i}]", s) for i, s in enumerate(models[1]))]
    found: list[tuple[str, Any]] = []
    for what, model_id in named:
        folder, adapter = locate_model(model_id, None, what)  # a hub id stands for its local snapshot folder
        found += [(what, folder)] + ([(f"{what} (adapter)", adapter)] if adapter is not None else [])
    return [*found, ("the study's storage", storage_file(cfg))]


def check_outputs(cfg: DictConfig, models: tuple[str, list[str]]) -> None:
    """out_dir may hold the models it reads (e.g. an earlier study's best/model) but not lie inside one, and
    what a search writes there (best/, report/) must be none of them."""
    inputs = [(what, p) for what, p in run_inputs(cfg, models) if what != "the study's storage"]
    out = Path(cfg.out_dir)
    refuse_overlap("out_dir", [out], inputs, may_contain=True)
    refuse_overlap("out_dir", [out / "best", out / "report"], inputs)
