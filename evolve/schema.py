"""Dataclass schema of a search config, registered in Hydra's ConfigStore so types are checked at composition."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class Bounds:
    """Search range of one merge parameter; per_source=False means one value per layer group for all sources."""

    low: float = 0.0
    high: float = 1.0
    per_source: bool = True


@dataclass
class MethodConf:
    """A merge method: its name, which parameters are searched (and bounds), untuned defaults, fixed options."""

    name: str = MISSING
    search: Dict[str, Bounds] = field(default_factory=dict)
    # values of the enqueued baseline trial; weight null = 1 / number of sources
    baseline: Dict[str, Optional[float]] = field(default_factory=dict)
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelsConf:
    """Base and source models: prepared on the spot (prepare=name) or folders / Hugging Face ids."""

    prepare: Optional[str] = None
    prepare_options: Dict[str, Any] = field(default_factory=dict)
    cache_dir: str = ".cache/evolve/models"
    seed: int = 0  # seed of the models a preparer makes; apart from the search's seed so seed sweeps share one cache
    base: str = MISSING
    sources: List[str] = MISSING  # folders, HF ids, prepared names or `<base>+<LoRA adapter folder>`
    # how vocabularies that differ are reconciled (mergekit's tokenizer_source): null (must agree), base, union or a model
    tokenizer_source: Optional[str] = None


@dataclass
class SplitConf:
    """The project's dev/test partition of a task that is not an eval_tasks pair (evolve/splits.py)."""

    dev_size: int = 500  # dev documents per task, at most ...
    dev_fraction: float = 0.5  # ... this fraction of the task's evaluation documents; the rest is the held-out test
    seed: int = 0  # apart from the search's seed, so every study of a task holds out the same documents


@dataclass
class SelectConf:
    """How the exported best is chosen: the top trials re-scored on all dev documents (the winner's curse)."""

    top_k: int = 5  # per objective for multi-objective optimizers; 1 = the search's own best, no re-scoring


@dataclass
class TasksConf:
    """Which tasks score a candidate, their weights and how much data each stage uses."""

    names: List[str] = MISSING
    weights: Optional[List[float]] = None
    batch_size: int = 16
    limit: Optional[int] = None
    subset_seed: Optional[int] = None
    stages: List[float] = field(default_factory=lambda: [1.0])
    test_limit: Optional[int] = None  # first N held-out items per task in the report (null = all; for quick looks)
    # folders of the user's own lm-eval task YAMLs (any layout `lm_eval --include_path` accepts); eval_tasks/ is always on
    include_path: List[str] = field(default_factory=list)
    split: SplitConf = field(default_factory=SplitConf)


# One schema per option of the optimizer and pruner groups (Hydra's structured config schema per config group
# option): each conf/<group>/<option>.yaml extends its schema through its defaults list, so a key the chosen option
# does not use (`optimizer=cmaes optimizer.multi_objective=true`) fails at composition; evolve.config names it.


@dataclass
class OptimizerConf:
    """What every optimizer option has: its name and the keyword options of its Optuna sampler."""

    name: str = "cmaes"
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class CmaesConf(OptimizerConf):
    """optimizer=cmaes: Optuna's CmaEsSampler (single-objective only)."""

    name: str = "cmaes"


@dataclass
class MultiObjectiveConf(OptimizerConf):
    """An optimizer that can also search one objective per task (multi_objective=true)."""

    multi_objective: bool = False


@dataclass
class TpeConf(MultiObjectiveConf):
    """optimizer=tpe: Optuna's TPESampler."""

    name: str = "tpe"


@dataclass
class GpConf(MultiObjectiveConf):
    """optimizer=gp: Optuna's GPSampler."""

    name: str = "gp"


@dataclass
class RandomConf(MultiObjectiveConf):
    """optimizer=random: Optuna's RandomSampler."""

    name: str = "random"


@dataclass
class Nsga2Conf(MultiObjectiveConf):
    """optimizer=nsga2: Optuna's NSGAIISampler; a Pareto front over the tasks unless multi_objective=false."""

    name: str = "nsga2"
    multi_objective: bool = True


@dataclass
class PrunerConf:
    """What every pruner option has: its name."""

    name: str = "median"


@dataclass
class MedianPrunerConf(PrunerConf):
    """pruner=median: Optuna's MedianPruner over the evaluation stages."""

    name: str = "median"
    n_startup_trials: int = 4
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class HalvingPrunerConf(PrunerConf):
    """pruner=halving: Optuna's SuccessiveHalvingPruner over the evaluation stages (min_resource 1)."""

    name: str = "halving"
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class NoPrunerConf(PrunerConf):
    """pruner=none: every trial is scored on all its stages."""

    name: str = "none"


# option name -> its schema; the group's YAML files are the same names (conf/<group>/<option>.yaml)
OPTIONS: Dict[str, Dict[str, type]] = {
    "optimizer": {"cmaes": CmaesConf, "tpe": TpeConf, "gp": GpConf, "random": RandomConf, "nsga2": Nsga2Conf},
    "pruner": {"median": MedianPrunerConf, "halving": HalvingPrunerConf, "none": NoPrunerConf},
}


def multi_objective(cfg: Any) -> bool:
    """Whether the search has one objective per task (only optimizers whose schema has multi_objective can)."""
    return bool(cfg.optimizer.get("multi_objective", False))


@dataclass
class GenomeConf:
    """The search space: `ps` per-layer merge parameters, `dfs` layer paths, `ps_dfs` a PS search then a DFS one."""

    kind: str = "ps"
    # ps (and ps_dfs's first stage): granularity of the per-layer parameters
    layer_group_size: int = 1
    split_attn_mlp: bool = False
    # dfs / ps_dfs only (null under ps; see conf/genome/dfs.yaml and evolve/dfs.py)
    repeats: Optional[int] = None
    layer_range: Optional[List[int]] = None
    fixed_first: Optional[int] = None
    fixed_last: Optional[int] = None
    max_depth: Optional[int] = None
    scale_low: Optional[float] = None
    scale_high: Optional[float] = None
    # ps_dfs only: trials of the PS stage (n_trials counts the DFS stage)
    ps_trials: Optional[int] = None


@dataclass
class SearchConfig:
    """A whole search: the top-level keys every config has plus the groups."""

    study_name: str = MISSING
    out_dir: str = MISSING
    storage: Optional[str] = None  # null = sqlite:///<out_dir>/study.db
    n_trials: int = 16
    seed: int = 0
    device: str = "auto"  # auto = cuda when present, else cpu
    threads: int = 0  # torch CPU threads; 0 = torch's default (small models run fastest on 1)
    dtype: str = "float32"  # dtype of the live candidate model
    out_dtype: str = "bfloat16"  # dtype of the exported model; unlike dtype, its scores may differ slightly from the report
    max_failures_in_row: int = 5
    heartbeat_interval: int = 10
    grace_period: int = 30
    progress: bool = True
    export: bool = True
    report: bool = True
    # keep the report's source and baseline scores in <models.cache_dir>/scores/, keyed by weights, tasks and settings
    score_cache: bool = True
    models: ModelsConf = field(default_factory=ModelsConf)
    tasks: TasksConf = field(default_factory=TasksConf)
    method: MethodConf = field(default_factory=MethodConf)
    optimizer: OptimizerConf = field(default_factory=OptimizerConf)
    pruner: PrunerConf = field(default_factory=PrunerConf)
    genome: GenomeConf = field(default_factory=GenomeConf)
    select: SelectConf = field(default_factory=SelectConf)


def register() -> None:
    """Store the schema as `search_schema` (primary configs list it first in their defaults) and each group option's
    schema as `schema/<group>/<option>` (its YAML lists `/schema/<group>/<option>@_here_` first)."""
    cs = ConfigStore.instance()
    cs.store(name="search_schema", node=SearchConfig)
    for group, options in OPTIONS.items():
        for name, node in options.items():
            cs.store(group=f"schema/{group}", name=name, node=node)
