"""genome=ps_dfs (Sakana's PS+DFS): a PS search first, then a DFS search whose stacks add the PS result.

Stage 1 is an ordinary PS search of `method` in `<out_dir>/ps/` (study `<study_name>-ps`, `genome.ps_trials`
trials, its best exported to `<out_dir>/ps/best/`); stage 2 is the DFS search of `<out_dir>/` over the base, the
sources and `<out_dir>/ps/best/model`. The result is a documented pair of mergekit recipes:
`<out_dir>/ps/best/recipe.yaml` builds the PS model, `<out_dir>/best/recipe.yaml` (passthrough) stacks layers of
it and of the other models. Both rebuild bit-identically with `evolve merge` (or mergekit-yaml, stage 1 first,
written to the folder stage 2 names). This module says what the stages are; evolve.pipeline runs them.
"""

from __future__ import annotations

from pathlib import Path

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
