"""evolve.models: preparers and model resolution (names -> model ids on this machine, nothing downloaded)."""

import pytest

from evolve.config import load_config
from evolve.errors import UserError
from tests.helpers.fake_eval import make_models, write_config


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return make_models(tmp_path_factory.getbasetemp() / "models")


def test_preparer_gets_the_models_seed_not_the_search_seed(tmp_path, models, monkeypatch):
    import evolve.models
    from evolve.models import resolve_models

    seen = []

    def fake_preparer(cache_dir, *, seed, progress, **options):
        seen.append(seed)
        return {"base": models["base"], "a": models["a"], "b": models["b"]}

    monkeypatch.setattr(evolve.models, "get_preparer", lambda name: fake_preparer)
    path = write_config(tmp_path, models)
    for overrides in (["seed=5"], ["seed=5", "models.seed=3"]):
        cfg, _ = load_config([f"conf={path}", "models.prepare=toy", "models.base=base", "models.sources=[a,b]",
                              *overrides])
        base, sources = resolve_models(cfg, progress=False)
        assert base == str(models["base"].resolve()) and len(sources) == 2
    assert seen == [0, 3]  # a sweep over the search seed reuses the prepared models


def test_unknown_preparer_and_missing_model_are_one_line_errors(tmp_path, models):
    from evolve.models import get_preparer, resolve_models

    with pytest.raises(UserError, match="models.prepare: 'nope' is not a preparer; choose one of toy, smollm2_demo"):
        get_preparer("nope")
    path = write_config(tmp_path, models)
    cfg, _ = load_config([f"conf={path}", f"models.sources=[{models['a']},{tmp_path / 'missing'}]"])
    with pytest.raises(UserError, match=r"models.sources\[1\]: model .* is not on this machine.*"
                                        r"e.g. models.sources=/path/to/folder"):
        resolve_models(cfg, progress=False)
    cfg, _ = load_config([f"conf={path}"])
    assert resolve_models(cfg, progress=False) == (str(models["base"]), [str(models["a"]), str(models["b"])])
