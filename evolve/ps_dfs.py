"""genome=ps_dfs (Sakana's PS+DFS): a PS search first, then a DFS search whose stacks add the PS result.

Stage 1 is an ordinary PS search of `method` in `<out_dir>/ps/` (study `<study_name>-ps`, `genome.ps_trials`
trials, its best exported to `<out_dir>/ps/best/`); stage 2 is the DFS search of `<out_dir>/` over the base, the
sources and `<out_dir>/ps/best/model`. The result is a documented pair of mergekit recipes:
`<out_dir>/ps/best/recipe.yaml` builds the PS model, `<out_dir>/best/recipe.yaml` (passthrough) stacks layers of
it and of the other models. Both rebuild bit-identically with `evolve merge` (or mergekit-yaml, stage 1 first,
written to the folder stage 2 names).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

DFS_ONLY = ("repeats", "layer_range", "fixed_first", "fixed_last", "max_depth", "scale_low", "scale_high", "ps_trials")


def ps_stage_config(cfg: DictConfig) -> DictConfig:
    """The stage-1 config: genome=ps, ps_trials trials, its own out_dir (`<out_dir>/ps`) and study name."""
    data = OmegaConf.to_container(cfg, resolve=True)
    data["genome"] = {**data["genome"], "kind": "ps", **{k: None for k in DFS_ONLY}}
    data["study_name"] = f"{cfg.study_name}-ps"
    data["out_dir"] = str(Path(cfg.out_dir) / "ps")
    data["n_trials"] = int(cfg.genome.ps_trials)
    data["report"] = False  # the stage-2 report is the result; the PS best is exported for stage 2 to read
    data["export"] = True
    return OmegaConf.create(data)


def ps_model_dir(cfg: DictConfig) -> Path:
    """Where stage 1 leaves the PS result that stage 2 stacks (absolute, as recipes name it)."""
    return (Path(cfg.out_dir) / "ps" / "best" / "model").resolve()


def run_ps_stage(cfg: DictConfig, evaluator_factory: Callable[..., Any] | None = None) -> None:
    """Run (or resume) stage 1; a finished stage whose export names its best trial is left as it is."""
    import yaml

    from evolve.search import run_search

    ps_cfg = ps_stage_config(cfg)
    recipe = Path(ps_cfg.out_dir) / "best" / "recipe.yaml"
    if recipe.is_file() and _finished(ps_cfg, yaml.safe_load(recipe.read_text()).get("evolve_merge", {}).get("trial")):
        return
    run_search(ps_cfg, evaluator_factory)


def _finished(ps_cfg: DictConfig, exported_trial: Any) -> bool:
    from evolve.export import pick_trial
    from evolve.study import budget_state, make_pruner, make_sampler, open_study

    try:
        study = open_study(ps_cfg, make_sampler(ps_cfg), make_pruner(ps_cfg), create=False)
    except Exception:  # no stage-1 study yet (or an unreadable one): run_search says what is wrong
        return False
    if budget_state(study).counted < int(ps_cfg.n_trials):
        return False
    try:
        return pick_trial(study, "best").number == exported_trial
    except Exception:
        return False
