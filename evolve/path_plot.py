"""The plot of a layer path: which model and source layer each output position takes, and its scale."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def path_figure(genome: Any, params: dict[str, float], title: str) -> Any:
    """A matplotlib figure: one bar per output position, colored by model, labeled with the source layer, height = scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = genome.path(params)
    names = [Path(s).name or s for s in genome.stacks]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(path) + 2.5), 3.6))
    colors = [f"C{m % 10}" for m, _, _ in path]
    ax.bar(range(len(path)), [scale for _, _, scale in path], color=colors, edgecolor="black", linewidth=0.4)
    for x, (_, layer, scale) in enumerate(path):
        ax.text(x, scale + 0.02, str(layer), ha="center", va="bottom", fontsize=7)
    ax.axhline(1.0, color="grey", linewidth=0.6, linestyle=":")
    handles = [plt.Rectangle((0, 0), 1, 1, color=f"C{m % 10}") for m in range(len(names))]
    ax.legend(handles, names, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), title="model")
    ax.set_xlabel(f"output position (depth {len(path)}; the base has {genome.n_layers}); label = source layer")
    ax.set_ylabel("scale of o_proj / down_proj")
    ax.set_ylim(0, max([1.2] + [s + 0.2 for _, _, s in path]))
    ax.set_title(title)
    return fig
