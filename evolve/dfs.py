"""The data-flow-space genome (Sakana's DFS): which layers of which models a token passes through, as a passthrough recipe.

Layout: the layers `genome.layer_range` of the M stacks (the base, then every source; ps_dfs adds the PS result)
are laid out in order and the whole sequence repeated `genome.repeats` times; each slot has a real-valued
indicator (slot kept when > 0) and a scale of its residual writers (`o_proj`, `down_proj`: the exportable form of
Sakana's scaling matrix W). The path is the anchor's first `fixed_first` layers, the kept slots in order, then the
anchor's last `fixed_last` layers (embedding side and head side stay the anchor's: the base, or under ps_dfs the
PS result); at most `max_depth` layers (slots
past it are dropped, in order). Size of the space: 2 x M x len(layer_range) x repeats floats (one per slot when
scale_low == scale_high), so a trial budget sets how many layers and repeats can be searched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import optuna

from evolve.errors import UserError

SCALED = ("o_proj", "down_proj")  # the residual writers of a Llama layer (attention out, MLP out)


@dataclass(frozen=True)
class Slot:
    """One searchable position: repeat, stack index and source layer, with its two gene names."""

    repeat: int
    stack: int
    layer: int
    on: str
    scale: str | None


@dataclass
class DfsGenome:
    """A declared DFS space and everything needed to turn a point of it into a passthrough recipe."""

    base: str
    stacks: list[str]
    sources: list[str]
    n_layers: int
    repeats: int
    layer_range: tuple[int, int]
    fixed_first: int
    fixed_last: int
    max_depth: int
    scale_low: float
    scale_high: float
    slots: list[Slot] = field(default_factory=list)
    tokenizer_source: str | None = None  # written into every recipe (vocabularies that differ)
    anchor: int = 0  # the stack whose first/last layers are fixed and whose own path is the first baseline
    kind: str = "dfs"

    def distributions(self) -> dict[str, optuna.distributions.FloatDistribution]:
        """The Optuna search space: identical on every trial, floats only (indicators and scales)."""
        out = {}
        for s in self.slots:
            out[s.on] = optuna.distributions.FloatDistribution(-1.0, 1.0)
            if s.scale:
                out[s.scale] = optuna.distributions.FloatDistribution(self.scale_low, self.scale_high)
        return out

    def suggest(self, trial: optuna.Trial) -> dict[str, float]:
        """Ask the trial for every gene, in declaration order."""
        return {name: trial.suggest_float(name, d.low, d.high) for name, d in self.distributions().items()}

    def _point(self, stack: int | None) -> dict[str, float]:
        # `stack`'s own layers between the fixed ends on (first repeat), every other slot off, scales 1
        a, b = self.fixed_first, self.n_layers - self.fixed_last
        point = {}
        for s in self.slots:
            point[s.on] = 0.5 if stack is not None and s.repeat == 0 and s.stack == stack and a <= s.layer < b else -0.5
            if s.scale:
                point[s.scale] = min(max(1.0, self.scale_low), self.scale_high)
        return point

    def baselines(self) -> list[dict[str, float]]:
        """Untuned paths to enqueue: each stack's own layers between the anchor's fixed ends (the anchor's first)."""
        points: list[dict[str, float]] = []
        for m in [self.anchor] + [m for m in range(len(self.stacks)) if m != self.anchor]:
            p = self._point(m)
            if p not in points:
                points.append(p)
        return points

    def opening_recipe(self, provenance: dict[str, Any]) -> dict[str, Any]:
        """A recipe naming every stack (opening its sources opens them all): one layer of each, max_depth aside."""
        slices = [{"sources": [{"model": m, "layer_range": [0, 1]}]} for m in self.stacks]
        recipe = {"merge_method": "passthrough", "base_model": self.base, "slices": slices, "evolve_merge": provenance}
        return recipe | ({"tokenizer_source": self.tokenizer_source} if self.tokenizer_source else {})

    def path(self, params: dict[str, float]) -> list[tuple[int, int, float]]:
        """The layer path of a point: (stack index, source layer, scale) per output position."""
        kept = [(s.stack, s.layer, params[s.scale] if s.scale else self.scale_low)
                for s in self.slots if params[s.on] > 0]
        room = self.max_depth - self.fixed_first - self.fixed_last
        if not kept and self.fixed_first + self.fixed_last == 0:
            # an empty path is no model: keep the slot the optimizer liked best
            s = max(self.slots, key=lambda s: params[s.on])
            kept = [(s.stack, s.layer, params[s.scale] if s.scale else self.scale_low)]
        head = [(self.anchor, i, 1.0) for i in range(self.fixed_first)]
        tail = [(self.anchor, i, 1.0) for i in range(self.n_layers - self.fixed_last, self.n_layers)]
        return head + kept[: max(room, 0)] + tail

    def recipe_dict(self, params: dict[str, float], provenance: dict[str, Any] | None = None,
                    dtype: str = "float32", out_dtype: str | None = None) -> dict[str, Any]:
        """A mergekit passthrough config for `params`: unscaled consecutive layers of one model share a slice."""
        slices: list[dict[str, Any]] = []
        run: list[Any] = []  # [stack, start, end] of the open unscaled slice

        def close() -> None:
            if run:
                slices.append({"sources": [{"model": self.stacks[run[0]], "layer_range": [run[1], run[2]]}]})
                run.clear()

        for stack, layer, scale in self.path(params):
            if scale == 1.0:
                if run and run[0] == stack and run[2] == layer:
                    run[2] += 1
                else:
                    close()
                    run.extend([stack, layer, layer + 1])
                continue
            close()
            value = float(scale)
            slices.append({"sources": [{"model": self.stacks[stack], "layer_range": [layer, layer + 1]}],
                           "parameters": {"scale": [{"filter": f, "value": value} for f in SCALED]}})
        close()
        recipe: dict[str, Any] = {"merge_method": "passthrough", "base_model": self.base, "slices": slices,
                                  "dtype": dtype}
        if out_dtype:
            recipe["out_dtype"] = out_dtype
        if self.tokenizer_source:
            recipe["tokenizer_source"] = self.tokenizer_source
        recipe["evolve_merge"] = dict(provenance or {})
        return recipe


def declare_dfs(genome: dict[str, Any], *, n_layers: int, base: str, sources: list[str],
                extra_stacks: list[str] | None = None, tokenizer_source: str | None = None) -> DfsGenome:
    """The DFS space for a genome config and model shape; `extra_stacks` (ps_dfs: the PS result) join the stacks.

    With extra stacks the last one is the anchor: its ends are fixed and its own path is the first baseline, so a
    ps_dfs DFS stage starts from the PS result (Sakana's DFS runs over the PS merge and the sources).
    """
    repeats = int(genome.get("repeats") or 1)
    lr = genome.get("layer_range")
    a, b = (0, n_layers) if lr is None else (int(lr[0]), int(lr[1]))
    if not 0 <= a < b <= n_layers:
        raise UserError(f"genome.layer_range: [{a}, {b}] is not inside the models' {n_layers} layers; "
                        f"use 0 <= start < end <= {n_layers}")
    fixed_first, fixed_last = int(genome.get("fixed_first") or 0), int(genome.get("fixed_last") or 0)
    if fixed_first + fixed_last > n_layers:
        raise UserError(f"genome.fixed_first + fixed_last: {fixed_first + fixed_last} is more than the base's "
                        f"{n_layers} layers; lower them")
    max_depth = genome.get("max_depth")
    max_depth = 2 * n_layers if max_depth is None else int(max_depth)
    if max_depth < max(fixed_first + fixed_last, 1):
        raise UserError(f"genome.max_depth: {max_depth} cannot hold the {fixed_first + fixed_last} fixed layers; "
                        "raise it (null = twice the base's depth)")
    low, high = float(genome.get("scale_low", 1.0)), float(genome.get("scale_high", 1.0))
    stacks = [base] + [s for s in sources if s != base] + list(extra_stacks or [])
    slots = []
    for r in range(repeats):
        for m in range(len(stacks)):
            for layer in range(a, b):
                name = f"r{r}.m{m}.l{layer:03d}"
                slots.append(Slot(r, m, layer, f"{name}.on", f"{name}.scale" if high > low else None))
    return DfsGenome(base=base, stacks=stacks, sources=list(sources), n_layers=n_layers, repeats=repeats,
                     layer_range=(a, b), fixed_first=fixed_first, fixed_last=fixed_last, max_depth=max_depth,
                     scale_low=low, scale_high=high, slots=slots, tokenizer_source=tokenizer_source,
                     anchor=len(stacks) - 1 if extra_stacks else 0)
