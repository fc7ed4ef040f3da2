"""evolve.study (+ evolve.optuna_compat): storage, samplers, pruners, the n_trials budget and heartbeats."""

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from evolve import optuna_compat
from evolve.config import load_config
from evolve.errors import UserError
from evolve.study import (
    Heartbeat,
    budget_state,
    is_counted,
    make_pruner,
    make_sampler,
    make_storage,
    open_study,
    storage_file,
    storage_url,
)
from tests.helpers.fake_eval import make_models, write_config


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return make_models(tmp_path_factory.getbasetemp() / "models")


def _cfg(tmp_path, models, *overrides):
    return load_config([f"conf={write_config(tmp_path, models)}", *overrides])[0]


def test_default_storage_is_sqlite_in_out_dir_and_a_missing_study_creates_nothing(tmp_path, models):
    cfg = _cfg(tmp_path, models)
    assert storage_url(cfg) == f"sqlite:///{(tmp_path / 'run').resolve() / 'study.db'}"
    assert storage_file(cfg) == (tmp_path / "run").resolve() / "study.db"
    with pytest.raises(UserError, match="study_name: no study 'fake'.*does not exist; run `evolve search` first"):
        open_study(cfg, make_sampler(cfg), make_pruner(cfg), create=False)
    assert not (tmp_path / "run").exists()
    journal = _cfg(tmp_path, models, f"storage={tmp_path / 'j.log'}")
    assert storage_file(journal) == tmp_path / "j.log"


def test_sampler_seed_follows_seed_and_trial_number(tmp_path, models):
    cfg = _cfg(tmp_path, models, "optimizer=random", "seed=3")
    dist = FloatDistribution(0.0, 1.0)

    def draw(c, offset):
        study = optuna.create_study(sampler=make_sampler(c, seed_offset=offset))
        return study.ask({"x": dist}).params["x"]

    assert draw(cfg, 5) == draw(cfg, 5)
    assert draw(cfg, 5) != draw(cfg, 6)
    assert draw(cfg, 5) != draw(_cfg(tmp_path, models, "optimizer=random", "seed=4"), 5)


def test_pruner_per_option_and_none_for_multi_objective(tmp_path, models):
    median = make_pruner(_cfg(tmp_path, models, "pruner.n_startup_trials=7"))
    assert isinstance(median, optuna.pruners.MedianPruner) and median._n_startup_trials == 7
    assert isinstance(make_pruner(_cfg(tmp_path, models, "pruner=none")), optuna.pruners.NopPruner)
    assert isinstance(make_pruner(_cfg(tmp_path, models, "optimizer=nsga2", "optimizer.multi_objective=true")),
                      optuna.pruners.NopPruner)


def test_a_multi_objective_study_has_one_direction_per_task(tmp_path, models):
    cfg = _cfg(tmp_path, models, "optimizer=nsga2", "optimizer.multi_objective=true")
    study = open_study(cfg, make_sampler(cfg), make_pruner(cfg))
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE] * 2


def test_budget_counts_complete_pruned_and_failed_with_a_reason_only():
    study = optuna.create_study()
    dist = {"x": FloatDistribution(0, 1)}
    for state, attrs in ((TrialState.COMPLETE, {}), (TrialState.PRUNED, {}), (TrialState.FAIL, {"fail_reason": "x"}),
                         (TrialState.FAIL, {}), (TrialState.FAIL, {"skipped": "budget filled by other workers"})):
        study.add_trial(create_trial(state=state, value=0.5 if state == TrialState.COMPLETE else None, params={"x": 0.1},
                                     distributions=dist, user_attrs=attrs))
    running = study.ask()
    assert [is_counted(t) for t in study.get_trials()] == [True, True, True, False, False, False]
    state = budget_state(study)
    assert (state.counted, state.running, state.total, state.heartbeat) == (3, 1, 6, False)
    assert budget_state(study, before=2).counted == 2 and budget_state(study, before=running.number).running == 0


def test_journal_heartbeats_are_recorded_and_a_silent_trial_goes_stale(tmp_path, models):
    cfg = _cfg(tmp_path, models, f"storage={tmp_path / 'study.log'}", "heartbeat_interval=1", "grace_period=2")
    storage = make_storage(cfg)
    assert isinstance(storage, optuna_compat.HeartbeatJournalStorage)
    study = optuna.create_study(storage=storage, study_name="hb")
    trial = study.ask()
    assert optuna_compat.heartbeat_enabled(study) and optuna_compat.heartbeat_interval(study) == 1
    Heartbeat.beat_once(study, trial)
    frozen = study.get_trials()[0]
    assert optuna_compat.HEARTBEAT_ATTR in frozen.system_attrs
    assert optuna_compat.trial_id(frozen) == optuna_compat.trial_id(trial)
    import time

    time.sleep(2.5)  # past grace_period without a beat
    state = budget_state(study)  # fails stale trials first
    trials = study.get_trials()
    assert trials[0].state == TrialState.FAIL and state.running == 0
    assert trials[1].state == TrialState.WAITING and trials[1].system_attrs.get("failed_trial") == 0  # the retry


def test_heartbeat_thread_only_for_heartbeat_storages():
    study = optuna.create_study()  # in-memory: no heartbeats
    trial = study.ask()
    with Heartbeat(study, trial) as hb:
        assert hb.thread is None and hb.interval is None
    Heartbeat.beat_once(study, trial)  # a no-op, not an error
    assert not optuna_compat.heartbeat_enabled(study)


def test_a_schema_race_with_another_worker_is_retried(tmp_path, models, monkeypatch):
    # what PostgreSQL raises when two workers create optuna's tables at once (seen in CI on a fresh database)
    import sqlalchemy.exc

    real, calls = optuna.storages.RDBStorage, []

    def racing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise sqlalchemy.exc.IntegrityError("CREATE TYPE studydirection", {}, Exception(
                'duplicate key value violates unique constraint "pg_type_typname_nsp_index"'))
        return real(*args, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", racing)
    assert isinstance(make_storage(_cfg(tmp_path, models)), real) and len(calls) == 2
