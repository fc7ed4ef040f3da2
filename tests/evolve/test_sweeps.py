"""Sweeps a person can read: interpolated out_dir, path characters refused in one line, job headers and overrides."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from evolve.cli import main
from evolve.config import load_config
from tests.helpers.fake_eval import env_for, make_models, write_config


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return make_models(tmp_path_factory.getbasetemp() / "models")


def test_out_dir_interpolates_other_keys(tmp_path, models):
    path = write_config(tmp_path, models)
    cfg, _ = load_config([f"conf={path}", "optimizer=tpe", f"out_dir={tmp_path}/runs/x/${{optimizer.name}}"])
    assert cfg.out_dir == f"{tmp_path}/runs/x/tpe"


@pytest.mark.parametrize("value", ["runs/{x}", "runs/a?b", "runs/100%", "runs/a}b"])
def test_path_characters_are_refused_in_one_line_before_anything(tmp_path, models, capsys, value):
    path = write_config(tmp_path, models)
    assert main(["search", f"conf={path}", f"out_dir={tmp_path / value}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "out_dir" in err and "{ } ? %" in err
    assert not any((tmp_path / "runs").glob("*")) if (tmp_path / "runs").exists() else True


def test_storage_paths_are_checked_but_urls_keep_their_syntax(tmp_path, models, capsys):
    path = write_config(tmp_path, models)
    assert main(["search", f"conf={path}", f"storage={tmp_path}/j?.log"]) == 2
    assert "storage" in capsys.readouterr().err
    cfg, _ = load_config([f"conf={path}", "storage='postgresql://u@h/db?sslmode=require'"])
    assert cfg.storage.endswith("?sslmode=require")


def test_a_yaml_out_dir_with_braces_is_refused_too(tmp_path, models, capsys):
    path = write_config(tmp_path, models)
    path.write_text(path.read_text().replace(f"out_dir: {tmp_path / 'run'}", f"out_dir: '{tmp_path}/run{{1}}'"))
    assert main(["search", f"conf={path}"]) == 2
    assert "out_dir" in capsys.readouterr().err


def test_sweep_jobs_print_a_header_and_keep_their_overrides(tmp_path, models):
    path = write_config(tmp_path, models)
    cmd = [sys.executable, "-m", "tests.helpers.fake_cli", "search", f"conf={path}", "export=false", "report=false", "n_trials=1",
           "seed=0,1", "-m"]
    res = subprocess.run(cmd, env=env_for(models), capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    for job in (0, 1):
        out = Path(tmp_path / "run" / f"job{job}")
        assert f"== sweep job {job}: export=False report=False n_trials=1 seed={job} -> {out}" in res.stdout
        kept = yaml.safe_load((out / "overrides.yaml").read_text())
        assert kept == {"job": job, "overrides": ["export=False", "report=False", "n_trials=1", f"seed={job}"]}


def test_each_job_runs_the_config_composed_and_validated_once(tmp_path, models, monkeypatch):
    import evolve.config
    import evolve.pipeline

    for k, v in env_for(models).items():
        monkeypatch.setenv(k, v)
    validated, ran = [], []
    real_validate = evolve.config.validate
    monkeypatch.setattr(evolve.config, "validate", lambda cfg, where: (validated.append(int(cfg.seed)),
                                                                       real_validate(cfg, where))[1])
    monkeypatch.setattr(evolve.pipeline, "run_search", lambda cfg, *rest: ran.append((int(cfg.seed), cfg.study_name)))
    path = write_config(tmp_path, models)
    assert main(["search", f"conf={path}", "export=false", "report=false", "n_trials=1", "seed=0,1", "-m"]) == 0
    assert validated == [0, 1]  # once per job, all before the first job runs
    assert ran == [(0, "fake_job0"), (1, "fake_job1")]
    validated.clear()
    ran.clear()
    assert main(["search", f"conf={path}", "export=false", "report=false", "seed=3"]) == 0
    assert validated == [3] and ran == [(3, "fake")]
