"""evolve.context: the study's context built once (models, genome, live model, evaluators), on the fake world."""

import pytest

from evolve.config import load_config
from evolve.context import Context, build_context, default_evaluator, ensure_context, eval_options, plan_genome
from evolve.errors import UserError
from tests.helpers.fake_eval import FakeEvaluator, env_for, make_models, write_config


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return make_models(tmp_path_factory.getbasetemp() / "models")


@pytest.fixture
def fake_env(models, monkeypatch):
    for k, v in env_for(models).items():
        monkeypatch.setenv(k, v)


def _cfg(tmp_path, models, *overrides):
    return load_config([f"conf={write_config(tmp_path, models)}", *overrides])[0]


def test_built_once_with_the_injected_evaluator(tmp_path, models, fake_env):
    cfg = _cfg(tmp_path, models)
    ctx = build_context(cfg, FakeEvaluator)
    assert isinstance(ctx, Context) and ctx.evaluator_factory is FakeEvaluator
    assert ctx.models == (str(models["base"]), [str(models["a"]), str(models["b"])])
    assert ctx.genome.n_layers == 3 and ctx.genome.sources == ctx.models[1]
    assert set(ctx.hashes) == {str(models[n]) for n in ("base", "a", "b")} and all(len(h) == 64 for h in ctx.hashes.values())
    ev = ctx.evaluator
    assert isinstance(ev, FakeEvaluator) and ev.split == "dev" and ev.stages == [0.5, 1.0] and ev.model is ctx.model
    assert ctx.evaluator_name == "tests.helpers.fake_eval:FakeEvaluator"
    assert ensure_context(cfg, ctx) is ctx


def test_recipe_carries_provenance(tmp_path, models, fake_env):
    ctx = build_context(_cfg(tmp_path, models, "seed=11"), FakeEvaluator)
    point = ctx.genome.baselines()[0]
    recipe = ctx.recipe(point, 4, scores={"a_dev": 0.5})
    assert recipe.seed == 11 and recipe.merge_method == "ties" and recipe.dtype == "float32"
    assert recipe.provenance["trial"] == 4 and recipe.provenance["study"] == "fake"
    assert recipe.provenance["scores"] == {"a_dev": 0.5} and recipe.provenance["source_hashes"] == ctx.hashes
    assert "scores" not in ctx.recipe(point, None).provenance


def test_held_out_and_all_dev_evaluators_are_built_on_first_use_once(tmp_path, models, fake_env):
    ctx = build_context(_cfg(tmp_path, models), FakeEvaluator)
    assert ctx.full_dev_evaluator() is ctx.evaluator  # no tasks.limit: the search's evaluator sees every dev doc
    test = ctx.test_evaluator()
    assert test.split == "test" and test.stages == [1.0] and ctx.test_evaluator() is test
    scores = ctx.dev_test_scores(ctx.recipe(ctx.genome.baselines()[0], 0))
    assert set(scores) == {"a_dev", "b_dev", "a_test", "b_test"} and all(0 < v <= 1 for v in scores.values())
    limited = build_context(_cfg(tmp_path, models, "tasks.limit=5"), FakeEvaluator)
    full = limited.full_dev_evaluator()
    assert full is not limited.evaluator and full.split == "dev" and full.stages == [1.0]
    assert limited.full_dev_evaluator() is full


def test_plan_genome_declares_the_same_space_without_weights(tmp_path, models, fake_env, monkeypatch):
    cfg = _cfg(tmp_path, models)
    built = build_context(cfg, FakeEvaluator).genome

    def no_weights(*a, **k):
        raise AssertionError("plan_genome opened the sources")

    monkeypatch.setattr("merge_core.sources.Sources.open", no_weights)
    planned = plan_genome(cfg)
    assert planned.genes == built.genes and planned.sources == built.sources and planned.n_layers == 3


def test_ps_dfs_without_its_first_stage_is_refused_before_weights(tmp_path, models, fake_env):
    cfg = _cfg(tmp_path, models, "+genome=ps_dfs")
    with pytest.raises(UserError, match="genome=ps_dfs: no PS result at .*; run `evolve search`"):
        build_context(cfg, FakeEvaluator)


def test_defaults_and_shared_evaluator_options(tmp_path, models):
    from evolve.evaluate import Evaluator

    assert default_evaluator() is Evaluator
    opts = eval_options(_cfg(tmp_path, models, f"tasks.include_path=[{tmp_path}]"))
    assert opts["include_path"] == [str(tmp_path)] and opts["split_rule"] is not None
    assert eval_options(_cfg(tmp_path, models))["include_path"] is None
