"""Genome: one declared float space, per-layer values, and a recipe mergekit reads to the same per-layer values."""

import json
import math
import subprocess

import optuna
import pytest
import yaml

from evolve.genome import declare
from tests.external import require_mergekit

TIES = {"name": "ties", "search": {"weight": {"low": 0.0, "high": 1.0}, "density": {"low": 0.1, "high": 1.0}},
        "baseline": {"weight": None, "density": 0.5}, "options": {"normalize": True}}
SLERP = {"name": "slerp", "search": {"t": {"low": 0.0, "high": 1.0, "per_source": False}}, "baseline": {"t": 0.5}}


def _random_params(genome, seed=0):
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed)).ask()
    return genome.suggest(trial)


@pytest.mark.parametrize("group,split,expected", [(1, False, 2 * 2 * (1 + 5)), (2, True, 2 * 2 * (1 + 2 * 3))])
def test_space_size_and_names_are_stable(group, split, expected):
    g = declare(TIES, {"layer_group_size": group, "split_attn_mlp": split}, n_layers=5, base="B", sources=["x", "y"])
    space = g.distributions()
    assert len(space) == expected
    assert list(space) == list(declare(TIES, {"layer_group_size": group, "split_attn_mlp": split}, n_layers=5,
                                       base="B", sources=["x", "y"]).distributions())
    assert all(isinstance(d, optuna.distributions.FloatDistribution) for d in space.values())


def test_groups_map_to_consecutive_layers():
    g = declare(TIES, {"layer_group_size": 2, "split_attn_mlp": False}, n_layers=5, base="B", sources=["x", "y"])
    params = _random_params(g)
    lv = g.layer_values(params)
    w = lv["weight"][1]["layer"]
    assert w[0] == w[1] == params["weight.y.layer00"] and w[2] == w[3] == params["weight.y.layer01"]
    assert w[4] == params["weight.y.layer02"] and not any(math.isnan(v) for v in w)
    assert lv["density"][0]["embed"] == [params["density.x.embed_norm_head"]]


def test_baseline_is_equal_weights_and_default_density():
    g = declare(TIES, {}, n_layers=3, base="B", sources=["x", "y", "z"])
    (point,) = g.baselines()  # normalize: true makes 1/n and 1.0 the same merge
    assert set(point) == set(g.distributions())
    assert all(v == pytest.approx(1 / 3) for k, v in point.items() if k.startswith("weight"))
    assert all(v == 0.5 for k, v in point.items() if k.startswith("density"))
    ta = dict(TIES, name="task_arithmetic", options={"normalize": False})
    assert len(declare(ta, {}, n_layers=3, base="B", sources=["x", "y"]).baselines()) == 2


def test_slerp_t_is_a_global_gradient():
    g = declare(SLERP, {"layer_group_size": 1}, n_layers=4, base="B", sources=["x"])
    r = g.recipe_dict(_random_params(g), {"seed": 3})
    assert r["base_model"] == "B" and r["models"] == [{"model": "x"}]
    assert r["parameters"]["t"][-1]["value"] == g.layer_values(_random_params(g))["t"][None]["layer"]


def test_mergekit_reads_the_same_per_layer_values(tmp_path):
    mk_python = require_mergekit()
    n = 7
    names = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
    for i in range(n):
        names += [f"model.layers.{i}.{s}" for s in ("self_attn.q_proj.weight", "mlp.up_proj.weight",
                                                    "input_layernorm.weight", "post_attention_layernorm.weight")]
    cases = {}
    for split in (False, True):
        g = declare(TIES, {"layer_group_size": 2, "split_attn_mlp": split}, n_layers=n, base="B", sources=["x", "y"])
        params = _random_params(g, seed=int(split))
        path = tmp_path / f"r{int(split)}.yaml"
        path.write_text(yaml.safe_dump(g.recipe_dict(params, {"seed": 0, "study": "s"}), sort_keys=False))
        cases[str(path)] = (split, g.layer_values(params))
    # one interpreter for both recipes: importing mergekit is the slow part
    script = (
        "import sys, json, yaml\n"
        "from mergekit.config import MergeConfiguration, evaluate_setting\n"
        "names = json.loads(sys.argv[1]); n = int(sys.argv[2]); out = {}\n"
        "for path in sys.argv[3:]:\n"
        "    cfg = MergeConfiguration.model_validate(yaml.safe_load(open(path)))\n"
        "    for m in cfg.models:\n"
        "        for p, setting in m.parameters.items():\n"
        "            for name in names:\n"
        "                t = int(name.split('.')[2]) / (n - 1) if '.layers.' in name else 0\n"
        "                v = evaluate_setting(name, setting, t, validate=float)\n"
        "                out[f'{path}|{m.model.model.path}|{p}|{name}'] = v\n"
        "print(json.dumps(out))\n"
    )
    res = subprocess.run([str(mk_python), "-c", script, json.dumps(names), str(n), *cases],
                         capture_output=True, text=True, check=True)
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(got) == 2 * 2 * 2 * len(names)
    for key, value in got.items():
        path, src, param, name = key.split("|")
        split, lv = cases[path]
        parts = lv[param][["x", "y"].index(src)]
        if ".layers." not in name:
            want = parts["embed"][0]
        else:
            layer = int(name.split(".")[2])
            part = "layer" if not split else ("mlp" if ("mlp" in name or "post_attention" in name) else "attn")
            want = parts[part][layer]
        assert value == pytest.approx(want, abs=1e-12), key


def test_gene_names_use_the_sources_short_names():
    from evolve.genome import short_names

    assert short_names(["/m/arith", "org/units", "/x/units", "base+/ad/lora"]) == ["arith", "units_s1", "units_s2", "lora"]
    g = declare(TIES, {"layer_group_size": 5, "split_attn_mlp": False}, n_layers=5, base="B", sources=["/m/arith", "/m/units"])
    assert list(g.distributions())[:2] == ["weight.arith.embed_norm_head", "weight.arith.layer00"]


DELLA = {"name": "della", "search": {"weight": {"low": 0.0, "high": 1.0}, "density": {"low": 0.2, "high": 0.8},
                                     "epsilon": {"low": 0.0, "high": 0.1}}, "options": {"lambda": 1.1, "rescale": False}}
LINEAR = {"name": "linear", "search": {"weight": {"low": 0.0, "high": 1.0}}, "options": {"normalize": True}}
# an option that is also a searched global parameter keeps its place in `parameters` (recipe_dict's update order)
SLERP_T_OPTION = dict(SLERP, options={"t": 0.3})


@pytest.mark.parametrize("method", [TIES, SLERP, DELLA, LINEAR, SLERP_T_OPTION])
@pytest.mark.parametrize("group,split", [(1, False), (2, True), (3, False)])
def test_typed_recipe_equals_the_parsed_recipe_and_writes_the_same_yaml(method, group, split, tmp_path):
    from merge_core.recipe import parse_recipe, save_recipe

    sources = ["x"] if method["name"] == "slerp" else ["x", "y", "z"]
    g = declare(method, {"layer_group_size": group, "split_attn_mlp": split}, n_layers=7, base="B", sources=sources,
                tokenizer_source="union")
    calls = []
    for seed in range(4):  # the first call parses, the later ones are built directly
        params = _random_params(g, seed)
        prov = {"seed": 3, "study": "s", "trial": seed, "source_hashes": {"x": "ab"}}
        for dtypes in (("float32", None), ("float32", "bfloat16")):
            typed = g.recipe(params, prov, dtype=dtypes[0], out_dtype=dtypes[1], where=f"trial {seed}")
            parsed = parse_recipe(g.recipe_dict(params, prov, dtype=dtypes[0], out_dtype=dtypes[1]), where=f"trial {seed}")
            assert typed == parsed and typed.where == parsed.where
            assert repr(typed) == repr(parsed)  # same types too (tuples, floats), not just equal values
            a = save_recipe(typed, tmp_path / "a.yaml").read_bytes()
            assert a == save_recipe(parsed, tmp_path / "b.yaml").read_bytes()
            calls.append(typed)
    assert len(g._parsed_options) == 2


def test_typed_recipe_refuses_what_parse_refuses():
    from merge_core.errors import UserError

    g = declare(TIES, {}, n_layers=3, base="B", sources=["x", "y"])
    params = _random_params(g)
    g.recipe(params, {"seed": 0})
    bad = dict(params, **{"density.x.layer01": 1.5})
    with pytest.raises(UserError, match=r"trial 9: models\[0\]\.parameters\.density\[3\]\.value: 1.5 is outside \[0, 1\]; choose density"):
        g.recipe(bad, {"seed": 0}, where="trial 9")
    with pytest.raises(UserError, match="evolve_merge.seed: -1 is not a non-negative integer"):
        g.recipe(params, {"seed": -1})
    with pytest.raises(UserError, match=r"trial 2: models\[1\]\.parameters\.weight\[0\]\.value: nan is not a finite"):
        g.recipe(dict(params, **{"weight.y.embed_norm_head": math.nan}), {"seed": 0}, where="trial 2")


def test_to_recipe_for_any_genome():
    from evolve.dfs import declare_dfs
    from evolve.genome import to_recipe
    from merge_core.recipe import parse_recipe

    g = declare(TIES, {}, n_layers=3, base="B", sources=["x", "y"])
    params = _random_params(g)
    assert to_recipe(g, params, {"seed": 1}, where="t") == parse_recipe(g.recipe_dict(params, {"seed": 1}), "t")
    dfs = declare_dfs({"kind": "dfs", "repeats": 1}, n_layers=3, base="B", sources=["x"])
    point = _random_params(dfs)
    assert to_recipe(dfs, point, {"seed": 1}) == parse_recipe(dfs.recipe_dict(point, {"seed": 1}), "recipe")
