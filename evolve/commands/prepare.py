"""`evolve prepare conf=NAME [k=v ...]`: make (or reuse) the models a config's preparer builds, and list them."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from evolve.errors import UserError


def run(args: list[str]) -> int:
    """Run the preparer named in `models.prepare` of the composed config; print name -> folder."""
    from evolve.config import load_config
    from evolve.models import get_preparer

    cfg, cargs = load_config(args)
    if not cfg.models.prepare:
        raise UserError(f"{cargs.label}: models.prepare is null, so there is nothing to prepare; pick a config "
                        "whose models group names a preparer (e.g. conf=demo or conf=tiny)")
    options = OmegaConf.to_container(cfg.models.prepare_options, resolve=True) or {}
    made = get_preparer(cfg.models.prepare)(Path(cfg.models.cache_dir), seed=cfg.seed, progress=True, **options)
    for name, path in made.items():
        print(f"{name}: {path}")
    return 0
