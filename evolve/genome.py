"""The search space, declared once (`declare`), and genome -> mergekit models-form recipe.

Layout of a genome: for every searched parameter of the method, per source model (or shared, for global
parameters such as slerp's `t`), one float per layer group (`genome.layer_group_size` consecutive layers;
attention and MLP apart when `genome.split_attn_mlp`) plus one float for the embeddings/final norm/head.

In the recipe each group value is repeated for every layer of its group, giving a gradient list with exactly
one value per layer; mergekit evaluates layer i of n at t = i/(n-1), which indexes that list exactly, so
mergekit and merge_core read the same per-layer values. With split_attn_mlp, `input_layernorm` follows the
attention value and `post_attention_layernorm` the MLP value.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf

from merge_core.architecture import family
from merge_core.methods import METHODS, PARAM_BOUNDS
from merge_core.recipe import Condition, ModelEntry, Params, Recipe, Setting, parse_recipe


def _outer_filters() -> tuple[str, ...]:
    # the embedding, head and final-norm filters of the architecture data (mergekit: first matching condition wins)
    return family().outer_filters()


@dataclass(frozen=True)
class Gene:
    """One searched float: parameter, source index (None = shared by all sources), part and group."""

    name: str
    param: str
    source: int | None
    part: str  # "embed", "layer", "attn" or "mlp"
    group: int | None
    low: float
    high: float


def _step(g: Gene) -> float | None:
    """Densities move on merge_core's grid (its TIES cuts / DARE codes are computed once per search); others freely."""
    from merge_core.methods.precomputed import GRID_STEP

    return GRID_STEP if g.param == "density" else None


@dataclass
class Genome:
    """A declared search space and everything needed to turn a point of it into a recipe."""

    method: str
    base: str | None
    sources: list[str]
    n_layers: int
    group_size: int
    split: bool
    genes: list[Gene]
    baseline: dict[str, float | None]
    options: dict[str, Any] = field(default_factory=dict)
    tokenizer_source: str | None = None  # written into every recipe (vocabularies that differ)
    kind: str = "ps"
    # mergekit filters of the embeddings, head and final norm (one gene), from the architecture data
    outer_filters: tuple[str, ...] = field(default_factory=_outer_filters)
    # (dtype, out_dtype) -> the method options as parse_recipe typed them, once a recipe of this genome was parsed
    _parsed_options: dict[tuple[str, str | None], Params] = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_groups(self) -> int:
        """Number of layer groups."""
        return math.ceil(self.n_layers / self.group_size)

    @property
    def parts(self) -> tuple[str, ...]:
        """The per-layer parts a layer group is split into."""
        return ("attn", "mlp") if self.split else ("layer",)

    def distributions(self) -> dict[str, optuna.distributions.FloatDistribution]:
        """The Optuna search space: identical on every trial, floats only."""
        return {g.name: optuna.distributions.FloatDistribution(g.low, g.high, step=_step(g)) for g in self.genes}

    def suggest(self, trial: optuna.Trial) -> dict[str, float]:
        """Ask the trial for every gene, in declaration order."""
        return {g.name: trial.suggest_float(g.name, g.low, g.high, step=_step(g)) for g in self.genes}

    def baselines(self) -> list[dict[str, float]]:
        """Untuned starting points to enqueue: equal weights (1/n) and the method's default density/t."""
        n = len(self.sources)
        points = []
        for weight in (1.0 / n, 1.0):
            point = {}
            for g in self.genes:
                value = self.baseline.get(g.param)
                if g.param == "weight":
                    value = weight if value is None else value
                if value is None:
                    value = (g.low + g.high) / 2
                point[g.name] = min(max(float(value), g.low), g.high)
            if point not in points:
                points.append(point)
        # a second (weight 1.0) point only matters when weights are not normalized away
        if self.options.get("normalize", False) or "weight" not in {g.param for g in self.genes}:
            points = points[:1]
        return points

    def opening_recipe(self, provenance: dict[str, Any]) -> dict[str, Any]:
        """A recipe naming every model (opening its sources opens them all)."""
        return self.recipe_dict(self.baselines()[0], provenance)

    def layer_values(self, params: dict[str, float]) -> dict[str, dict[int | None, dict[str, list[float]]]]:
        """Per-layer values: param -> source index (None = shared) -> part -> list (one per layer; embed: [x])."""
        out: dict[str, dict[int | None, dict[str, list[float]]]] = {}
        for g in self.genes:
            parts = out.setdefault(g.param, {}).setdefault(g.source, {})
            if g.part == "embed":
                parts["embed"] = [params[g.name]]
                continue
            values = parts.setdefault(g.part, [math.nan] * self.n_layers)
            start = g.group * self.group_size
            for layer in range(start, min(start + self.group_size, self.n_layers)):
                values[layer] = params[g.name]
        return out

    def _setting(self, parts: dict[str, list[float]]) -> list[dict[str, Any]]:
        """mergekit conditional parameter list for one (param, source)."""
        embed = parts["embed"][0]
        conds: list[dict[str, Any]] = [{"filter": f, "value": embed} for f in self.outer_filters]
        if self.split:
            conds.append({"filter": "post_attention_layernorm", "value": parts["mlp"]})
            conds.append({"filter": "mlp", "value": parts["mlp"]})
            conds.append({"value": parts["attn"]})
        else:
            conds.append({"value": parts["layer"]})
        return conds

    def recipe_dict(self, params: dict[str, float], provenance: dict[str, Any] | None = None,
                    dtype: str = "float32", out_dtype: str | None = None) -> dict[str, Any]:
        """A mergekit models-form config for `params`; `evolve_merge` carries the seed and provenance."""
        values = self.layer_values(params)
        models = []
        for i, src in enumerate(self.sources):
            per = {p: self._setting(by_src[i]) for p, by_src in values.items() if i in by_src}
            models.append({"model": src, "parameters": per} if per else {"model": src})
        globals_ = {p: self._setting(by_src[None]) for p, by_src in values.items() if None in by_src}
        recipe: dict[str, Any] = {"merge_method": self.method}
        if self.base is not None:
            recipe["base_model"] = self.base
        recipe["models"] = models
        parameters = dict(self.options)
        parameters.update(globals_)
        if parameters:
            recipe["parameters"] = parameters
        recipe["dtype"] = dtype
        if self.tokenizer_source:
            recipe["tokenizer_source"] = self.tokenizer_source
        if out_dtype:
            recipe["out_dtype"] = out_dtype
        recipe["evolve_merge"] = dict(provenance or {})
        return recipe


    def recipe(self, params: dict[str, float], provenance: dict[str, Any] | None = None, dtype: str = "float32",
               out_dtype: str | None = None, where: str = "recipe") -> Recipe:
        """The typed Recipe of `recipe_dict(params, ...)`: equal to parse_recipe of it, built without parsing it.

        The first recipe of each (dtype, out_dtype) is parsed (every check of the structure: models, options,
        dtypes; once per search); later ones are built from the gene values, which only need to be finite numbers
        in their parameters' ranges. Anything else (or a seed that is not an int >= 0) goes through parse_recipe,
        so it fails with parse_recipe's one-line error.
        """
        key = (dtype, out_dtype)
        prov = dict(provenance or {})
        seed = prov.get("seed", 0)
        if key not in self._parsed_options or not self._plain(params, seed):
            parsed = parse_recipe(self.recipe_dict(params, prov, dtype=dtype, out_dtype=out_dtype), where=where)
            self._parsed_options.setdefault(key, {k: parsed.parameters[k] for k in self.options})
            return parsed
        values = self.layer_values(params)
        models = tuple(
            ModelEntry(src, {p: self._conditions(by_src[i]) for p, by_src in values.items() if i in by_src})
            for i, src in enumerate(self.sources)
        )
        # the order recipe_dict writes (options, then global genes in their place), so the exported YAML is the same
        shared = {p: self._conditions(by_src[None]) for p, by_src in values.items() if None in by_src}
        options = self._parsed_options[key]
        parameters = {k: shared.get(k, v) for k, v in options.items()} | shared
        return Recipe(
            merge_method=self.method, models=models, base_model=self.base, parameters=parameters, dtype=dtype,
            out_dtype=out_dtype or None, tokenizer_source=self.tokenizer_source or None, seed=seed,
            provenance={k: v for k, v in prov.items() if k != "seed"}, where=where,
        )

    def _plain(self, params: dict[str, float], seed: Any) -> bool:
        """Whether every gene value is a finite number in its parameter's range and the seed an int >= 0."""
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            return False
        for g in self.genes:
            v = params[g.name]
            lo, hi = PARAM_BOUNDS.get(g.param, (-math.inf, math.inf))
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not (math.isfinite(v) and lo <= v <= hi):
                return False
        return True

    def _conditions(self, parts: dict[str, list[float]]) -> tuple[Condition, ...]:
        """_setting's conditions as parse_recipe types them (lists become tuples)."""
        setting: Setting = tuple(
            Condition(tuple(c["value"]) if isinstance(c["value"], list) else c["value"], c.get("filter"))
            for c in self._setting(parts)
        )
        return setting  # type: ignore[return-value]


EMBED_GENE = "embed_norm_head"  # the one gene of the embeddings, the final norm and the head (Genome.outer_filters)


def short_names(sources: list[str]) -> list[str]:
    """A source's name in gene names (what optuna-dashboard shows): its folder or repo name, made unique."""
    names = []
    for i, src in enumerate(sources):
        name = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(str(src).split("+")[-1]).name).strip("_") or f"s{i}"
        names.append(name)
    return [n if names.count(n) == 1 else f"{n}_s{i}" for i, n in enumerate(names)]


def declare(method: DictConfig | dict, genome: DictConfig | dict, *, n_layers: int, base: str,
            sources: list[str], tokenizer_source: str | None = None) -> Genome:
    """The one declaration of the search space for a method config, genome config and model shape."""
    method = OmegaConf.to_container(method, resolve=True) if isinstance(method, DictConfig) else dict(method)
    genome = OmegaConf.to_container(genome, resolve=True) if isinstance(genome, DictConfig) else dict(genome)
    group_size = int(genome.get("layer_group_size", 1))
    split = bool(genome.get("split_attn_mlp", False))
    n_groups = math.ceil(n_layers / group_size)
    parts = ("attn", "mlp") if split else ("layer",)
    genes: list[Gene] = []
    short = short_names(sources)
    for param, b in method["search"].items():
        owners: list[int | None] = list(range(len(sources))) if b.get("per_source", True) else [None]
        for src in owners:
            prefix = f"{param}.{short[src]}" if src is not None else param
            genes.append(Gene(f"{prefix}.{EMBED_GENE}", param, src, "embed", None, b["low"], b["high"]))
            for part in parts:
                for g in range(n_groups):
                    genes.append(Gene(f"{prefix}.{part}{g:02d}", param, src, part, g, b["low"], b["high"]))
    # a method without a base (linear) averages the sources alone; mergekit would otherwise add the base as an input
    spec = METHODS.get(method["name"])  # an unknown name is refused, in one line, when its recipe is parsed
    uses_base = spec is None or spec.needs_base
    return Genome(
        method=method["name"], base=base if uses_base else None, sources=list(sources), n_layers=n_layers,
        group_size=group_size, split=split, genes=genes, baseline=dict(method.get("baseline") or {}),
        options=dict(method.get("options") or {}), tokenizer_source=tokenizer_source,
    )


def make_genome(method: DictConfig | dict, genome: DictConfig | dict, *, n_layers: int, base: str,
                sources: list[str], tokenizer_source: str | None = None, extra_stacks: list[str] | None = None) -> Any:
    """The genome of `genome.kind`: a PS Genome (declare) or a DfsGenome (evolve.dfs; ps_dfs's DFS stage too)."""
    g = OmegaConf.to_container(genome, resolve=True) if isinstance(genome, DictConfig) else dict(genome)
    if g.get("kind", "ps") == "ps":
        return declare(method, g, n_layers=n_layers, base=base, sources=sources, tokenizer_source=tokenizer_source)
    from evolve.dfs import declare_dfs

    return declare_dfs(g, n_layers=n_layers, base=base, sources=sources, extra_stacks=extra_stacks,
                       tokenizer_source=tokenizer_source)


def to_recipe(genome: Any, params: dict[str, float], provenance: dict[str, Any] | None = None, *, dtype: str = "float32",
              out_dtype: str | None = None, where: str = "recipe") -> Recipe:
    """The Recipe of one point of any genome: a PS Genome builds it directly (Genome.recipe), others parse recipe_dict."""
    if isinstance(genome, Genome):
        return genome.recipe(params, provenance, dtype=dtype, out_dtype=out_dtype, where=where)
    return parse_recipe(genome.recipe_dict(params, provenance, dtype=dtype, out_dtype=out_dtype), where=where)
