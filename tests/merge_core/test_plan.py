"""Planning: gradients, filters, slices, tied/untied heads, architectures, and merge_tensor's seeding."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from merge_core.architecture import get_architecture
from merge_core.errors import UserError
from merge_core.plan import merge_tensor, plan_tensors, tensor_seed
from merge_core.recipe import load_recipe, parse_recipe, save_recipe
from tests.external import require_mergekit
from tests.merge_core.plans import CONFIG, LAYERS, PER_LAYER, plans_of


def _grad(values: list[float], t: float) -> float:
    return float(np.interp(t, np.linspace(0, 1, len(values)), values))


GRADIENT = """
merge_method: ties
base_model: base
models:
  - model: a
    parameters:
      weight: [0.0, 1.0, 0.5]
      density: [{filter: mlp, value: 0.3}, {filter: nomatch, value: 0.9}]
  - model: b
    parameters: {weight: 0.25}
parameters: {density: 0.6, lambda: [1.0, 2.0], normalize: [{filter: self_attn, value: false}, {value: true}]}
"""


def test_tied_and_untied_tensor_lists() -> None:
    tied = plans_of(GRADIENT, tied=True)
    untied = plans_of(GRADIENT, tied=False)
    assert len(tied) == 1 + LAYERS * PER_LAYER + 1 and "lm_head.weight" not in tied
    assert set(untied) - set(tied) == {"lm_head.weight"}
    assert untied["lm_head.weight"].inputs == {"a": "lm_head.weight", "b": "lm_head.weight", "base": "lm_head.weight"}
    assert untied["lm_head.weight"].kind == "head" and tied["model.embed_tokens.weight"].kind == "embed"


def test_gradients_filters_and_precedence() -> None:
    plans = plans_of(GRADIENT)
    for layer in range(LAYERS):
        t = layer / (LAYERS - 1)
        up = plans[f"model.layers.{layer}.mlp.up_proj.weight"]
        q = plans[f"model.layers.{layer}.self_attn.q_proj.weight"]
        assert up.params["a"]["weight"] == pytest.approx(_grad([0.0, 1.0, 0.5], t))
        assert up.params["a"]["density"] == 0.3, "model filter matches mlp"
        assert q.params["a"]["density"] == 0.6, "no model condition matches: falls through to the global value"
        assert up.params["b"] == {"weight": 0.25, "density": 0.6}
        assert up.options["lambda"] == pytest.approx(_grad([1.0, 2.0], t))
        assert q.options["normalize"] is False and up.options["normalize"] is True
        assert up.base == "base" and list(up.inputs) == ["a", "b", "base"], "base appended after the listed models"
    # outside the layers mergekit evaluates gradients at t = 0
    for name in ("model.embed_tokens.weight", "model.norm.weight"):
        assert plans[name].params["a"]["weight"] == 0.0 and plans[name].options["lambda"] == 1.0


SLICED = """
merge_method: linear
parameters: {weight: 1.0}
slices:
  - sources:
      - {model: x, layer_range: [1, 4], parameters: {weight: [0, 1]}}
      - {model: y, layer_range: [0, 3]}
    parameters: {weight: 0.7}
  - sources:
      - {model: x, layer_range: [0, 1], parameters: {weight: [0.2, 0.4]}}
      - {model: z, layer_range: [3, 4]}
    parameters: {normalize: false}
"""


def test_slices_map_layers_and_restart_t() -> None:
    plans = plans_of(SLICED)
    assert plans["model.layers.0.mlp.down_proj.weight"].inputs == {"x": "model.layers.1.mlp.down_proj.weight", "y": "model.layers.0.mlp.down_proj.weight"}
    assert plans["model.layers.2.input_layernorm.weight"].inputs == {"x": "model.layers.3.input_layernorm.weight", "y": "model.layers.2.input_layernorm.weight"}
    assert plans["model.layers.3.self_attn.o_proj.weight"].inputs == {"x": "model.layers.0.self_attn.o_proj.weight", "z": "model.layers.3.self_attn.o_proj.weight"}
    assert [plans[f"model.layers.{i}.mlp.up_proj.weight"].params["x"]["weight"] for i in range(3)] == pytest.approx([0, 0.5, 1])
    assert plans["model.layers.1.mlp.up_proj.weight"].params["y"]["weight"] == 0.7, "slice parameters beat global ones"
    last = plans["model.layers.3.mlp.up_proj.weight"]
    assert last.params["x"]["weight"] == pytest.approx(0.4), "a one-layer slice sits at t = 1"
    assert last.params["z"]["weight"] == 1.0 and last.options["normalize"] is False
    # embeddings follow the first slice, final norm the last, both at t = 0
    assert plans["model.embed_tokens.weight"].inputs == {"x": "model.embed_tokens.weight", "y": "model.embed_tokens.weight"}
    assert plans["model.embed_tokens.weight"].options["normalize"] is True
    assert plans["model.norm.weight"].inputs == {"x": "model.norm.weight", "z": "model.norm.weight"}
    assert plans["model.norm.weight"].params["x"]["weight"] == pytest.approx(0.2)
    assert plans["model.norm.weight"].options["normalize"] is False


@pytest.mark.parametrize(
    ("ranges", "message"),
    [("[[0, 2], [2, 3]]", "slices: cover 3 layers but the models have 4"), ("[[0, 2], [3, 5]]", "[3, 5] ends past the model's 4 layers")],
)
def test_slice_layer_errors(ranges: str, message: str) -> None:
    r = yaml.safe_load(ranges)
    text = "merge_method: linear\nparameters: {weight: 1}\nslices:\n" + "".join(f"  - sources: [{{model: a, layer_range: {x}}}]\n" for x in r)
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        plans_of(text)


def test_resolved_della_epsilon_checked() -> None:
    text = "merge_method: della\nbase_model: b\nmodels: [{model: a, parameters: {weight: 1, density: [0.5, 0.1], epsilon: 0.2}}]"
    with pytest.raises(UserError, match=r"r.yaml: a.parameters.epsilon: density 0.1 \+/- epsilon 0.2 leaves \(0, 1\) for model.layers.3"):
        plans_of(text)


def _fetcher(dtype=torch.bfloat16):
    cache: dict[tuple[str, str], torch.Tensor] = {}

    def fetch(model: str, name: str) -> torch.Tensor:
        if (model, name) not in cache:
            seed = tensor_seed(len(model), model + name)
            cache[(model, name)] = torch.randn(8, 6, generator=torch.Generator().manual_seed(seed)).to(dtype)
        return cache[(model, name)]

    return fetch


def test_merge_tensor_float32_and_seeded_masks() -> None:
    text = "merge_method: dare_ties\nbase_model: base\nmodels: [{model: a, parameters: {weight: 1, density: 0.5}}, {model: b, parameters: {weight: 0.5, density: 0.5}}]"
    plans = plans_of(text)
    fetch = _fetcher()
    q0, q1 = plans["model.layers.0.self_attn.q_proj.weight"], plans["model.layers.1.self_attn.q_proj.weight"]
    out = merge_tensor(q0, fetch, seed=3)
    assert out.dtype == torch.float32 and out.shape == (8, 6)
    assert torch.equal(out, merge_tensor(q0, fetch, seed=3)), "same recipe seed, same bits"
    assert not torch.equal(out, merge_tensor(q0, fetch, seed=4))
    # identical inputs under two tensor names still get different masks (name enters the seed)
    same_inputs = type(q1)(q1.out_name, q0.inputs, q1.method, q1.base, q1.params, q1.options)
    assert not torch.equal(out, merge_tensor(same_inputs, fetch, seed=3))


def test_merge_tensor_shape_and_value_errors() -> None:
    plans = plans_of("merge_method: linear\nmodels: [{model: a, parameters: {weight: 1}}, {model: bb, parameters: {weight: -1}}]")
    plan = plans["model.norm.weight"]
    with pytest.raises(UserError, match=r"r.yaml: model.norm.weight: linear weights sum to 0"):
        merge_tensor(plan, _fetcher(), seed=0)

    def uneven(model: str, name: str) -> torch.Tensor:
        return torch.zeros(4 if model == "a" else 5)

    with pytest.raises(UserError, match=r"model.norm.weight: shapes differ \(a \[4\], bb \[5\]\)"):
        merge_tensor(plan, uneven, seed=0)


# end-to-end parity: mergekit 0.1.5 builds whole tiny models from our saved recipes; every tensor must match
MK_RUN = """
import sys, yaml
from mergekit.config import MergeConfiguration
from mergekit.merge import run_merge
from mergekit.options import MergeOptions
for recipe, out in zip(sys.argv[1::2], sys.argv[2::2]):
    config = MergeConfiguration.model_validate(yaml.safe_load(open(recipe)))
    run_merge(config, out, MergeOptions(copy_tokenizer=False, lazy_unpickle=True, quiet=True))
"""
E2E = {
    # per-model filters see source names (a's layers 1..3), global ones output names
    "sliced_ties.yaml": """
merge_method: ties
base_model: @/base
slices:
  - sources:
      - {model: @/base, layer_range: [0, 3]}
      - {model: @/a, layer_range: [1, 4], parameters: {weight: [0.2, 1.0], density: [{filter: layers.1., value: 0.3}, {value: 0.7}]}}
      - {model: @/b, layer_range: [0, 3], parameters: {weight: 0.5}}
  - sources:
      - {model: @/base, layer_range: [3, 4]}
      - {model: @/a, layer_range: [0, 1], parameters: {weight: 0.4}}
      - {model: @/b, layer_range: [3, 4], parameters: {weight: [0.1, 0.9]}}
    parameters: {density: 0.5}
parameters: {density: 0.8, lambda: [{filter: layers.0., value: 0.5}, {value: [1.0, 1.5]}]}
dtype: float32
evolve_merge: {seed: 1, study: e2e}
""",
    "models_linear.yaml": """
merge_method: linear
base_model: @/base
models:
  - {model: @/a, parameters: {weight: [1.0, 0.0, 2.0]}}
  - {model: @/b, parameters: {weight: [{filter: mlp, value: 0.3}, {value: 1.0}]}}
parameters: {weight: 0.5, normalize: [{filter: norm, value: false}, {value: true}]}
dtype: float32
evolve_merge: {seed: 0}
""",
}


def test_whole_model_parity_with_mergekit(tmp_path: Path, monkeypatch) -> None:
    mk_python = require_mergekit()
    # saved recipes name the models beside them as ./a; mergekit reads paths from its working directory
    monkeypatch.chdir(tmp_path)
    from merge_core.synthetic import make_checkpoint

    base = make_checkpoint(tmp_path / "base", layers=LAYERS, hidden=32, intermediate=64, vocab=64, seed=0)
    for i, name in enumerate(("a", "b"), start=1):
        make_checkpoint(tmp_path / name, like=base, noise=0.05, seed=i)
    args = []
    for fname, text in E2E.items():
        recipe = parse_recipe(yaml.safe_load(text.replace("@/", f"{tmp_path}/")), fname)
        args += [str(save_recipe(recipe, tmp_path / fname)), str(tmp_path / f"out_{fname}")]
    run = subprocess.run([str(mk_python), "-c", MK_RUN, *args], capture_output=True, text=True, timeout=240, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    config = json.loads((base / "config.json").read_text())
    for fname in E2E:
        recipe = load_recipe(tmp_path / fname)
        weights = {m: load_file(Path(m) / "model.safetensors") for m in recipe.model_ids()}
        theirs = load_file(tmp_path / f"out_{fname}" / "model.safetensors")
        plans = plan_tensors(recipe, get_architecture(config), config, output_tied=True)
        assert {p.out_name for p in plans} == set(theirs)
        for p in plans:
            ours = merge_tensor(p, lambda m, n, weights=weights: weights[m][n], recipe.seed)
            torch.testing.assert_close(ours, theirs[p.out_name].float(), rtol=0, atol=1e-5, msg=lambda s, p=p, fname=fname: f"{fname} {p.out_name}: {s}")


def test_a_recipe_plan_binds_other_values_of_the_same_structure() -> None:
    from merge_core.plan import plan_recipe, structure

    def recipe(w: float, d: float, where: str):
        return parse_recipe({
            "merge_method": "della", "base_model": "b", "parameters": {"lambda": [1.0, w + 0.5], "epsilon": 0.05},
            "slices": [{"sources": [{"model": "a", "layer_range": [0, 2], "parameters": {"weight": [{"filter": "mlp", "value": [w, d]}, {"value": d}]}},
                                    {"model": "b", "layer_range": [0, 2]}], "parameters": {"density": [d, 0.5]}},
                       {"sources": [{"model": "a", "layer_range": [2, 4], "parameters": {"weight": w, "density": 0.3}},
                                    {"model": "b", "layer_range": [2, 4]}]}],
        }, where)

    arch = get_architecture(CONFIG)
    first = recipe(0.3, 0.6, "first")
    plan = plan_recipe(first, arch, CONFIG, True)
    for i, (w, d) in enumerate([(0.9, 0.2), (0.1, 0.7), (0.35, 0.45)]):
        r = recipe(w, d, f"trial {i}")
        assert structure(r) == structure(first)
        bound, fresh = plan.bind(r), plan_tensors(r, arch, CONFIG, True)
        assert repr(bound) == repr(fresh) and bound != plan.bind(first)
    moved = parse_recipe({**yaml.safe_load("merge_method: linear\nmodels: [{model: a, parameters: {weight: [{filter: attn, value: 1}, {value: 2}]}}]")}, "m")
    other = parse_recipe({**yaml.safe_load("merge_method: linear\nmodels: [{model: a, parameters: {weight: [{filter: mlp, value: 1}, {value: 2}]}}]")}, "m")
    assert structure(moved) != structure(other)  # a filter decides which value a tensor reads
    with pytest.raises(ValueError, match="m: its models, parameter names, filters or gradient lengths differ"):
        plan_recipe(moved, arch, CONFIG, True).bind(other)
    # a value the plan reads is checked when it is read, with the trial's name
    with pytest.raises(UserError, match=r"trial 9: a.parameters.epsilon: density 0.02 \+/- epsilon 0.05 leaves \(0, 1\)"):
        plan.bind(recipe(0.5, 0.02, "trial 9"))
