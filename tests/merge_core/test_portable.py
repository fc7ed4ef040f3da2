"""Recipes moved with their folder still rebuild: model paths are written relative to the recipe where they can be."""

from __future__ import annotations

import os
import shutil
import subprocess

import torch
import yaml
from safetensors.torch import load_file

from merge_core.recipe import load_recipe, parse_recipe, portable_path, save_recipe
from merge_core.sources import Sources
from merge_core.synthetic import make_checkpoint
from merge_core.writer import write_model
from tests.external import require_mergekit


def _recipe(base, a, b):
    return parse_recipe({"merge_method": "ties", "base_model": str(base), "dtype": "float32",
                         "models": [{"model": str(a), "parameters": {"weight": 0.6, "density": 0.5}},
                                    {"model": str(b), "parameters": {"weight": 0.4, "density": 0.7}}],
                         "evolve_merge": {"seed": 0, "source_hashes": {str(a): "x"}}}, "t")


def _models(root):
    base = make_checkpoint(root / "base", layers=2, hidden=32, intermediate=64, vocab=64, seed=0)
    return base, make_checkpoint(root / "a", like=base, noise=0.05, seed=1), make_checkpoint(root / "b", like=base, noise=0.05, seed=2)


def test_models_below_the_recipe_are_relative_and_survive_a_move(tmp_path, monkeypatch):
    monkeypatch.chdir("/")  # the working-directory rule must not be what makes these relative
    project = tmp_path / "project"
    base, a, b = _models(project / "models")
    path = save_recipe(_recipe(base, a, b), project / "recipe.yaml")
    data = yaml.safe_load(path.read_text())
    assert data["base_model"] == "./models/base" and [m["model"] for m in data["models"]] == ["./models/a", "./models/b"]
    assert list(data["evolve_merge"]["source_hashes"]) == ["./models/a"]
    first = write_model(load_recipe(path), Sources.open(load_recipe(path)), tmp_path / "out1", progress=False)
    moved = shutil.move(str(project), str(tmp_path / "elsewhere"))
    recipe = load_recipe(os.path.join(moved, "recipe.yaml"))
    again = write_model(recipe, Sources.open(recipe), tmp_path / "out2", progress=False)
    x, y = load_file(first / "model.safetensors"), load_file(again / "model.safetensors")
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_outside_the_recipe_and_the_working_directory_stays_absolute(tmp_path, monkeypatch):
    base, a, b = _models(tmp_path / "models")
    monkeypatch.chdir(tmp_path / "models")
    path = save_recipe(_recipe(base, a, b), tmp_path / "runs" / "recipe.yaml")
    assert yaml.safe_load(path.read_text())["base_model"] == str(base)
    assert portable_path("owner/name", tmp_path) == "owner/name"  # a Hub id is never touched


def test_models_elsewhere_in_the_project_stay_absolute_and_mergekit_runs_from_anywhere(tmp_path, monkeypatch):
    """A run's `.cache` models are not below `best/`: absolute paths, so mergekit-yaml works from the project root
    and from the recipe's folder alike, and both agree with our build."""
    monkeypatch.chdir(tmp_path)
    base, a, b = _models(tmp_path / ".cache" / "demo")
    path = save_recipe(_recipe(base, a, b), tmp_path / "runs" / "demo" / "best" / "recipe.yaml")
    assert yaml.safe_load(path.read_text())["base_model"] == str(base)
    ours = write_model(load_recipe(path), Sources.open(load_recipe(path)), tmp_path / "ours", progress=False)
    x = load_file(ours / "model.safetensors")
    mk_yaml = require_mergekit().with_name("mergekit-yaml")
    for cwd, recipe in ((tmp_path, "runs/demo/best/recipe.yaml"), (path.parent, "recipe.yaml")):
        out = tmp_path / f"theirs_{len(recipe)}"
        run = subprocess.run([str(mk_yaml), recipe, str(out), "--no-cuda"], cwd=cwd, capture_output=True, text=True,
                             timeout=300, env=os.environ | {"OMP_NUM_THREADS": "1"})
        assert run.returncode == 0, run.stderr[-2000:]
        y = load_file(out / "model.safetensors")
        assert set(x) <= set(y) and all(torch.allclose(x[k], y[k], atol=1e-5) for k in x)
