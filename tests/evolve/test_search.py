"""The search loop on a fake world: budget, baselines, attrs, pruning, failures, resume after SIGKILL, workers, sweeps."""

import re
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from evolve.config import load_config
from evolve.errors import UserError
from evolve.pipeline import run_search
from evolve.study import is_counted, make_pruner, make_sampler, open_study
from tests.helpers.fake_eval import FakeEvaluator, env_for, finished_run, make_models, write_config


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return make_models(tmp_path_factory.getbasetemp() / "models")


def _study(cfg):
    return open_study(cfg, make_sampler(cfg), make_pruner(cfg), create=False)


def _counted(trials):
    return [t for t in trials if is_counted(t)]


def test_search_runs_exactly_n_trials_with_attrs(tmp_path_factory, monkeypatch):
    cfg, study = finished_run(tmp_path_factory.getbasetemp(), monkeypatch)
    trials = study.get_trials()
    assert len(_counted(trials)) == cfg.n_trials == len(trials)
    assert trials[0].user_attrs.get("baseline") is True  # the enqueued equal-weight baseline runs first
    assert all(v == pytest.approx(0.5) for k, v in trials[0].params.items() if k.startswith(("weight", "density")))
    for t in trials:
        assert set(t.user_attrs["scores"]) == {"a", "b"}
        assert t.user_attrs["tokens"] > 0 and t.user_attrs["merge_seconds"] >= 0
        assert len(t.params) == 2 * 2 * (1 + 3)  # weight, density x 2 sources x (embed + 3 layers)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert study.best_value == max(t.value for t in complete)
    assert all(set(t.intermediate_values) <= {0, 1} for t in trials)
    # the default SQLite storage runs in WAL mode (no disk sync per write); the mode is stored in the file
    with sqlite3.connect(Path(cfg.out_dir) / "study.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_resume_adds_only_the_missing_trials(tmp_path, models, monkeypatch):
    for k, v in env_for(models).items():
        monkeypatch.setenv(k, v)
    path = write_config(tmp_path, models, export="false", report="false")
    run_search(load_config([f"conf={path}", "n_trials=3"])[0], FakeEvaluator)
    cfg, _ = load_config([f"conf={path}", "n_trials=5"])
    run_search(cfg, FakeEvaluator)
    run_search(cfg, FakeEvaluator)  # already complete: nothing to do
    assert len(_counted(_study(cfg).get_trials())) == 5 == len(_study(cfg).get_trials())


def test_nonfinite_scores_fail_the_trial_and_stop_after_a_streak(tmp_path, models, monkeypatch):
    for k, v in env_for(models).items():
        monkeypatch.setenv(k, v)
    path = write_config(tmp_path, models, export="false", report="false")
    # huge task-arithmetic weights overflow a float16 live model
    cfg, _ = load_config([f"conf={path}", "max_failures_in_row=2", "method=task_arithmetic",
                          "method.search.weight.low=1e7", "method.search.weight.high=1e8", "dtype=float16"])
    with pytest.raises(UserError, match="2 trials in a row failed"):
        run_search(cfg, FakeEvaluator)
    trials = _study(cfg).get_trials()
    assert [t.state for t in trials[:2]] == [TrialState.FAIL, TrialState.FAIL]
    assert all("non-finite" in t.user_attrs["fail_reason"] for t in trials[:2])


def _db_counts(db: Path) -> tuple[int, int]:
    """(counted COMPLETE/PRUNED trials, RUNNING trials that have a heartbeat) straight from the sqlite file."""
    if not db.exists():
        return 0, 0
    try:
        with sqlite3.connect(db, timeout=30) as con:
            rows = con.execute("select state from trials").fetchall()
            beating = con.execute("select count(*) from trials t join trial_heartbeats h on t.trial_id = h.trial_id "
                                  "where t.state = 'RUNNING'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0, 0
    return sum(r[0] in ("COMPLETE", "PRUNED") for r in rows), beating


def _search_cmd(path, *extra):
    return [sys.executable, "-m", "tests.helpers.fake_cli", "search", f"conf={path}", "export=false", "report=false", *extra]


def test_sigkill_then_same_command_finishes_exactly_n(tmp_path, models):
    path = write_config(tmp_path, models)
    cmd = _search_cmd(path, "n_trials=3")
    env = env_for(models, FAKE_EVAL_SLEEP="1.5")  # long trials: the kill lands mid-evaluation
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    db = tmp_path / "run" / "study.db"
    deadline = time.time() + 200
    while time.time() < deadline and not (_db_counts(db)[0] >= 1 and _db_counts(db)[1] == 1):
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _db_counts(db)[1] == 1, "the kill should leave one RUNNING trial behind"
    res = subprocess.run(cmd, env=env_for(models), capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    cfg, _ = load_config([f"conf={path}", "n_trials=3"])
    trials = _study(cfg).get_trials()
    assert len(_counted(trials)) == 3
    stale = [t for t in trials if t.state == TrialState.FAIL]
    assert len(stale) == 1 and "fail_reason" not in stale[0].user_attrs
    assert any(t.system_attrs.get("failed_trial") == stale[0].number and is_counted(t) for t in trials)


def test_two_workers_share_one_storage_without_overshoot(tmp_path, models):
    path = write_config(tmp_path, models)
    cmd = _search_cmd(path, "n_trials=5", "optimizer=random")
    env = env_for(models, FAKE_EVAL_SLEEP="0.2")
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err.decode()[-2000:]
    cfg, _ = load_config([f"conf={path}", "optimizer=random"])
    trials = _study(cfg).get_trials()
    counted = _counted(trials)
    assert len(counted) == 5
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    points = [tuple(sorted(t.params.items())) for t in counted]
    assert len(set(points)) == len(points)  # no point evaluated twice
    workers = {t.user_attrs.get("worker") for t in counted}
    assert len(workers) == 2  # both processes did work


def test_multirun_sweep_gives_each_job_its_own_study(tmp_path, models):
    path = write_config(tmp_path, models)
    res = subprocess.run(_search_cmd(path, "n_trials=2", "seed=0,1", "-m"), env=env_for(models),
                         capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    for job, seed in ((0, 0), (1, 1)):
        out = tmp_path / "run" / f"job{job}"
        assert _db_counts(out / "study.db")[0] == 2
        study = optuna.load_study(study_name=f"fake_job{job}", storage=f"sqlite:///{out / 'study.db'}")
        assert study.user_attrs["config"]["seed"] == seed
    assert not (Path.cwd() / "outputs").exists() and not (Path.cwd() / "multirun").exists()


def test_tiny_end_to_end_with_the_real_toy_world(toy_models, tmp_path, capsys):
    from evolve.cli import main

    out = tmp_path / "tiny"
    cache = toy_models["base"].parent
    args = ["search", "conf=tiny", f"out_dir={out}", f"models.cache_dir={cache}", "n_trials=3", "progress=false"]
    assert main(args) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "| test |" in printed and "toy_succ_test" in printed  # the held-out table is printed at the end
    for path in ("study.db", "best/recipe.yaml", "best/model/config.json", "best/model/model.safetensors",
                 "best/model/README.md", "report/results.json", "report/results.md", "report/history.png",
                 "report/recipe_heatmap.png"):
        assert (out / path).exists(), path
    # it ends by saying where things went and what to run next
    tail = printed[printed.index("outputs:"):]
    for needle in (f"{out}/study.db", f"{out}/best/recipe.yaml", f"{out}/best/model/", f"{out}/report/",
                   f"python -m evolve export conf=tiny out_dir={out}", "trial=N", "python -m evolve eval model=",
                   "'tasks=[toy_succ,toy_upper]' split=test", "--tasks toy_succ_test,toy_upper_test",
                   f"optuna-dashboard sqlite:///{out}/study.db"):
        assert needle in tail, needle
    # progress=false: no bar at all, not even lm-eval's or transformers'
    assert "Loading weights" not in captured.err and "Writing model shards" not in captured.err
    assert not re.search(r"\d+%\|", captured.err), captured.err[-500:]
    # files others can use: nothing 0600, no folder 0700
    for p in [out, *out.rglob("*"), *cache.rglob("*")]:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode & 0o044 == 0o044 if not p.is_dir() else mode & 0o055 == 0o055, (p, oct(mode))
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'study.db'}")
    assert len(_counted(study.get_trials())) == 3
    assert all(0.0 <= v <= 1.0 for t in study.get_trials() for v in t.user_attrs["scores"].values())
