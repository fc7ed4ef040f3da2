"""evolve.score_cache: the study-attr keys (stored in existing studies: their format is fixed), get-or-compute in
the study and across studies, and the content key of the cross-study cache."""

import json

import optuna
import pytest

from evolve import score_cache
from evolve.config import load_config
from merge_core.recipe import parse_recipe
from tests.helpers.fake_eval import make_models, write_config


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return make_models(tmp_path_factory.getbasetemp() / "models")


@pytest.fixture
def cfg(tmp_path, models):
    return load_config([f"conf={write_config(tmp_path, models)}"])[0]


def _linear(model, seed=None, provenance=None):
    data = {"merge_method": "linear", "models": [{"model": str(model), "parameters": {"weight": 1.0}}]}
    if seed is not None or provenance:
        data["evolve_merge"] = {"seed": seed or 0, **(provenance or {})}
    return parse_recipe(data)


def test_study_keys_keep_their_stored_format():
    assert score_cache.trial_key(7) == "scores:trial7"
    assert score_cache.rescore_key(7) == "devall:trial7"


def test_recipe_key_ignores_provenance_and_follows_the_recipe_and_tasks(cfg, models, tmp_path):
    key = score_cache.recipe_key(_linear(models["a"]), cfg)
    assert key.startswith("scores:") and len(key) == len("scores:") + 16
    assert key == score_cache.recipe_key(_linear(models["a"], provenance={"trial": 3, "study": "x"}), cfg)
    assert key != score_cache.recipe_key(_linear(models["b"]), cfg)
    assert key != score_cache.recipe_key(_linear(models["a"], seed=5), cfg)
    other = load_config([f"conf={write_config(tmp_path, models)}", "tasks.names=[a]", "tasks.weights=null"])[0]
    assert key != score_cache.recipe_key(_linear(models["a"]), other)


def test_in_study_computes_once_and_stores_in_the_user_attrs():
    study = optuna.create_study()
    calls = []

    def compute():
        calls.append(1)
        return {"a_dev": 0.5}

    assert score_cache.in_study(study, "scores:trial0", compute) == {"a_dev": 0.5}
    assert score_cache.in_study(study, "scores:trial0", compute) == {"a_dev": 0.5}
    assert len(calls) == 1 and study.user_attrs["scores:trial0"] == {"a_dev": 0.5}


def test_across_studies_stores_a_file_and_treats_a_broken_one_as_a_miss(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"a_dev": 0.25, "a_test": 0.75}

    folder = tmp_path / "scores"
    assert score_cache.across_studies(folder, "k1", compute, "base (x)") == {"a_dev": 0.25, "a_test": 0.75}
    assert json.loads((folder / "k1.json").read_text()) == {"name": "base (x)", "scores": {"a_dev": 0.25, "a_test": 0.75}}
    assert score_cache.across_studies(folder, "k1", compute, "base (x)") == {"a_dev": 0.25, "a_test": 0.75}
    assert len(calls) == 1
    (folder / "k1.json").write_text('{"scores": {"a_dev": "high"}}')
    assert score_cache.load(folder, "k1") is None
    score_cache.across_studies(folder, "k1", compute, "base (x)")
    assert len(calls) == 2 and score_cache.load(folder, "k1") == {"a_dev": 0.25, "a_test": 0.75}


def test_score_key_covers_weights_settings_code_and_the_evaluator(cfg, models, tmp_path, monkeypatch):
    rec = _linear(models["a"])
    hashes = {str(models["a"]): "h1"}
    key = score_cache.score_key(rec, hashes, cfg, "cpu", models["base"])
    assert key == score_cache.score_key(rec, dict(hashes), cfg, "cpu", models["base"])
    assert key == score_cache.score_key(rec, hashes, cfg, "cpu", models["base"], "evolve.evaluate:Evaluator")
    assert key != score_cache.score_key(rec, {str(models["a"]): "h2"}, cfg, "cpu", models["base"])  # other weights
    assert key != score_cache.score_key(rec, hashes, cfg, "cuda", models["base"])
    assert key != score_cache.score_key(rec, hashes, cfg, "cpu", models["base"], "tests.helpers.fake_eval:FakeEvaluator")
    limited = load_config([f"conf={write_config(tmp_path, models)}", "tasks.limit=5"])[0]
    assert key != score_cache.score_key(rec, hashes, limited, "cpu", models["base"])
    cfg.tasks.test_limit = 5
    assert key != score_cache.score_key(rec, hashes, cfg, "cpu", models["base"])
    cfg.tasks.test_limit = None
    assert key == score_cache.score_key(rec, hashes, cfg, "cpu", models["base"])
    monkeypatch.setattr(score_cache, "_code_digest", lambda: "other merge code")
    assert key != score_cache.score_key(rec, hashes, cfg, "cpu", models["base"])
