"""Everything a study's trials, its selection, export and report share, built once: the search context.

`build_context` resolves the models, declares the genome, opens the sources, builds the one live model and the dev
Evaluator; the all-dev and held-out test evaluators are built on first use (export and report need them, a search
that neither exports nor reports does not). The evaluator class is injected (`evaluator_factory`, default
`evolve.evaluate.Evaluator`), never named in the user's config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from evolve.errors import UserError
from evolve.genome import Genome, make_genome, to_recipe
from evolve.models import resolve_models
from evolve.preflight import check_tokenizer, layer_count
from evolve.ps_dfs import ps_model_dir

# same constructor and methods as evolve.evaluate.Evaluator: (model, tokenizer, tasks, *, split, batch_size, ...)
EvaluatorFactory = Callable[..., Any]


def default_evaluator() -> EvaluatorFactory:
    """The project's lm-eval Evaluator (imported on demand: lm-eval is heavy)."""
    from evolve.evaluate import Evaluator

    return Evaluator


def eval_options(cfg: DictConfig) -> dict[str, Any]:
    """Evaluator keywords every evaluator of a study shares: the include path and the dev/test partition rule."""
    from evolve.splits import SplitRule

    t = cfg.tasks
    include = [str(p) for p in (t.get("include_path") or [])]
    return {"include_path": include or None, "split_rule": SplitRule.from_conf(t.get("split"))}


def _extra_stacks(cfg: DictConfig) -> list[str] | None:
    """genome=ps_dfs: the stage-1 PS result is the last DFS stack."""
    return [str(ps_model_dir(cfg))] if cfg.genome.kind == "ps_dfs" else None


def declare_genome(cfg: DictConfig, base: str, sources: list[str], n_layers: int) -> Genome:
    """The study's search space for these resolved models (one declaration for search, export and report)."""
    return make_genome(cfg.method, cfg.genome, n_layers=n_layers, base=base, sources=sources,
                       tokenizer_source=cfg.models.get("tokenizer_source"), extra_stacks=_extra_stacks(cfg))


def plan_genome(cfg: DictConfig) -> Genome:
    """The genome alone, without opening any weights (the report's plots of a stored study)."""
    base, sources = resolve_models(cfg, progress=False)
    return declare_genome(cfg, base, sources, layer_count(base, "models.base"))


@dataclass
class Context:
    """A study's models, live model, genome and evaluators (see the module docstring)."""

    cfg: DictConfig
    genome: Genome
    models: tuple[str, list[str]]  # resolved (base, sources) model ids
    sources: Any  # merge_core.sources.Sources, opened once
    model: Any  # the live model every trial merges into, in place
    tokenizer: Any
    evaluator: Any  # the search's dev evaluator (tasks.limit, stages)
    evaluator_factory: EvaluatorFactory
    hashes: dict[str, str] = field(default_factory=dict)  # model id -> sha256 of its weights
    _full_dev: Any = field(default=None, init=False, repr=False)
    _test: Any = field(default=None, init=False, repr=False)
    _plan: Any = field(default=None, init=False, repr=False)  # merge_core.plan.RecipePlan of the genome's recipes

    def recipe(self, params: dict[str, float], trial_number: int | None, scores: dict | None = None) -> Any:
        """The Recipe of one point of the genome, with provenance (study, trial, seed, source hashes, scores)."""
        cfg = self.cfg
        prov: dict[str, Any] = {"seed": cfg.seed, "study": cfg.study_name, "trial": trial_number,
                                "source_hashes": dict(self.hashes)}
        if scores is not None:
            prov["scores"] = scores
        # typed directly from the genes (validated once per search, not parsed per trial; evolve.genome)
        return to_recipe(self.genome, params, prov, dtype="float32", out_dtype=cfg.out_dtype,
                         where=f"trial {trial_number}")

    def merge_point(self, recipe: Any) -> None:
        """Merge a recipe of a genome point into the live model; the tensor plan of their shared structure is made
        at the first one and re-bound to each later one (a layer path is applied by merge_core.path instead)."""
        from merge_core.live import merge_into, plan_merge

        if not isinstance(self.genome, Genome):  # genome=dfs/ps_dfs: passthrough recipes, no tensor plan
            merge_into(self.model, recipe, self.sources)
            return
        if self._plan is None:
            self._plan = plan_merge(recipe, self.sources)
        merge_into(self.model, recipe, self.sources, plan=self._plan)

    def full_dev_evaluator(self) -> Any:
        """An evaluator of every dev document (the search's own one when it already scores them all)."""
        if self._full_dev is None:
            t = self.cfg.tasks
            if t.limit is None:
                self._full_dev = self.evaluator  # its last stage is every dev document, in any order: the same mean
            else:
                self._full_dev = self.evaluator_factory(
                    self.model, self.tokenizer, list(t.names), split="dev", batch_size=t.batch_size,
                    device=self.cfg.device, limit=None, subset_seed=None, stages=[1.0], **eval_options(self.cfg))
        return self._full_dev

    def test_evaluator(self) -> Any:
        """The held-out (test split) evaluator on the live model."""
        if self._test is None:
            t = self.cfg.tasks
            self._test = self.evaluator_factory(
                self.model, self.tokenizer, list(t.names), split="test", batch_size=t.batch_size,
                device=self.cfg.device, limit=t.test_limit, subset_seed=None, stages=[1.0], allow_test=True,
                **eval_options(self.cfg))
        return self._test

    def dev_test_scores(self, recipe: Any) -> dict[str, float]:
        """Merge `recipe` into the live model and score it on every dev document and the held-out test (score keys)."""
        from merge_core.live import merge_into

        merge_into(self.model, recipe, self.sources)
        scores = dict(self.full_dev_evaluator().evaluate().scores)
        scores.update(self.test_evaluator().evaluate().scores)
        return {k: float(v) for k, v in scores.items()}

    def score_metrics(self) -> dict[str, str]:
        """Score key -> the primary metric it holds, for the dev and test evaluators."""
        metrics = dict(getattr(self.full_dev_evaluator(), "metrics", {}) or {})
        metrics.update(getattr(self.test_evaluator(), "metrics", {}) or {})
        return metrics

    @property
    def evaluator_name(self) -> str:
        """`module:Class` of the evaluator (part of the cross-study score cache key)."""
        kind = type(self.evaluator)
        return f"{kind.__module__}:{kind.__qualname__}"


def build_context(cfg: DictConfig, evaluator_factory: EvaluatorFactory | None = None) -> Context:
    """Prepare/open the models, build the live model and the dev Evaluator once for the whole study."""
    from merge_core.live import build_live_model
    from merge_core.recipe import parse_recipe
    from merge_core.sources import Sources

    base, sources = resolve_models(cfg, progress=cfg.progress)
    tok_source = cfg.models.get("tokenizer_source")
    n_layers = None
    if Path(base).is_dir():  # before any weights are opened: the genome's size and the tokenizer to load
        n_layers = layer_count(base, "models.base")
        if tok_source in (None, "base"):
            check_tokenizer(base, "models.base")
    if cfg.genome.kind == "ps_dfs" and not (ps_model_dir(cfg) / "config.json").is_file():
        raise UserError(f"genome=ps_dfs: no PS result at {ps_model_dir(cfg)}; run `evolve search` with this "
                        "config first (its first stage writes it)")
    genome = declare_genome(cfg, base, sources, n_layers or 1)
    opened = Sources.open(parse_recipe(genome.opening_recipe({"seed": cfg.seed}), where="search"))
    if n_layers is None:  # a hub id: the layer count is only known once opened
        genome = declare_genome(cfg, base, sources, opened.num_layers)
    model = build_live_model(opened, cfg.device, cfg.dtype)
    tokenizer = opened.output_tokenizer()  # a union tokenizer exists only in memory until export
    factory = evaluator_factory or default_evaluator()
    t = cfg.tasks
    evaluator = factory(model, tokenizer, list(t.names), split="dev", batch_size=t.batch_size, device=cfg.device,
                        limit=t.limit, subset_seed=t.subset_seed, stages=list(t.stages), **eval_options(cfg))
    hashes = {mid: ck.sha256() for mid, ck in opened.models.items()}
    from merge_core.methods import precomputed

    # TIES cuts / DARE codes for the genome's density grid: computed at the first trial, reused by every later one
    precomputed.attach(opened, Path(cfg.out_dir) / "cache" / "trims")
    return Context(cfg, genome, (base, sources), opened, model, tokenizer, evaluator, factory, hashes)


def ensure_context(cfg: DictConfig, ctx: Context | None = None,
                   evaluator_factory: EvaluatorFactory | None = None) -> Context:
    """`ctx`, or a new one when the caller (export or report of a stored study) has none."""
    return ctx if ctx is not None else build_context(cfg, evaluator_factory)
