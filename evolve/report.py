"""`report/`: results.json / results.md (evolved best vs sources vs untuned baselines, dev and test) and plots."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig
from optuna.trial import TrialState

from evolve import score_cache
from evolve.config import compose_method
from evolve.context import Context, EvaluatorFactory, ensure_context, eval_options, plan_genome
from evolve.objective import combined
from evolve.select import best_trial
from merge_core.writer import atomic_write_text, remove_stale_temps, temp_tag

BASELINES = ("task_arithmetic", "ties", "dare_ties")  # untuned merges every report compares against
REPORT_ROWS_VERSION = 3  # bump when the set of rows (or how they are scored) changes, so cached reports redo them
SPLITS_ATTR = "splits"


def _rows_to_score(cfg: DictConfig, best: Any, ctx: Context) -> list[tuple[str, str, Any]]:
    """(name, kind, recipe) for the evolved best, every source, and the untuned baselines."""
    from evolve.genome import declare
    from merge_core.recipe import parse_recipe

    rows = [(f"evolved (trial {best.number})", "evolved", ctx.recipe(best.params, best.number))]
    g = ctx.genome
    base = ctx.sources.base_id
    # the base model first (when it is not itself a source), then every source, each alone
    for src in ([base] if base and base not in g.sources else []) + list(g.sources):
        # a one-model linear merge reproduces the source exactly (weight 1, normalized)
        data = {"merge_method": "linear", "models": [{"model": src, "parameters": {"weight": 1.0}}], "dtype": "float32"}
        name = Path(src).name or src
        rows.append((f"base ({name})" if src == base else name, "source", parse_recipe(data, where=f"source {src}")))
    for extra in getattr(g, "stacks", [])[1 + len(g.sources):]:  # ps_dfs: the PS result its DFS stage stacks
        data = {"merge_method": "linear", "models": [{"model": extra, "parameters": {"weight": 1.0}}], "dtype": "float32"}
        rows.append(("PS stage best", "baseline", parse_recipe(data, where=f"stack {extra}")))
    for name in BASELINES:
        method = compose_method(name)  # conf/method/<name>.yaml through Hydra and the schema, as a search reads it
        bg = declare(method, {**ctx.cfg.genome, "kind": "ps"}, n_layers=g.n_layers, base=base, sources=g.sources,
                     tokenizer_source=cfg.models.get("tokenizer_source"))
        data = bg.recipe_dict(bg.baselines()[0], {"seed": int(cfg.seed)}, dtype="float32")
        rows.append((f"{name} (untuned)", "baseline", parse_recipe(data, where=f"baseline {name}")))
    return rows


def collect_rows(cfg: DictConfig, study: optuna.Study, ctx: Context | None = None,
                 evaluator_factory: EvaluatorFactory | None = None) -> list[dict[str, Any]]:
    """Score every row on dev and test (cached in the study's user attrs, so a redraw recomputes nothing)."""
    best, ctx = best_trial(cfg, study, ctx, evaluator_factory)
    attrs = study.user_attrs
    keys = attrs.get("report_keys")
    fresh = (attrs.get("report_best") == best.number and attrs.get("report_rows_version") == REPORT_ROWS_VERSION
             and keys and all(k in attrs for k in keys) and SPLITS_ATTR in attrs)
    if not fresh:
        from tqdm.auto import tqdm

        ctx = ensure_context(cfg, ctx, evaluator_factory)
        keys, names = [], []
        rows = _rows_to_score(cfg, best, ctx)
        bar = tqdm(rows, desc="report rows (dev + test)", unit="row", disable=not cfg.progress, leave=False)
        for name, kind, recipe in bar:
            bar.set_postfix_str(name)
            # the evolved row shares its cache entry with export
            if kind == "evolved":
                key = score_cache.trial_key(best.number)
                score_cache.in_study(study, key, lambda recipe=recipe: ctx.dev_test_scores(recipe))
            else:
                key = score_cache.recipe_key(recipe, cfg)
                score_cache.in_study(study, key, lambda recipe=recipe, name=name: _fixed_scores(cfg, ctx, recipe, name))
            keys.append(key)
            names.append([name, kind])
        study.set_user_attr(SPLITS_ATTR, task_splits(cfg, ctx))
        study.set_user_attr("report_keys", keys)
        study.set_user_attr("report_names", names)
        study.set_user_attr("report_best", best.number)
        study.set_user_attr("report_rows_version", REPORT_ROWS_VERSION)
        attrs = study.user_attrs
    return [{"name": n, "kind": k, "scores": attrs[key]} for (n, k), key in zip(attrs["report_names"], keys)]


def _fixed_scores(cfg: DictConfig, ctx: Context, recipe: Any, name: str) -> dict[str, float]:
    """Scores of a row that does not depend on the search, from the cross-study cache when it has them."""
    from evolve.evaluate import pick_device

    if not cfg.score_cache:
        return ctx.dev_test_scores(recipe)
    hashes = {m: ctx.sources.models[m].sha256() for m in recipe.model_ids()}
    key = score_cache.score_key(recipe, hashes, cfg, pick_device(str(cfg.device)), ctx.sources.tokenizer_path,
                                ctx.evaluator_name)
    return score_cache.across_studies(Path(cfg.models.cache_dir) / "scores", key, lambda: ctx.dev_test_scores(recipe),
                                      name)


SAMPLES_FILE = "samples_test.json"


def task_splits(cfg: DictConfig, ctx: Context) -> dict[str, dict[str, Any]]:
    """splits.json: every task of the study -> its lm-eval task(s) and the dev and test doc ids."""
    dev = getattr(ctx.full_dev_evaluator(), "splits", None)
    test = getattr(ctx.test_evaluator(), "splits", None)
    out: dict[str, dict[str, Any]] = {}
    if not dev or not test:  # an evaluator without lm-eval tasks (tests' stand-ins): nothing to record
        return out
    rule = cfg.tasks.split
    for name in map(str, cfg.tasks.names):
        d, t = dev[name], test[name]
        if d["partitioned"]:
            out[name] = {"lm_eval_task": d["lm_eval_task"], "dev": d["dev"], "test": d["test"], "split_by": "evolve",
                         "builtin": d["builtin"], "rule": {"dev_size": int(rule.dev_size),
                                                           "dev_fraction": float(rule.dev_fraction), "seed": int(rule.seed)}}
        else:
            out[name] = {"lm_eval_task": {"dev": d["lm_eval_task"], "test": t["lm_eval_task"]}, "dev": d["ids"],
                         "test": t["ids"], "split_by": "eval_tasks", "builtin": False}
    return out


def heldout_text(cfg: DictConfig, splits: dict[str, dict[str, Any]], report_dir: Path) -> str:
    """What the held-out table holds, per task, and the stock lm-eval command that reproduces it."""
    from evolve.tasks import task_folder

    if not splits:
        return ""
    lines = ["Held-out test documents (the search never scored them; ids in report/splits.json):", ""]
    test_tasks, partitioned = [], set()
    for name, e in splits.items():
        if e["split_by"] == "evolve":
            test_tasks.append(e["lm_eval_task"])
            partitioned.add(e["lm_eval_task"])
            what = (f"- `{name}`: {len(e['test'])} test documents of `{e['lm_eval_task']}` (the search scored its "
                    f"{len(e['dev'])} dev documents; seeded partition, tasks.split)")
            if e["builtin"]:
                what += (f"; `{e['lm_eval_task']}` is an lm-eval built-in benchmark: its held-out figures are on a split "
                         "of that benchmark's own documents, not on a separate benchmark")
        else:
            test_tasks.append(e["lm_eval_task"]["test"])
            what = f"- `{name}`: {len(e['test'])} items of the eval_tasks split `{e['lm_eval_task']['test']}`"
        lines.append(what)
    if cfg.tasks.get("test_limit"):
        lines.append(f"- held-out scores use only the first {cfg.tasks.test_limit} test items per task (tasks.test_limit)")
    include = eval_options(cfg)["include_path"]
    by_folder: dict[Path | None, list[str]] = {}
    for task in test_tasks:  # the stock CLI takes one --include_path: one command per folder
        by_folder.setdefault(task_folder(task, include), []).append(task)
    model = (Path(cfg.out_dir) / "best" / "model").resolve()
    samples_file = (report_dir / SAMPLES_FILE).resolve()
    lines += ["", "Reproduce the held-out scores with the stock lm-eval CLI"
              + (" (report/samples_test.json holds the test ids of the partitioned tasks):" if partitioned else ":"), ""]
    for folder, tasks in by_folder.items():
        cmd = f"lm_eval --model hf --model_args pretrained={model},dtype={cfg.out_dtype}"
        cmd += f" --include_path {folder}" if folder is not None else ""
        cmd += f" --tasks {','.join(tasks)}"
        if any(t in partitioned for t in tasks):
            cmd += f" --samples {samples_file}"
        lines.append(f"    {cmd}")
    lines.append("")
    return "\n".join(lines)


def selection_text(selection: dict[str, Any]) -> str:
    """The top-K re-scoring: each candidate's search dev score and its score on all dev documents."""
    names = " / ".join(selection["objectives"])
    lines = [f"Selection: the top {selection['top_k']} trials re-scored on all dev documents ({names}); "
             f"the exported best is trial {selection['pick']}.", "",
             "| trial | search dev | re-scored dev (all documents) | picked |", "|---|---|---|---|"]
    for c in sorted(selection["candidates"], key=lambda c: -sum(c["rescored"])):
        fmt = lambda vals: " / ".join(f"{v:.4f}" for v in vals)  # noqa: E731
        lines.append(f"| {c['trial']} | {fmt(c['search'])} | {fmt(c['rescored'])} | {'yes' if c['trial'] == selection['pick'] else ''} |")
    return "\n".join(lines) + "\n"


def markdown(rows: list[dict[str, Any]], cfg: DictConfig) -> str:
    """Two tables (dev, held-out test), one column per lm-eval task plus the combined score."""
    parts = []
    for split in ("dev", "test"):
        keys = sorted({k for r in rows for k in r["scores"] if k.endswith(f"_{split}")}) or \
            sorted({k for r in rows for k in r["scores"]})
        head = f"| {split} | kind | " + " | ".join(keys) + " | combined |"
        lines = [head, "|" + "---|" * (len(keys) + 3)]
        for r in rows:
            try:
                comb = f"{combined(r['scores'], cfg, split):.4f}"
            except KeyError:
                comb = "-"
            cells = " | ".join(f"{r['scores'][k]:.4f}" if k in r["scores"] else "-" for k in keys)
            lines.append(f"| {r['name']} | {r['kind']} | {cells} | {comb} |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def plots(cfg: DictConfig, study: optuna.Study, genome: Any, out: Path) -> list[Path]:
    """Optimization history, the best recipe's per-layer values as a heat map, and the Pareto front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    written = []
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    multi = len(study.directions) > 1
    fig, ax = plt.subplots(figsize=(7, 4))
    if not multi:
        xs = [t.number for t in done]
        ys = [t.value for t in done]
        ax.scatter(xs, ys, s=14, label="complete")
        ax.plot(xs, np.maximum.accumulate(ys) if ys else [], color="C1", label="best so far")
        pruned = study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
        ax.scatter([t.number for t in pruned], [t.intermediate_values.get(max(t.intermediate_values), math.nan)
                                               if t.intermediate_values else math.nan for t in pruned],
                   s=10, marker="x", color="grey", label="pruned: score on the partial dev items it was stopped at")
        ax.set_ylabel("objective (weighted dev score)")
    else:
        for i, task in enumerate(cfg.tasks.names):
            ax.plot([t.number for t in done], [t.values[i] for t in done], ".", label=task)
        ax.set_ylabel("dev score")
    ax.set_xlabel("trial")
    ax.legend(fontsize=8)
    ax.set_title(f"{cfg.study_name}: optimization history")
    written.append(_save(fig, out / "history.png"))

    best = next(t for t in study.get_trials(deepcopy=False) if t.number == study.user_attrs["selection"]["pick"])
    if getattr(genome, "kind", "ps") != "ps":  # a layer path: which model and layer each position takes
        from evolve.path_plot import path_figure

        written.append(_save(path_figure(genome, best.params, f"best path (trial {best.number})"), out / "path.png"))
        return written + _pareto(cfg, study, done, out) if multi else written
    written.append(_save(heatmap(genome, best.params, f"best recipe (trial {best.number})"),
                         out / "recipe_heatmap.png"))
    return written + _pareto(cfg, study, done, out) if multi else written


def heatmap(genome: Any, params: dict[str, float], title: str) -> Any:
    """Per-layer values of one point: a row per (parameter, source, part), a column per layer, plus the gene that
    sets the embeddings, final norm and head (first column); labelled colour bar, values written in small maps."""
    import matplotlib.pyplot as plt
    import numpy as np

    labels, rows = [], []
    for param, by_src in genome.layer_values(params).items():
        for src, parts in by_src.items():
            who = "all sources" if src is None else Path(genome.sources[src]).name
            embed = parts.get("embed", [math.nan])[0]
            for part, values in parts.items():
                if part != "embed":
                    labels.append(f"{param}: {who}" + (f" ({part})" if part != "layer" else ""))
                    rows.append([embed, *values])
    matrix = np.array(rows, dtype=float)
    n_layers = matrix.shape[1] - 1
    fig, ax = plt.subplots(figsize=(min(16.0, 2.8 + 0.42 * (n_layers + 1)), 1.1 + 0.42 * len(labels)))
    im = ax.imshow(matrix, aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    step = max(1, round(n_layers / 16))  # at most ~16 layer numbers, always starting at layer 0
    ticks = [0] + [1 + i for i in range(0, n_layers, step)]
    ax.set_xticks(ticks, ["emb/norm/\nhead"] + [str(i) for i in range(0, n_layers, step)], fontsize=8)
    ax.axvline(0.5, color="white", linewidth=2)  # the embeddings/norm/head gene is not a layer
    ax.set_xlabel("layer")
    ax.set_title(title, fontsize=10)
    if matrix.size <= 200:
        lo, hi = np.nanmin(matrix), np.nanmax(matrix)
        for (r, c), v in np.ndenumerate(matrix):
            if not math.isnan(v):
                dark = hi > lo and (v - lo) / (hi - lo) < 0.6
                ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=6, color="white" if dark else "black")
    names = sorted({label.split(":")[0] for label in labels})
    fig.colorbar(im, ax=ax, pad=0.02).set_label(f"value of {', '.join(names)}", fontsize=8)
    return fig


def _pareto(cfg: DictConfig, study: optuna.Study, done: list, out: Path) -> list[Path]:
    """The Pareto front of the first two tasks (multi-objective studies)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    front = {t.number for t in study.best_trials}
    for t in done:
        ax.scatter(t.values[0], t.values[1], c="C3" if t.number in front else "C0", s=14)
    ax.set_xlabel(cfg.tasks.names[0])
    ax.set_ylabel(cfg.tasks.names[1])
    ax.set_title("Pareto front (red)")
    return [_save(fig, out / "pareto.png")]


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}.{temp_tag()}.tmp")
    fig.tight_layout()
    fig.savefig(tmp, dpi=100, format=path.suffix.lstrip("."), bbox_inches="tight", pad_inches=0.05)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def make_report(cfg: DictConfig, study: optuna.Study, ctx: Context | None = None,
                evaluator_factory: EvaluatorFactory | None = None) -> str:
    """Write report/ (results.json, results.md, plots); returns the markdown tables."""
    out = Path(cfg.out_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    for name in ("results.json", "results.md", "splits.json", SAMPLES_FILE, "history.png", "recipe_heatmap.png",
                 "path.png", "pareto.png"):
        remove_stale_temps(out, name)  # left by a run killed mid-write
    rows = collect_rows(cfg, study, ctx, evaluator_factory)
    splits = study.user_attrs[SPLITS_ATTR]
    atomic_write_text(out / "results.json", json.dumps(rows, indent=2) + "\n")
    atomic_write_text(out / "splits.json", json.dumps(splits) + "\n")
    samples = {e["lm_eval_task"]: e["test"] for e in splits.values() if e["split_by"] == "evolve"}
    if samples:
        atomic_write_text(out / SAMPLES_FILE, json.dumps(samples) + "\n")
    table = markdown(rows, cfg)
    table += "\n" + heldout_text(cfg, splits, out)
    table += "\n" + selection_text(study.user_attrs["selection"])
    atomic_write_text(out / "results.md", f"# {cfg.study_name}: results\n\n{table}")
    plots(cfg, study, ctx.genome if ctx is not None else plan_genome(cfg), out)
    return table
