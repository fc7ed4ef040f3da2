"""A study remembers what it is: a resume, export or report under other settings or source weights is refused
with one line, exit 2, and changes nothing; the settings listed as free may change."""

from __future__ import annotations

import shutil

import pytest

from evolve.identity import IDENTITY_ATTR
from merge_core.synthetic import make_checkpoint
from tests.helpers.fake_cli import main
from tests.reliability.helpers import counted, env_for, searched_world, study_of, tree_digest


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """A stored study of 3 trials with its export, on copies of the fake models (so a test may change one)."""
    return searched_world(tmp_path_factory.mktemp("identity"), "n_trials=3", "report=false")


# id -> (overrides, the key the line must name)
DIFFERENT = {
    "method": (["method=linear"], "method.name"),
    "method bounds": (["method.search.density.high=0.5"], "method.search.density.high"),
    "genome": (["genome.layer_group_size=2"], "genome.layer_group_size"),
    "task list": (["tasks.names=[a]"], "tasks.names"),
    "task weights": (["tasks.weights=[1,3]"], "tasks.weights"),
    "eval stages": (["tasks.stages=[1.0]"], "tasks.stages"),
    "eval limit": (["tasks.limit=5"], "tasks.limit"),
    "live dtype": (["dtype=bfloat16"], "dtype"),
    "multi-objective": (["optimizer=nsga2"], "optimizer.multi_objective"),
}


# every kind on a resume; export and report share the same check, so a few kinds each
PAIRS = [("search", c) for c in DIFFERENT] + [(cmd, c) for cmd in ("export", "report")
                                             for c in ("method", "task weights", "eval stages")]


@pytest.mark.parametrize(("command", "case"), PAIRS)
def test_other_settings_are_refused_and_change_nothing(case, command, done, monkeypatch, capsys):
    for k, v in env_for(done["models"]).items():
        monkeypatch.setenv(k, v)
    overrides, key = DIFFERENT[case]
    run = done["root"] / "run"
    before = tree_digest(run)
    capsys.readouterr()
    assert main([command, f"conf={done['conf']}", *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {command}: study 'fake': {key} "), err
    assert "study_name or out_dir" in err
    assert tree_digest(run) == before


@pytest.mark.parametrize("command", ["search", "export"])
def test_other_source_weights_are_refused(command, done, tmp_path, monkeypatch, capsys):
    """The same path, other bytes (e.g. a re-trained source written over the old folder)."""
    models = {k: tmp_path / k for k in done["models"]}
    for k, src in done["models"].items():
        shutil.copytree(src, models[k])
    conf = tmp_path / "fake.yaml"
    text = done["conf"].read_text()
    for k in models:
        text = text.replace(str(done["models"][k]), str(models[k]))
    conf.write_text(text.replace(f"out_dir: {done['root'] / 'run'}", f"out_dir: {tmp_path / 'run'}"))
    shutil.copytree(done["root"] / "run", tmp_path / "run")
    for k, v in env_for(models).items():
        monkeypatch.setenv(k, v)
    # the copies hash the same: the moved study resumes
    assert main(["search", f"conf={conf}", "n_trials=3", "export=false", "report=false"]) == 0
    make_checkpoint(models["b"], like=models["base"], noise=0.05, seed=9)  # other weights at the same path
    before = tree_digest(tmp_path / "run")
    capsys.readouterr()
    assert main([command, f"conf={conf}", "n_trials=4"] if command == "search" else [command, f"conf={conf}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "models.sources[1] has other weights" in err, err
    assert tree_digest(tmp_path / "run") == before


def test_free_settings_may_change_on_resume(done, tmp_path, monkeypatch):
    for k, v in env_for(done["models"]).items():
        monkeypatch.setenv(k, v)
    shutil.copytree(done["root"] / "run", tmp_path / "run")
    conf = tmp_path / "fake.yaml"
    conf.write_text(done["conf"].read_text().replace(f"out_dir: {done['root'] / 'run'}", f"out_dir: {tmp_path / 'run'}"))
    free = ["n_trials=4", "progress=true", "threads=1", "device=cpu", "seed=5", "tasks.batch_size=4",
            "optimizer=tpe", "pruner=none", "max_failures_in_row=3", "out_dtype=float32", "export=false",
            "report=false"]
    assert main(["search", f"conf={conf}", *free]) == 0
    study = study_of(conf)
    assert len(counted(study)) == 4
    assert study.user_attrs[IDENTITY_ATTR]["method.name"] == "ties"
    assert study.user_attrs[IDENTITY_ATTR]["models.sources[0]"]
