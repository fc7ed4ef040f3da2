"""genome=dfs: the slot layout, paths and recipes, config checks, and the tiny search end to end (mergekit, lm-eval)."""

from __future__ import annotations

import json
import os
import subprocess

import optuna
import pytest
import torch
import yaml
from safetensors.torch import load_file

from evolve.dfs import declare_dfs
from evolve.errors import UserError
from merge_core.recipe import parse_recipe

DFS = {"kind": "dfs", "repeats": 2, "layer_range": None, "fixed_first": 1, "fixed_last": 1, "max_depth": None,
       "scale_low": 0.5, "scale_high": 1.5}


def test_space_is_stacks_times_layers_times_repeats():
    g = declare_dfs(DFS, n_layers=6, base="B", sources=["x", "y"])
    assert g.stacks == ["B", "x", "y"] and len(g.slots) == 3 * 6 * 2 and len(g.distributions()) == 2 * len(g.slots)
    narrow = declare_dfs(DFS | {"layer_range": [2, 5], "repeats": 1, "scale_low": 1.0, "scale_high": 1.0},
                         n_layers=6, base="B", sources=["x", "y"])
    assert len(narrow.distributions()) == 3 * 3 and {s.layer for s in narrow.slots} == {2, 3, 4}
    assert list(g.distributions()) == list(declare_dfs(DFS, n_layers=6, base="B", sources=["x", "y"]).distributions())


def test_baselines_are_each_stack_between_the_base_ends():
    g = declare_dfs(DFS, n_layers=4, base="B", sources=["x"])
    base_path, x_path = (g.recipe_dict(p)["slices"] for p in g.baselines())
    assert base_path == [{"sources": [{"model": "B", "layer_range": [0, 4]}]}]  # the base itself, one slice
    assert [s["sources"][0]["model"] for s in x_path] == ["B", "x", "B"]
    assert [s["sources"][0]["layer_range"] for s in x_path] == [[0, 1], [1, 3], [3, 4]]


def test_path_keeps_positive_slots_in_order_scales_writers_and_stops_at_max_depth():
    g = declare_dfs(DFS | {"max_depth": 5}, n_layers=4, base="B", sources=["x"])
    params = g.baselines()[0] | {"r1.m1.l002.on": 0.3, "r1.m1.l002.scale": 0.7, "r1.m1.l003.on": 0.9}
    path = g.path(params)
    assert path == [(0, 0, 1.0), (0, 1, 1.0), (0, 2, 1.0), (1, 2, 0.7), (0, 3, 1.0)]  # r1.m1.l003 is past max_depth
    recipe = parse_recipe(g.recipe_dict(params, {"seed": 0}))
    assert recipe.merge_method == "passthrough" and sum(len(range(*s.sources[0].layer_range)) for s in recipe.slices) == 5
    scaled = recipe.slices[1]
    assert scaled.sources[0].model == "x" and scaled.sources[0].layer_range == (2, 3)
    assert {c.filter: c.value for c in scaled.parameters["scale"]} == {"o_proj": 0.7, "down_proj": 0.7}


def test_ps_dfs_anchors_on_the_ps_result():
    g = declare_dfs(DFS, n_layers=4, base="B", sources=["x"], extra_stacks=["P"])
    assert g.stacks == ["B", "x", "P"] and g.anchor == 2
    assert g.recipe_dict(g.baselines()[0])["slices"] == [{"sources": [{"model": "P", "layer_range": [0, 4]}]}]
    params = g.baselines()[0] | {"r0.m1.l001.on": 0.5, "r0.m1.l001.scale": 1.0}
    assert [s["sources"][0]["model"] for s in g.recipe_dict(params)["slices"]] == ["P", "x", "P"]


def test_an_empty_path_keeps_the_best_slot():
    g = declare_dfs(DFS | {"fixed_first": 0, "fixed_last": 0}, n_layers=2, base="B", sources=["x"])
    params = {k: -0.5 for k in g.distributions()} | {"r1.m1.l001.on": -0.1}
    assert [(m, layer) for m, layer, _ in g.path(params)] == [(1, 1)]


@pytest.mark.parametrize(("genome", "bad"), [({"layer_range": [0, 9]}, "genome.layer_range"),
                                             ({"fixed_first": 3, "fixed_last": 2}, r"fixed_first \+ fixed_last"),
                                             ({"max_depth": 1}, "genome.max_depth")])
def test_bad_layouts_are_user_errors(genome, bad):
    with pytest.raises(UserError, match=bad):
        declare_dfs(DFS | genome, n_layers=4, base="B", sources=["x"])


@pytest.mark.parametrize(("args", "needle"), [
    (["genome.repeats=3"], "genome.repeats is not used by genome=ps"),
    (["genome=dfs", "genome.scale_low=0"], "genome.scale_low/scale_high"),
    (["genome=dfs", "genome.ps_trials=4"], "genome.ps_trials is not used by genome=dfs"),
    (["genome=dfs", "genome.layer_range=[3,1]"], "genome.layer_range"),
    (["genome=ps_dfs", "genome.ps_trials=0"], "genome.ps_trials"),
])
def test_config_checks(args, needle):
    from evolve.config import load_config

    with pytest.raises(UserError, match=needle.replace("[", r"\[")):
        load_config(["conf=tiny", *args])


def test_config_groups_compose():
    from evolve.config import load_config

    assert load_config(["conf=tiny"])[0].genome.kind == "ps"
    cfg = load_config(["conf=tiny", "genome=dfs", "genome.repeats=3"])[0]
    assert cfg.genome.kind == "dfs" and cfg.genome.repeats == 3 and cfg.genome.ps_trials is None
    both = load_config(["conf=demo", "genome=ps_dfs"])[0]
    assert both.genome.kind == "ps_dfs" and both.genome.ps_trials >= 1 and both.genome.layer_group_size == 10


def _tensors(folder):
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def test_tiny_dfs_search_exports_a_passthrough_mergekit_rebuilds(toy_models, tmp_path, capsys):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM

    from evolve.cli import main
    from tests.external import require_mergekit

    out = tmp_path / "dfs"
    cache = toy_models["base"].parent
    common = ["conf=tiny", "genome=dfs", f"out_dir={out}", f"models.cache_dir={cache}", "progress=false"]
    assert main(["search", *common, "n_trials=3"]) == 0
    assert (out / "report" / "path.png").exists() and not (out / "report" / "recipe_heatmap.png").exists()
    best = out / "best"
    recipe = yaml.safe_load((best / "recipe.yaml").read_text())
    assert recipe["merge_method"] == "passthrough"
    # a sampled (not baseline) trial too: its path has scaled residual writers
    assert main(["export", *common, "trial=2", f"out={tmp_path / 't2'}"]) == 0
    t2 = yaml.safe_load((tmp_path / "t2" / "recipe.yaml").read_text())
    assert any("parameters" in s for s in t2["slices"]), t2["slices"]

    python = require_mergekit()
    for folder in (best, tmp_path / "t2"):
        rebuilt = tmp_path / f"mk_{folder.name}"
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        subprocess.run([str(python.with_name("mergekit-yaml")), str(folder / "recipe.yaml"), str(rebuilt), "--no-cuda"],
                       check=True, env=env, capture_output=True, timeout=600)
        ours, theirs = _tensors(folder / "model"), _tensors(rebuilt)
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), folder
        depth = json.loads((folder / "model" / "config.json").read_text())["num_hidden_layers"]
        assert json.loads((rebuilt / "config.json").read_text())["num_hidden_layers"] == depth
        model = AutoModelForCausalLM.from_pretrained(folder / "model", dtype=torch.float32)
        assert len(model.model.layers) == model.config.num_hidden_layers == depth

    # lm-eval on the exported folder reproduces the report's held-out row of the evolved merge
    rows = json.loads((out / "report" / "results.json").read_text())
    evolved = next(r for r in rows if r["kind"] == "evolved")
    tasks = ["toy_succ_test", "toy_upper_test"]
    res = simple_evaluate(model="hf", model_args=f"pretrained={best / 'model'},dtype=float32", tasks=tasks,
                          task_manager=TaskManager(include_path=_eval_tasks(), include_defaults=False),
                          batch_size=16, device="cpu")
    for task in tasks:
        assert res["results"][task]["acc,none"] == pytest.approx(evolved["scores"][task], abs=1e-9), task


def _eval_tasks() -> str:
    from pathlib import Path

    import evolve

    return str(Path(evolve.__file__).resolve().parent.parent / "eval_tasks")


def test_tiny_ps_dfs_is_a_pair_of_recipes_that_rebuild_bit_identically(toy_models, tmp_path):
    from evolve.cli import main
    from evolve.commands import merge as merge_cmd

    out = tmp_path / "psdfs"
    cache = toy_models["base"].parent
    args = ["search", "conf=tiny", "genome=ps_dfs", "genome.ps_trials=3", "n_trials=3", f"out_dir={out}",
            f"models.cache_dir={cache}", "progress=false"]
    assert main(args) == 0
    stage1, stage2 = out / "ps" / "best", out / "best"
    first = yaml.safe_load((stage1 / "recipe.yaml").read_text())
    second = yaml.safe_load((stage2 / "recipe.yaml").read_text())
    assert first["merge_method"] == "ties" and second["merge_method"] == "passthrough"
    assert str((stage1 / "model").resolve()) in second["evolve_merge"]["source_hashes"]  # stage 2 stacks the PS result
    rows = json.loads((out / "report" / "results.json").read_text())
    assert any(r["name"] == "PS stage best" for r in rows)
    # stage 2 starts from the PS result (its first baseline), so it ends at least as good on dev
    ps_study = optuna.load_study(study_name="tiny-ps", storage=f"sqlite:///{out / 'ps' / 'study.db'}")
    dfs_study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'study.db'}")
    assert dfs_study.best_value >= ps_study.best_value
    for stage in (stage1, stage2):
        again = tmp_path / f"again_{stage.parent.name}"
        assert merge_cmd.run([f"recipe={stage / 'recipe.yaml'}", f"out={again}", "device=cpu"]) == 0
        a, b = _tensors(stage / "model"), _tensors(again)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), stage
    # a resume runs neither stage again and leaves the PS result as it is
    before = (stage1 / "model" / "model.safetensors").stat().st_mtime_ns
    assert main(args) == 0
    assert (stage1 / "model" / "model.safetensors").stat().st_mtime_ns == before
