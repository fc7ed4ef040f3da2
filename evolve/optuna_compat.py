"""Optuna internals the project relies on, in one place, so an Optuna upgrade is checked here and nowhere else.

Checked against optuna 5.0.0. Why each is needed (no public API does the same):
- `study._storage`: our own ask/tell loop records heartbeats, which `Study.optimize` does through the storage;
- `trial._trial_id`: the storage's heartbeat and stale-trial calls take the trial id, not its number;
- `optuna.storages._heartbeat` (`BaseHeartbeat`, `is_heartbeat_enabled`): a journal file storage with heartbeats
  (Optuna 5's JournalStorage has none) and the budget check "does this storage fail stale trials?";
  `BaseHeartbeat._get_stale_trial_ids` is the hook a heartbeat storage implements;
- `optuna.storages.journal._file.get_lock_file`: the lock JournalFileBackend takes for each append, so a torn
  journal tail is repaired while no writer is mid-record.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import optuna
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled
from optuna.storages.journal import JournalStorage
from optuna.trial import TrialState

HEARTBEAT_ATTR = "evolve:heartbeat"


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage object behind a study."""
    return study._storage


def trial_id(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """The storage's id of a trial (not its number)."""
    return trial._trial_id


def heartbeat_enabled(study: optuna.Study) -> bool:
    """Whether the study's storage records heartbeats and fails stale trials."""
    return is_heartbeat_enabled(storage_of(study))


def heartbeat_interval(study: optuna.Study) -> int | None:
    """Seconds between heartbeats of the study's storage (None: a storage without heartbeats)."""
    storage = storage_of(study)
    return storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None


def record_heartbeat(study: optuna.Study, trial: optuna.Trial) -> None:
    """Record one heartbeat of a RUNNING trial in the study's storage."""
    storage_of(study).record_heartbeat(trial_id(trial))


@contextlib.contextmanager
def journal_append_lock(path: str) -> Iterator[None]:
    """Hold the lock Optuna's JournalFileBackend takes for each append to the journal file at `path`."""
    from optuna.storages.journal import JournalFileSymlinkLock
    from optuna.storages.journal._file import get_lock_file

    with get_lock_file(JournalFileSymlinkLock(path)):
        yield


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """A journal file with heartbeats (Optuna 5's JournalStorage has none), so a killed worker's trial goes stale.

    The beat is a trial system attr holding wall-clock time: workers on several machines sharing one journal
    file need clocks synchronized (NTP) well within grace_period.
    """

    def __init__(self, backend: Any, *, heartbeat_interval: int, grace_period: int, callback: Any) -> None:
        super().__init__(backend)
        self._interval, self._grace, self._callback = heartbeat_interval, grace_period, callback

    def record_heartbeat(self, trial_id: int) -> None:
        """Store the time now as the trial's last beat."""
        try:
            self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another worker already failed this trial as stale; its tell will say so

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now, stale = time.time(), []
        for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            if HEARTBEAT_ATTR not in t.system_attrs:
                continue
            # a retried trial inherits its failed parent's old beat: count from its own start as well
            start = t.datetime_start.timestamp() if t.datetime_start else 0.0
            if now - max(float(t.system_attrs[HEARTBEAT_ATTR]), start) > self._grace:
                stale.append(trial_id(t))
        return stale

    def get_heartbeat_interval(self) -> int | None:
        """Seconds between beats."""
        return self._interval

    def get_heartbeat_stale_trial_callback(self) -> Any:
        """Retries a stale trial as a new WAITING trial."""
        return self._callback
