"""Report: results.json rows (evolved, sources, baselines; dev and test lm-eval names), markdown, plots, cache."""

import json

import pytest

from evolve import export as export_mod
from evolve.report import make_report
from tests.evolve.fake_eval import finished_run


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

    monkeypatch.setattr("evolve.report.ensure_world", no_world)
    table = make_report(cfg, study)
    assert (report / "results.json").read_text() == before and (report / "history.png").exists()
    assert "evolved" in table
