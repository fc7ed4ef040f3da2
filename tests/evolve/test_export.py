"""Export: best/recipe.yaml is mergekit-valid and `evolve merge` of it rebuilds best/model bit for bit."""

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from evolve.commands import merge as merge_cmd
from evolve.errors import UserError
from evolve.export import export_trial
from tests.helpers.fake_eval import FakeEvaluator, finished_run


def _tensors(folder):
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def test_best_recipe_rebuilds_the_exported_model_bit_identically(tmp_path_factory, tmp_path, monkeypatch):
    cfg, study = finished_run(tmp_path_factory.getbasetemp(), monkeypatch)
    best = tmp_path_factory.getbasetemp() / "finished" / "run" / "best"
    recipe = yaml.safe_load((best / "recipe.yaml").read_text())
    prov = recipe["evolve_merge"]
    assert prov["trial"] == study.best_trial.number and prov["study"] == "fake" and prov["seed"] == cfg.seed
    assert set(prov["scores"]) == {"a_dev", "b_dev", "a_test", "b_test"} and len(prov["source_hashes"]) == 3
    assert "scores" in (best / "model" / "README.md").read_text().lower() or "a_test" in (best / "model" / "README.md").read_text()
    assert merge_cmd.run([f"recipe={best / 'recipe.yaml'}", f"out={tmp_path / 'again'}", "device=cpu"]) == 0
    a, b = _tensors(best / "model"), _tensors(tmp_path / "again")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((best / "model" / "config.json").read_text())["tie_word_embeddings"] is True
    card = (best / "model" / "README.md").read_text()
    assert "Chosen by re-scoring the top" in card and "Exported by request" not in card


def test_export_of_a_named_trial_and_bad_numbers(tmp_path_factory, tmp_path, monkeypatch):
    cfg, study = finished_run(tmp_path_factory.getbasetemp(), monkeypatch)
    first = study.get_trials()[0]
    out = export_trial(cfg, study, str(first.number), tmp_path / "t0", evaluator_factory=FakeEvaluator)
    assert yaml.safe_load((out / "recipe.yaml").read_text())["evolve_merge"]["trial"] == first.number
    with pytest.raises(UserError, match="not a complete trial"):
        export_trial(cfg, study, "999", tmp_path / "nope")
    assert not (tmp_path / "nope").exists()


def test_a_named_trial_and_another_dtype_are_said_on_the_card(tmp_path_factory, tmp_path, monkeypatch):
    from omegaconf import OmegaConf, open_dict

    cfg, study = finished_run(tmp_path_factory.getbasetemp(), monkeypatch)
    pick = study.user_attrs["selection"]["pick"]
    other = next(t for t in study.get_trials() if t.number != pick and t.state.name == "COMPLETE")
    cfg = OmegaConf.create(OmegaConf.to_container(cfg))
    with open_dict(cfg):
        cfg.dtype, cfg.out_dtype = "float32", "bfloat16"
    card = (export_trial(cfg, study, str(other.number), tmp_path / "t", evaluator_factory=FakeEvaluator)
            / "model" / "README.md").read_text()
    assert f"Exported by request (`trial={other.number}`)" in card and "Chosen by re-scoring" not in card
    assert "in float32, as the search ran it; these weights were then written in bfloat16" in card
