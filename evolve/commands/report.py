"""`evolve report conf=NAME [k=v ...]`: redraw report/ (tables and plots) from the stored study."""

from __future__ import annotations

from typing import Any

from evolve.config import load_config


def run(args: list[str], evaluator_factory: Any = None) -> int:
    """Write report/ for the config's stored study and print the held-out table."""
    cfg, _ = load_config(args)
    from evolve.identity import verify
    from evolve.models import resolve_models
    from evolve.report import make_report
    from evolve.study import make_pruner, make_sampler, open_study
    from evolve.summary import closing_lines

    study = open_study(cfg, make_sampler(cfg), make_pruner(cfg), create=False)
    verify(cfg, study, "report", resolve_models(cfg, progress=False))
    print(make_report(cfg, study, evaluator_factory=evaluator_factory))
    print(closing_lines(cfg, [a for a in args if a not in ("-m", "--multirun")]))
    return 0
