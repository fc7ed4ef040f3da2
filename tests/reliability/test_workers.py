"""Several workers on one storage: a journal file with one worker killed mid-trial, and PostgreSQL when available.

(Two workers on one SQLite file: tests/evolve/test_search.py::test_two_workers_share_one_storage_without_overshoot.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import optuna
from optuna.trial import TrialState

from tests.external import require_postgres
from tests.reliability.helpers import counted, env_for, make_models, study_of, write_config


def _search(path, *extra):
    return [sys.executable, "-m", "tests.helpers.fake_cli", "search", f"conf={path}", "export=false", "report=false",
            "optimizer=random", *extra]


def _check_exact_budget(study: optuna.Study, n: int) -> list[optuna.trial.FrozenTrial]:
    trials = study.get_trials()
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    done = counted(study)
    assert len(done) == n
    points = [tuple(sorted(t.params.items())) for t in done]
    assert len(points) == len(set(points))  # no point evaluated twice
    return trials


def _running_of(study: optuna.Study, pid: int) -> bool:
    return any(t.state == TrialState.RUNNING and t.user_attrs.get("worker", "").endswith(f":{pid}")
               for t in study.get_trials(deepcopy=False))


def test_three_workers_on_a_journal_one_killed_mid_trial(tmp_path):
    models = make_models(tmp_path / "models")
    journal = tmp_path / "run" / "journal.log"
    path = write_config(tmp_path, models, storage=str(journal))
    env = env_for(models, FAKE_EVAL_SLEEP="0.6")
    cmd = _search(path, "n_trials=7")
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(3)]
    victim = procs[0]
    deadline = time.time() + 180
    while time.time() < deadline:
        if journal.exists() and _running_of(study_of(path), victim.pid):
            break
        time.sleep(0.2)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    for p in procs[1:]:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-2000:]
    trials = _check_exact_budget(study_of(path), 7)
    killed = [t for t in trials if t.state == TrialState.FAIL and t.user_attrs.get("worker", "").endswith(
        f":{victim.pid}") and "skipped" not in t.user_attrs]
    assert len(killed) == 1 and "fail_reason" not in killed[0].user_attrs  # stale, not counted
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == killed[0].number]
    assert len(retry) == 1 and retry[0] in counted(study_of(path)) and retry[0].params == killed[0].params
    # a rerun of the same command finds the job done
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(study_of(path).get_trials()) == len(trials)


def test_two_workers_on_postgresql(tmp_path):
    postgres_url = require_postgres()
    models = make_models(tmp_path / "models")
    name = f"pg_{uuid.uuid4().hex[:8]}"  # one database serves many runs
    path = write_config(tmp_path, models, storage=postgres_url)
    cmd = _search(path, "n_trials=5", f"study_name={name}")
    env = env_for(models, FAKE_EVAL_SLEEP="0.2")
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err.decode()[-2000:]
    study = study_of(path, f"study_name={name}")
    _check_exact_budget(study, 5)
    assert len({t.user_attrs["worker"] for t in counted(study)}) == 2
