"""Recipes: mergekit YAML in, validated dataclasses out, one clear error per problem, lossless round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from merge_core.errors import UserError
from merge_core.recipe import Condition, load_recipe, parse_recipe, recipe_to_dict, save_recipe

TIES = """
merge_method: ties
base_model: org/base
models:
  - model: org/base
  - model: ./ft_a
    parameters:
      weight: [0.2, 0.8, 0.5]
      density: [{filter: mlp, value: 0.3}, {value: 0.7}]
  - model: /abs/ft_b
    parameters: {weight: 0.5, density: 0.9}
parameters: {normalize: false, lambda: 1.2}
dtype: float32
out_dtype: bfloat16
tokenizer_source: base
chat_template: chatml
evolve_merge: {seed: 42, study: s1, trial: 7, scores: {arc_dev: 0.51}, sources: {org/base: abc123}}
"""

SLICES = """
merge_method: slerp
base_model: base
slices:
  - sources:
      - {model: base, layer_range: [0, 2]}
      - {model: other, layer_range: [2, 4]}
    parameters: {t: [0, 1]}
  - sources:
      - {model: base, layer_range: [2, 4]}
      - {model: other, layer_range: [0, 2]}
    parameters:
      t: [{filter: self_attn, value: 0.2}, {value: 0.6}]
"""


def _parse(text: str):
    return parse_recipe(yaml.safe_load(text), "recipe.yaml")


def test_parse_models_form() -> None:
    r = _parse(TIES)
    assert r.merge_method == "ties" and r.base_model == "org/base" and r.seed == 42
    assert [m.model for m in r.models] == ["org/base", "./ft_a", "/abs/ft_b"]
    assert r.models[1].parameters["weight"] == (0.2, 0.8, 0.5)
    assert r.models[1].parameters["density"] == (Condition(0.3, "mlp"), Condition(0.7, None))
    assert r.provenance == {"study": "s1", "trial": 7, "scores": {"arc_dev": 0.51}, "sources": {"org/base": "abc123"}}
    assert r.model_ids() == ["org/base", "./ft_a", "/abs/ft_b"]


@pytest.mark.parametrize("text", [TIES, SLICES])
def test_round_trip(tmp_path: Path, text: str) -> None:
    r = _parse(text)
    path = save_recipe(r, tmp_path / "out" / "recipe.yaml")
    assert load_recipe(path) == r
    assert load_recipe(path).root == path.parent.resolve()
    assert [p.name for p in path.parent.iterdir()] == ["recipe.yaml"], "no temp file left behind"
    assert recipe_to_dict(load_recipe(path)) == recipe_to_dict(r)
    assert "[0.2, 0.8, 0.5]" in path.read_text() or text is SLICES, "gradients are written inline like mergekit"


# mergekit itself reading saved recipes (evolve_merge included) is covered by test_plan's whole-model parity run.


BAD = [
    ("merge_method: frankenstein\nmodels: [{model: a}]", "merge_method: 'frankenstein' is not a known method; use one of linear, slerp"),
    ("merge_method: ties\nbase_model: b\nmodels: [{model: a, parameters: {weight: 1, density: 1.7}}]",
     "models[0].parameters.density: 1.7 is outside [0, 1]"),
    ("merge_method: ties\nbase_model: b\nmodels: [{model: a, parameters: {weight: 1, density: [0.5, -0.1]}}]",
     "models[0].parameters.density: -0.1 is outside [0, 1]"),
    ("merge_method: ties\nbase_model: b\nmodels: [{model: a, parameters: {weight: 1, density: [{filter: mlp, value: 2}]}}]",
     "models[0].parameters.density[0].value: 2 is outside [0, 1]"),
    ("merge_method: linear\nmodels: [{model: a, parameters: {weight: heavy}}]", "models[0].parameters.weight: 'heavy' is not a number"),
    ("merge_method: linear\nmodels: [{model: 3, parameters: {weight: 1}}]", "models[0].model: 3 is not a non-empty string"),
    ("merge_method: linear\nmodels: [{model: a, parameters: {weight: 1}}, {model: b}]", "models[1].parameters.weight: missing"),
    ("merge_method: ties\nbase_model: b\nmodels: [{model: a}, {model: b}]", "models[0].parameters.weight: missing"),
    ("merge_method: linear\nbase_model: b\nmodels: [{model: a, parameters: {weight: 1}}]", "parameters.weight: missing for base model b"),
    ("merge_method: ties\nmodels: [{model: a, parameters: {weight: 1}}]", "base_model: missing; ties needs a base model"),
    ("merge_method: linear\nmodels: [{model: a, parameters: {weight: 1}}]\nslices: []", "models: give exactly one of models or slices"),
    ("merge_method: linear", "models: give exactly one of models or slices"),
    ("merge_method: linear\nmodels: [{model: a, parameters: {weight: 1}}]\nmodules: {}", "modules: unknown key"),
    ("merge_method: linear\nmodels: [{model: a, parameters: {weight: 1}}]\ndtype: fp8", "dtype: 'fp8' is not supported"),
    ("merge_method: linear\nmodels: [{model: a, parameters: {weight: 1, density: 0.5}}]", "models[0].parameters.density: unknown parameter for linear"),
    ("merge_method: ties\nbase_model: b\nmodels: [{model: a, parameters: {weight: 1, normalize: true}}]",
     "models[0].parameters.normalize: normalize is a global option of ties"),
    ("merge_method: slerp\nbase_model: b\nmodels: [{model: a}, {model: c}]", "models: slerp merges exactly 2 models (base included), got 3"),
    ("merge_method: slerp\nbase_model: b\nmodels: [{model: a}, {model: b}]", "parameters: t is missing; slerp requires it"),
    ("merge_method: model_stock\nbase_model: b\nmodels: [{model: a}, {model: b}]", "models: model_stock needs at least 2 models besides the base"),
    ("merge_method: linear\nmodels: [{model: a, parameters: {weight: 1}}, {model: a, parameters: {weight: 1}}]", "models[0].model: a is listed twice"),
    ("merge_method: linear\nslices: [{sources: [{model: a, layer_range: [4, 2], parameters: {weight: 1}}]}]",
     "slices[0].sources[0].layer_range: [4, 2] is empty or negative"),
    ("merge_method: linear\nslices: [{sources: [{model: a, layer_range: [-1, 2], parameters: {weight: 1}}]}]",
     "slices[0].sources[0].layer_range: [-1, 2] is empty or negative"),
    ("merge_method: linear\nslices: [{sources: [{model: a, layer_range: [0, 2.5], parameters: {weight: 1}}]}]",
     "slices[0].sources[0].layer_range: [0, 2.5] is not [start, end]"),
    ("merge_method: linear\nparameters: {weight: 1}\nslices: [{sources: [{model: a, layer_range: [0, 3]}]}, {sources: [{model: a, layer_range: [2, 4]}]}]",
     "slices[1].sources[0].layer_range: [2, 4] overlaps slices[0].sources[0] [0, 3] of a"),
    ("merge_method: linear\nparameters: {weight: 1}\nslices: [{sources: [{model: a, layer_range: [0, 3]}, {model: b, layer_range: [0, 2]}]}]",
     "slices[0].sources: layer ranges of different lengths [2, 3]"),
    ("merge_method: ties\nbase_model: c\nparameters: {weight: 1}\nslices: [{sources: [{model: a, layer_range: [0, 2]}]}]",
     "slices[0].sources: base model c is not a source"),
    ("merge_method: ties\nbase_model: b\nmodels: [{model: a, parameters: {weight: 1}}]\nevolve_merge: {seed: -3}",
     "evolve_merge.seed: -3 is not a non-negative integer"),
    ("- just a list", "expected a mapping"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_validation_errors(text: str, message: str) -> None:
    with pytest.raises(UserError) as err:
        _parse(text)
    text_of = str(err.value)
    assert text_of.startswith("recipe.yaml: ") and "\n" not in text_of
    assert message in text_of
    assert "; " in text_of, "every message says how to fix it"


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="missing.yaml: cannot read"):
        load_recipe(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("merge_method: [unclosed\n")
    with pytest.raises(UserError, match=r"bad.yaml: invalid YAML at line \d"):
        load_recipe(bad)


def test_global_weight_default_satisfies_every_model() -> None:
    r = _parse("merge_method: linear\nbase_model: b\nparameters: {weight: 0.5}\nmodels: [{model: a}]")
    assert r.models[0].parameters == {} and r.parameters == {"weight": 0.5}
