"""Optuna plumbing for the search: storage, samplers, pruners, the trial budget, heartbeats and the progress bar."""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from evolve import optuna_compat
from evolve.errors import UserError
from evolve.objective import is_multi, n_objectives
from evolve.optuna_compat import HeartbeatJournalStorage
from evolve.storage_check import cannot_open, check_storage_url, is_journal, no_driver, repair_journal
from merge_core.files import exclusive_lock


def storage_url(cfg: DictConfig) -> str:
    """The storage of a config: `storage=` as given, or sqlite:///<out_dir>/study.db."""
    if cfg.storage:
        return str(cfg.storage)
    return f"sqlite:///{Path(cfg.out_dir).resolve() / 'study.db'}"


def storage_file(cfg: DictConfig) -> Path | None:
    """The local file holding the study (SQLite database or journal), None for a database server."""
    url = storage_url(cfg)
    if is_journal(url):
        return Path(url)
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None


def make_storage(cfg: DictConfig) -> optuna.storages.BaseStorage:
    """RDB storage or a journal file, both with heartbeats (a killed worker's trial is failed and retried)."""
    url = storage_url(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if is_journal(url):
            Path(url).parent.mkdir(parents=True, exist_ok=True)
            repair_journal(Path(url))  # before the first append: a torn tail would corrupt the journal for good
            return HeartbeatJournalStorage(
                JournalFileBackend(url), heartbeat_interval=int(cfg.heartbeat_interval),
                grace_period=int(cfg.grace_period),
                callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3),
            )
        check_storage_url(url)
        engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
        try:
            with storage_lock(url):
                storage = _rdb_storage(url, engine, cfg)
                if url.startswith("sqlite"):
                    _use_wal(storage)
                return storage
        except ImportError as exc:
            raise no_driver(url, exc) from None
        except Exception as exc:  # sqlalchemy's OperationalError and friends: server down, bad password, no db
            if type(exc).__module__.split(".")[0] != "sqlalchemy":
                raise
            raise cannot_open(url, exc) from None


CREATE_RETRIES = 5  # workers creating a server database's schema at once: the losers retry on the tables made


def _rdb_storage(url: str, engine: dict, cfg: DictConfig) -> optuna.storages.RDBStorage:
    """Optuna's RDBStorage; a schema race with another worker (e.g. PostgreSQL's duplicate `studydirection` type:
    optuna creates its tables without a lock) is retried, finding the tables the other worker made."""
    import sqlalchemy.exc

    for attempt in range(CREATE_RETRIES):
        try:
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine, heartbeat_interval=int(cfg.heartbeat_interval),
                grace_period=int(cfg.grace_period),
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3),
            )
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as exc:
            text = str(exc).lower()
            if attempt + 1 == CREATE_RETRIES or not ("already exists" in text or "duplicate" in text):
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def _use_wal(storage: optuna.storages.RDBStorage) -> None:
    """SQLite in WAL mode with synchronous=NORMAL: a trial's ~25 writes stop paying a disk sync each (30 ms here).

    Committed trials still survive kill -9 (WAL is synced at checkpoints; only an OS crash may lose the last ones).
    """
    import sqlalchemy

    def pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    sqlalchemy.event.listen(storage.engine, "connect", pragmas)
    storage.engine.dispose()  # connections opened before the listener reconnect with the pragmas


def check_storage(cfg: DictConfig) -> None:
    """The config's storage, checked in full before any model is opened (see evolve.storage_check)."""
    check_storage_url(storage_url(cfg))


@contextlib.contextmanager
def storage_lock(url: str, purpose: str = ""):
    """Serialize `purpose` among the workers of one storage (schema creation; "setup": creating the study and
    enqueuing its baselines, a check-then-act): a lock file beside a SQLite database or a journal, a PostgreSQL
    advisory lock on that server; other servers run unlocked."""
    if url.startswith("sqlite:///") or is_journal(url):
        path = Path(url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(path.with_name(f"{path.name}{'.' + purpose if purpose else ''}.lock")):
            yield
        return
    if not url.startswith("postgresql"):
        yield
        return
    import hashlib

    import sqlalchemy

    key = int.from_bytes(hashlib.sha256(f"evolve-merge:{purpose}".encode()).digest()[:8], "big", signed=True)
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        try:
            conn = engine.connect()
        except sqlalchemy.exc.SQLAlchemyError as exc:
            raise cannot_open(url, exc) from None
        with conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    finally:
        engine.dispose()


def make_sampler(cfg: DictConfig, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
    """The configured sampler, seeded from `seed` and `seed_offset` (the number of the trial it will sample)."""
    opt = cfg.optimizer
    options = OmegaConf.to_container(opt.options, resolve=True) or {}
    # re-seeding per ask from the trial count keeps one worker reproducible and lets parallel workers differ
    seed = (int(cfg.seed) * 1_000_003 + int(seed_offset)) % (2**31)
    samplers = {
        "cmaes": optuna.samplers.CmaEsSampler,
        "tpe": optuna.samplers.TPESampler,
        "gp": optuna.samplers.GPSampler,
        "random": optuna.samplers.RandomSampler,
        "nsga2": optuna.samplers.NSGAIISampler,
    }
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return samplers[opt.name](seed=seed, **options)
    except TypeError as exc:
        raise UserError(f"optimizer.options: {exc}; see the Optuna docs of {samplers[opt.name].__name__}") from None


def make_pruner(cfg: DictConfig) -> optuna.pruners.BasePruner:
    """Pruner over evaluation stages; none for multi-objective studies (Optuna cannot prune those)."""
    p = cfg.pruner
    if p.name == "none" or is_multi(cfg):
        return optuna.pruners.NopPruner()
    options = OmegaConf.to_container(p.options, resolve=True) or {}  # pruner=none has no options (evolve/schema.py)
    try:
        if p.name == "median":
            return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, **options)
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, **options)
    except TypeError as exc:
        raise UserError(f"pruner.options: {exc}") from None


def open_study(cfg: DictConfig, sampler: optuna.samplers.BaseSampler, pruner: optuna.pruners.BasePruner,
               create: bool = True) -> optuna.Study:
    """Create or load the study named `study_name` in the config's storage."""
    url = storage_url(cfg)
    if not create and url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        # opening would create an empty database (and its folder) just to say the study is missing
        raise UserError(f"study_name: no study {cfg.study_name!r}: {url.removeprefix('sqlite:///')} does not exist; "
                        f"run `evolve search` first or fix study_name/out_dir/storage")
    storage = make_storage(cfg)
    if not create:
        try:
            return optuna.load_study(study_name=cfg.study_name, storage=storage, sampler=sampler, pruner=pruner)
        except KeyError:
            raise UserError(f"study_name: no study {cfg.study_name!r} in {storage_url(cfg)}; run "
                            f"`evolve search` first or fix study_name/out_dir/storage") from None
    return optuna.create_study(study_name=cfg.study_name, storage=storage, sampler=sampler, pruner=pruner,
                               directions=["maximize"] * n_objectives(cfg), load_if_exists=True)


def is_counted(t: FrozenTrial) -> bool:
    """Whether a finished trial used up one of the n_trials (see evolve.search)."""
    if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return t.state == TrialState.FAIL and "fail_reason" in t.user_attrs


@dataclass
class Budget:
    """Counts of the study's trials that matter for the n_trials budget."""

    counted: int
    running: int
    total: int
    heartbeat: bool


def budget_state(study: optuna.Study, before: int | None = None) -> Budget:
    """Counted and running trials (only those numbered below `before`, if given); fails stale trials first."""
    from optuna.storages import fail_stale_trials

    heartbeat = optuna_compat.heartbeat_enabled(study)
    if heartbeat and before is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    if before is not None:
        trials = [t for t in trials if t.number < before]
    counted = sum(is_counted(t) for t in trials)
    running = sum(t.state == TrialState.RUNNING for t in trials)
    return Budget(counted, running, len(trials), heartbeat)


class Heartbeat:
    """Records a RUNNING trial's heartbeat in the storage so a killed worker's trial is failed and retried."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial) -> None:
        self.interval = optuna_compat.heartbeat_interval(study)
        self.stop = threading.Event()
        self.thread = None
        if self.interval:
            def beat() -> None:
                while True:
                    optuna_compat.record_heartbeat(study, trial)
                    if self.stop.wait(self.interval):
                        return
            self.thread = threading.Thread(target=beat, daemon=True)

    @staticmethod
    def beat_once(study: optuna.Study, trial: optuna.Trial) -> None:
        """Record one heartbeat now (heartbeat storages only)."""
        if optuna_compat.heartbeat_interval(study):
            optuna_compat.record_heartbeat(study, trial)

    def __enter__(self) -> Heartbeat:
        if self.thread:
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.thread:
            self.thread.join()


def best_value_text(study: optuna.Study) -> str:
    """Best objective so far (or the Pareto front size) as a short string."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not done:
        return "-"
    if len(study.directions) > 1:
        return f"pareto={len(study.best_trials)}"
    best = max(done, key=lambda t: t.value)
    return f"{best.value:.4f} (#{best.number})"


class TrialProgress:
    """tqdm bar: counted trials / n_trials, best so far, ETA."""

    def __init__(self, study: optuna.Study, total: int, enabled: bool = True) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=min(budget_state(study).counted, total), desc="trials",
                        disable=not enabled, dynamic_ncols=True)

    def __enter__(self) -> TrialProgress:
        return self

    def update(self, study: optuna.Study) -> None:
        """Move to the study's counted trials and show the best value."""
        counted = min(budget_state(study, before=10**12).counted, self.bar.total)
        self.bar.update(counted - self.bar.n)
        self.bar.set_postfix_str(f"best {best_value_text(study)}")

    def __exit__(self, *exc: object) -> None:
        self.bar.close()
