"""`evolve export conf=NAME [trial=best|N] [out=DIR] [k=v ...]`: a stored trial -> recipe.yaml + model folder."""

from __future__ import annotations

from typing import Any

from evolve.commands._args import refuse_empty
from evolve.config import load_config


def split_own(args: list[str], keys: tuple[str, ...]) -> tuple[dict[str, str], list[str]]:
    """Take this command's own `key=value` arguments out of the config overrides."""
    own = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in args if a.split("=", 1)[0] in keys}
    for key, raw in own.items():
        refuse_empty(key, raw)
    return own, [a for a in args if a.split("=", 1)[0] not in keys]


def run(args: list[str], evaluator_factory: Any = None) -> int:
    """Export one trial of the config's stored study."""
    own, rest = split_own(args, ("trial", "out"))
    cfg, _ = load_config(rest)
    from evolve.export import export_trial
    from evolve.identity import verify
    from evolve.models import resolve_models
    from evolve.study import make_pruner, make_sampler, open_study

    study = open_study(cfg, make_sampler(cfg), make_pruner(cfg), create=False)
    # a trial is rebuilt only under the settings and source weights that scored it
    verify(cfg, study, "export", resolve_models(cfg, progress=False))
    path = export_trial(cfg, study, own.get("trial", "best"), own.get("out"), evaluator_factory=evaluator_factory)
    print(f"wrote {path}/recipe.yaml and {path}/model")
    return 0
