"""One schema per optimizer/pruner option: a key the chosen option (or method) does not use is one line, exit 2."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

import conf as conf_pkg
from evolve import schema
from evolve.cli import main
from evolve.config import compose_method, load_config

ROOT = Path(__file__).resolve().parents[2]


def _fields(kind: type) -> set[str]:
    return {f.name for f in dataclasses.fields(kind)}


# (group, option, key): every key some option of the group has and this option lacks
UNUSED = [(group, name, key)
          for group, options in schema.OPTIONS.items()
          for name, kind in options.items()
          for key in sorted(set().union(*map(_fields, options.values())) - _fields(kind))]


def test_unused_keys_cover_the_issue_cases():
    assert ("optimizer", "cmaes", "multi_objective") in UNUSED
    assert ("pruner", "none", "n_startup_trials") in UNUSED and ("pruner", "none", "options") in UNUSED
    assert ("pruner", "halving", "n_startup_trials") in UNUSED


@pytest.mark.parametrize("group", sorted(schema.OPTIONS))
def test_every_option_file_extends_its_own_schema(group):
    files = {p.stem: p for p in (conf_pkg.PATH / group).glob("*.yaml")}
    assert set(files) == set(schema.OPTIONS[group])
    for name, path in files.items():
        data = yaml.safe_load(path.read_text())
        assert data["defaults"] == [f"/schema/{group}/{name}@_here_", "_self_"], path
        assert data["name"] == name
        assert set(data) - {"defaults"} <= _fields(schema.OPTIONS[group][name]), path


@pytest.mark.parametrize(("group", "name"), [(g, n) for g, o in schema.OPTIONS.items() for n in o])
def test_each_option_composes_as_its_schema(group, name, tmp_path):
    cfg, _ = load_config(["conf=tiny", f"out_dir={tmp_path}", f"{group}={name}"])
    assert OmegaConf.get_type(cfg[group]) is schema.OPTIONS[group][name]
    assert set(cfg[group]) == _fields(schema.OPTIONS[group][name])


@pytest.mark.parametrize(("group", "name", "key"), UNUSED)
@pytest.mark.parametrize("plus", ["", "+"])
def test_a_key_the_option_does_not_use_is_one_line_exit_2(group, name, key, plus, tmp_path, capsys):
    value = "{}" if key == "options" else ("true" if key == "multi_objective" else "3")
    out = tmp_path / "run"
    assert main(["search", "conf=tiny", f"out_dir={out}", f"{group}={name}", f"{plus}{group}.{key}={value}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"{group}.{key}: not a key of {group}={name}" in err and "remove it" in err
    assert not out.exists()


@pytest.mark.parametrize("args", [
    ["optimizer=cmaes", "optimizer.multi_objective=true"],
    ["pruner=none", "pruner.n_startup_trials=3"],
    ["method=linear", "+method.options.density=0.5"],
])
def test_the_real_cli_refuses_before_any_model_opens(args, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "evolve", "search", "conf=tiny", f"out_dir={tmp_path / 'o'}", *args],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert res.returncode == 2, res.stderr
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {conf_pkg.PATH / 'tiny.yaml'}: {args[1].split('=')[0].lstrip('+')}"), err
    # nothing prepared (the toy models' cache), nothing written
    assert not (tmp_path / "o").exists() and not (tmp_path / ".cache").exists() and res.stdout == ""


@pytest.mark.parametrize(("override", "needle"), [
    ("+method.options.density=0.5", "method.options.density is not a parameter of linear"),
    ("+method.baseline.density=0.5", "method.baseline.density is not used"),
    ("+method.search.weight.foo=1", "method.search.weight.foo: not a key of Bounds"),
])
def test_a_key_the_method_does_not_use_is_one_line_exit_2(override, needle, tmp_path, capsys):
    assert main(["search", "conf=tiny", f"out_dir={tmp_path / 'o'}", "method=linear", override]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err


def test_slerp_facts_come_from_the_registry(tmp_path, capsys):
    args = ["search", "conf=tiny", f"out_dir={tmp_path / 'o'}", "method=slerp"]
    assert main(args) == 2  # two sources: slerp's exact_inputs=2 counts the base
    assert "slerp merges the base with exactly one source" in capsys.readouterr().err
    assert main([*args, "models.sources=[succ]", "method.search.t.per_source=true"]) == 2
    assert "method.search.t.per_source is true, but t is one value for all models in slerp" in capsys.readouterr().err
    cfg, _ = load_config(["conf=tiny", f"out_dir={tmp_path}", "method=slerp", "models.sources=[succ]"])
    assert cfg.method.name == "slerp"


def test_the_name_is_the_options_own(tmp_path, capsys):
    assert main(["search", "conf=tiny", f"out_dir={tmp_path / 'o'}", "optimizer.name=tpe"]) == 2
    err = capsys.readouterr().err.strip()
    assert "optimizer.name = tpe under optimizer=cmaes" in err and "optimizer=tpe" in err
    assert main(["search", "conf=tiny", f"out_dir={tmp_path / 'o'}", "pruner.name=nope"]) == 2
    assert "pruner.name" in capsys.readouterr().err


def test_a_config_that_chooses_no_option_gets_the_default_options_schema(tmp_path):
    primary = tmp_path / "bare.yaml"
    primary.write_text("defaults: [search_schema, {models: toy}, {tasks: toy}, {method: ties}, _self_]\n"
                       f"study_name: bare\nout_dir: {tmp_path / 'run'}\npruner: {{name: halving}}\n")
    cfg, _ = load_config([f"conf={primary}"])
    assert OmegaConf.get_type(cfg.optimizer) is schema.CmaesConf and cfg.optimizer.options == {}
    assert OmegaConf.get_type(cfg.pruner) is schema.HalvingPrunerConf and not schema.multi_objective(cfg)


def test_multi_objective_is_the_options_fact(tmp_path):
    assert schema.multi_objective(load_config(["conf=tiny", f"out_dir={tmp_path}", "optimizer=nsga2"])[0])
    assert not schema.multi_objective(load_config(["conf=tiny", f"out_dir={tmp_path}"])[0])
    cfg, _ = load_config(["conf=tiny", f"out_dir={tmp_path}", "optimizer=tpe", "optimizer.multi_objective=true"])
    assert schema.multi_objective(cfg)


@pytest.mark.parametrize("name", sorted(p.stem for p in (conf_pkg.PATH / "method").glob("*.yaml")))
def test_compose_method_reads_the_option_through_the_schema(name):
    raw = yaml.safe_load((conf_pkg.PATH / "method" / f"{name}.yaml").read_text())
    method = compose_method(name)
    assert method.name == name and set(method.search) == set(raw["search"])
    assert {k: dict(v) for k, v in OmegaConf.to_container(method.search).items()} == \
           {k: {"per_source": True, **v} for k, v in raw["search"].items()}
    assert OmegaConf.to_container(method.baseline) == raw["baseline"]


def test_compose_method_inside_a_running_hydra_app_keeps_it():
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_dir(config_dir=str(conf_pkg.PATH), version_base="1.3"):
        outer = GlobalHydra.instance().hydra
        assert compose_method("ties").name == "ties"
        assert GlobalHydra.instance().hydra is outer


@pytest.mark.parametrize(("args", "needle"), [
    (["optimizer=random", "+optimizer.options.n_startup_trials=4"], "optimizer.options: RandomSampler"),
    (["optimizer=nsga2", "optimizer.options.population_size=1"], "optimizer.options: `population_size`"),
    (["pruner=halving", "pruner.options.reduction_factor=1"], "pruner.options: The value of `reduction_factor`"),
    (["pruner=median", "+pruner.options.nope=1"], "pruner.options"),
])
def test_options_the_optuna_class_refuses_are_one_line_before_any_model(args, needle, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["search", "conf=tiny", f"out_dir={out}", f"models.cache_dir={tmp_path / 'cache'}", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    assert not out.exists() and not (tmp_path / "cache").exists()  # refused before the toy models were prepared
