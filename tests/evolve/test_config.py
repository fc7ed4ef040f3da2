"""Config: Hydra composition, schema/range errors as one line + exit 2 before anything loads, sweeps, shipped configs."""

import subprocess
import sys

import pytest

import conf as conf_pkg
from evolve.cli import main
from evolve.config import load_config, sweep_combinations
from tests.helpers.fake_eval import env_for, make_models, write_config


@pytest.fixture(scope="module")
def cfg_path(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    (base / "cfgtest").mkdir(exist_ok=True)
    return write_config(base / "cfgtest", make_models(base / "models"))


def test_overrides_and_groups_compose(cfg_path):
    cfg, _ = load_config([f"conf={cfg_path}", "n_trials=9", "method=dare_ties", "optimizer=tpe", "genome.split_attn_mlp=true"])
    assert cfg.n_trials == 9 and cfg.method.name == "dare_ties" and cfg.optimizer.name == "tpe"
    assert set(cfg.method.search) == {"weight", "density"} and cfg.genome.split_attn_mlp is True
    for key in ("study_name", "out_dir", "storage", "n_trials", "seed", "device"):
        assert key in cfg


@pytest.mark.parametrize("override,needle", [
    ("n_trials=foo", "n_trials"),
    ("n_trials=0", "n_trials"),
    ("nope=1", "nope"),
    ("method=nope", "method/nope"),
    ("optimizer=adam", "optimizer/adam"),
    ("tasks.stages=[0.5]", "tasks.stages"),
    ("method.search.density.low=2", "density"),
    ("tasks.weights=[1]", "tasks.weights"),
    ("tasks.test_limit=0", "tasks.test_limit"),
    ("device=tpu", "device"),
    ("threads=-1", "threads"),
    ("dtype=int8", "dtype must be float32, bfloat16 or float16"),
    ("out_dtype=float64", "out_dtype must be float32, bfloat16 or float16"),
])
def test_bad_input_is_one_line_and_exit_2(cfg_path, tmp_path, capsys, override, needle):
    out = tmp_path / "run"
    assert main(["search", f"conf={cfg_path}", f"out_dir={out}", override]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and err.startswith("error: ")
    assert not out.exists()


def test_out_dir_that_is_a_file_and_unknown_conf(cfg_path, tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["search", f"conf={cfg_path}", f"out_dir={f}"]) == 2
    assert "out_dir" in capsys.readouterr().err
    assert main(["search", "conf=no_such_conf"]) == 2
    assert "tiny" in capsys.readouterr().err


def test_cli_exit_code_and_nothing_loaded(cfg_path, tmp_path):
    code = "import sys; sys.argv=['evolve']+sys.argv[1:]; from evolve.cli import main; r=main(); " \
           "print('torch' in sys.modules); sys.exit(r)"
    res = subprocess.run([sys.executable, "-c", code, "search", f"conf={cfg_path}", "seed=x", f"out_dir={tmp_path / 'o'}"],
                         capture_output=True, text=True, env=env_for({"a": tmp_path, "b": tmp_path}), timeout=120)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "seed" in res.stderr
    assert res.stdout.strip() == "False"  # no model code was even imported
    assert not (tmp_path / "o").exists()


def test_sweep_expansion():
    combos = sweep_combinations(["optimizer=cmaes,tpe", "seed=0,1", "n_trials=3"])
    assert len(combos) == 4 and ["optimizer=tpe", "seed=1", "n_trials=3"] in combos


def test_llama32_without_models_says_how_to_point_at_local_copies(tmp_path, capsys):
    assert main(["search", "conf=llama32", f"out_dir={tmp_path / 'o'}", "device=cpu", "progress=false"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "models.base" in err and "models.base=/path/to/folder" in err


@pytest.mark.parametrize("name", sorted(p.stem for p in conf_pkg.PATH.glob("*.yaml")))
def test_every_shipped_config_composes(name, tmp_path):
    cfg, _ = load_config([f"conf={name}", f"out_dir={tmp_path}"])
    assert cfg.study_name and cfg.n_trials >= 1 and cfg.models.sources


def test_llama32_lora_example_names_its_missing_sources(tmp_path, capsys):
    cfg, _ = load_config(["conf=llama32_lora", f"out_dir={tmp_path}"])
    assert cfg.models.tokenizer_source == "union" and "+" in cfg.models.sources[1]
    assert main(["search", "conf=llama32_lora", f"out_dir={tmp_path / 'o'}", "device=cpu", "progress=false"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "models." in err and "is not on this machine" in err


GROUP_OPTIONS = [(g, p.stem) for g in ("method", "optimizer", "pruner", "genome")
                 for p in sorted((conf_pkg.PATH / g).glob("*.yaml"))]


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS)
def test_every_shipped_group_option_composes(group, option, tmp_path):
    """Each option file with conf=tiny (slerp merges one source); its own keys keep working."""
    extra = ["models.sources=[succ]"] if option == "slerp" else []
    cfg, _ = load_config(["conf=tiny", f"out_dir={tmp_path}", f"{group}={option}", *extra])
    node = cfg[group]
    assert node.get("name", node.get("kind")) == option


@pytest.mark.parametrize("args, says", [
    (["out_dir="], "out_dir is empty"),
    (["out_dir=/tmp/x", "~n_trials"], "n_trials"),
    (["out_dir=/tmp/x", "~models"], "models.sources"),
])
def test_an_empty_out_dir_or_a_deleted_key_is_one_line(args, says):
    from evolve.config import load_config
    from evolve.errors import UserError

    with pytest.raises(UserError, match=says) as err:
        load_config(["conf=tiny", *args])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("args", [["merge", "recipe=r.yaml", "out="], ["export", "conf=tiny", "out="]])
def test_an_empty_out_is_refused(args, capsys):
    from evolve.cli import main

    assert main(args) == 2
    assert "out: is empty" in capsys.readouterr().err
