"""Report: results.json rows (evolved, sources, baselines; dev and test lm-eval names), markdown, plots, cache."""

import json

import pytest

from evolve.report import make_report
from tests.helpers.fake_eval import finished_run


def test_results_rows_tables_and_plots(tmp_path_factory, monkeypatch):
    cfg, study = finished_run(tmp_path_factory.getbasetemp(), monkeypatch)
    report = tmp_path_factory.getbasetemp() / "finished" / "run" / "report"
    rows = json.loads((report / "results.json").read_text())
    kinds = [r["kind"] for r in rows]
    assert kinds == ["evolved", "source", "source", "source", "baseline", "baseline", "baseline"]
    assert rows[1]["name"].startswith("base (")  # the base model alone, before the sources
    assert all(set(r["scores"]) == {"a_dev", "b_dev", "a_test", "b_test"} for r in rows)
    # each source is scored as itself: the fake task named after a source scores 1 on it
    assert rows[2]["scores"]["a_dev"] == pytest.approx(1.0) and rows[3]["scores"]["b_test"] == pytest.approx(1.0)
    md = (report / "results.md").read_text()
    assert "| test |" in md and "combined" in md and "ties (untuned)" in md
    for png in ("history.png", "recipe_heatmap.png"):
        assert (report / png).stat().st_size > 1000


def test_report_redraw_uses_cached_scores(tmp_path_factory, monkeypatch):
    cfg, study = finished_run(tmp_path_factory.getbasetemp(), monkeypatch)
    report = tmp_path_factory.getbasetemp() / "finished" / "run" / "report"
    before = (report / "results.json").read_text()
    (report / "history.png").unlink()

    def no_world(*a, **k):
        raise AssertionError("report rebuilt the models instead of reading cached scores")

    monkeypatch.setattr("evolve.report.ensure_context", no_world)
    table = make_report(cfg, study)
    assert (report / "results.json").read_text() == before and (report / "history.png").exists()
    assert "evolved" in table


def test_fixed_rows_are_reused_by_a_fresh_study_and_keyed_by_content(tmp_path, monkeypatch):
    """A new study on the same models scores only its evolved merge; other weights or settings miss the cache."""
    from evolve.config import load_config
    from evolve.context import Context
    from evolve.pipeline import run_search
    from tests.helpers.fake_eval import FakeEvaluator, env_for, make_models, write_config

    models = make_models(tmp_path / "models")
    for k, v in env_for(models).items():
        monkeypatch.setenv(k, v)
    calls = []
    real = Context.dev_test_scores

    def counting(ctx, recipe):  # rows that are not a trial of the search: sources and baselines
        if recipe.provenance.get("trial") is None:
            calls.append(1)
        return real(ctx, recipe)

    monkeypatch.setattr(Context, "dev_test_scores", counting)
    path = write_config(tmp_path, models)
    rows = []
    for run in ("one", "two"):
        cfg, _ = load_config([f"conf={path}", "n_trials=3", f"out_dir={tmp_path / run}", f"study_name={run}"])
        run_search(cfg, FakeEvaluator)
        rows.append(json.loads((tmp_path / run / "report" / "results.json").read_text()))
    assert len(calls) == 6  # base, two sources, three baselines in the first study; none in the second
    assert [r["scores"] for r in rows[0][1:]] == [r["scores"] for r in rows[1][1:]]
    assert len(list((tmp_path / "cache" / "scores").glob("*.json"))) == 6
    cfg, _ = load_config([f"conf={path}", "score_cache=false", f"out_dir={tmp_path / 'three'}", "study_name=three"])
    run_search(cfg, FakeEvaluator)
    assert len(calls) == 12  # switched off: every fixed row is scored again

    # the content key itself (weights, device, test_limit, code): tests/evolve/test_score_cache.py


def test_heatmap_has_layer_numbers_the_embed_gene_and_a_labelled_colour_bar():
    import optuna

    from evolve.genome import declare
    from evolve.report import heatmap

    method = {"name": "ties", "search": {"weight": {"low": 0.0, "high": 1.0}, "density": {"low": 0.1, "high": 1.0}},
              "baseline": {"weight": None, "density": 0.5}, "options": {"normalize": True}}
    g = declare(method, {"layer_group_size": 2, "split_attn_mlp": False}, n_layers=5, base="/m/b", sources=["/m/x", "/m/y"])
    params = g.suggest(optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask())
    fig = heatmap(g, params, "t")
    ax, bar = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["emb/norm/\nhead", "0", "1", "2", "3", "4"]
    assert bar.get_ylabel() == "value of density, weight"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["weight: x", "weight: y", "density: x", "density: y"]
    embed = params[next(n for n in params if n == "weight.x.embed_norm_head")]
    assert ax.images[0].get_array()[0, 0] == embed  # the first column is the embeddings/norm/head gene
