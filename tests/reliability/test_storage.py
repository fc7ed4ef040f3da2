"""Storage faults: torn journal tails (written by hand, by kill -9 mid-append, by a real full disk), garbage in the
middle, damaged SQLite files and every other storage problem found before any model is opened."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path

import pytest

from tests.helpers.fake_cli import main
from tests.reliability.helpers import counted, env_for, make_models, run_cli, study_of, write_config


@pytest.fixture()
def fake(tmp_path, monkeypatch):
    """Fake models, env set in-process, and a config factory."""
    models = make_models(tmp_path / "models")
    for k, v in env_for(models).items():
        monkeypatch.setenv(k, v)
    return models


def _search(conf: Path, *extra: str) -> list[str]:
    return ["search", f"conf={conf}", "export=false", "report=false", *extra]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _no_models(monkeypatch):
    """Any attempt to open the models fails the test: storage problems must be found before."""
    def refuse(*a, **k):
        raise AssertionError("models were opened before the storage was checked")
    monkeypatch.setattr("evolve.pipeline.build_context", refuse)


def test_torn_tail_is_cut_with_a_warning_and_the_same_command_resumes(tmp_path, fake, capsys):
    journal = tmp_path / "run" / "journal.log"
    conf = write_config(tmp_path, fake, storage=str(journal))
    assert main(_search(conf, "n_trials=2")) == 0
    whole = journal.read_bytes()
    torn = b'{"op_code":6,"worker_id":"x","trial_id":1,"par'
    journal.write_bytes(whole + torn)
    capsys.readouterr()
    assert main(_search(conf, "n_trials=4")) == 0
    err = capsys.readouterr().err
    warning = [line for line in err.splitlines() if line.startswith("warning: storage:")]
    assert len(warning) == 1 and str(journal) in warning[0] and f"({len(torn)} bytes" in warning[0], err
    assert journal.read_bytes().startswith(whole)
    assert len(counted(study_of(conf, "n_trials=4"))) == 4
    for line in journal.read_bytes().splitlines():  # every record parses: nothing glued onto the torn bytes
        json.loads(line)


def test_a_complete_last_record_without_its_newline_is_kept(tmp_path, fake, capsys):
    journal = tmp_path / "run" / "journal.log"
    conf = write_config(tmp_path, fake, storage=str(journal))
    assert main(_search(conf, "n_trials=2")) == 0
    data = journal.read_bytes()
    journal.write_bytes(data[:-1])  # only the final newline lost
    assert main(_search(conf, "n_trials=2")) == 0
    assert "torn" not in capsys.readouterr().err
    assert journal.read_bytes().startswith(data)


def test_garbage_mid_journal_is_one_line_naming_file_and_line(tmp_path, fake, capsys, monkeypatch):
    journal = tmp_path / "run" / "journal.log"
    conf = write_config(tmp_path, fake, storage=str(journal))
    assert main(_search(conf, "n_trials=2")) == 0
    lines = journal.read_bytes().splitlines(keepends=True)
    lines.insert(2, b"\x00\x00garbage{\n")
    journal.write_bytes(b"".join(lines))
    before = _sha(journal)
    _no_models(monkeypatch)
    capsys.readouterr()
    for cmd in (_search(conf, "n_trials=4"), ["export", f"conf={conf}"], ["report", f"conf={conf}"]):
        assert main(cmd) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"{journal}: line 3 is not a journal record" in err, err
    assert _sha(journal) == before


# kill -9 in the middle of a journal append: half the record is on disk, then the process dies
_TEAR = """
import optuna.storages.journal._file as jf
_orig, _n = jf.JournalFileBackend.append_logs, [0]
def _append(self, logs):
    _n[0] += 1
    if _n[0] == {at}:
        data = ("\\n".join(__import__("json").dumps(l) for l in logs) + "\\n").encode()
        with open(self._file_path, "ab") as f:
            f.write(data[: len(data) // 2]); f.flush(); os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    return _orig(self, logs)
jf.JournalFileBackend.append_logs = _append
"""


@pytest.mark.parametrize("at", [3, 40])
def test_kill9_mid_append_then_the_same_command_finishes_exactly_n(tmp_path, at):
    models = make_models(tmp_path / "models")
    journal = tmp_path / "run" / "journal.log"
    conf = write_config(tmp_path, models, storage=str(journal))
    args = _search(conf, "n_trials=4")
    first = run_cli(args, env_for(models), hook=_TEAR.replace("{at}", str(at)))
    assert first.returncode == -9, first.stderr[-2000:]
    assert not journal.read_bytes().endswith(b"\n")
    second = run_cli(args, env_for(models))
    assert second.returncode == 0, second.stderr[-2000:]
    assert "warning: storage:" in second.stderr and "bytes" in second.stderr
    assert len(counted(study_of(conf, "n_trials=4"))) == 4


def test_a_full_disk_at_a_journal_write_then_the_same_command_finishes(tmp_path, small_disk):
    models = make_models(tmp_path / "models")
    journal = small_disk / "journal.log"
    (small_disk / "filler").write_bytes(b"\0" * (64 * 1024 - 4096 * 3))  # a few pages left: full within a trial or two
    conf = write_config(tmp_path, models, storage=str(journal))
    args = _search(conf, "n_trials=5")
    first = run_cli(args, env_for(models))
    assert first.returncode == 2, first.stderr[-2000:]
    lines = first.stderr.strip().splitlines()
    assert len(lines) == 1 and "No space left on device" in lines[0], first.stderr[-2000:]
    (small_disk / "filler").unlink()  # space freed: the same command goes on
    second = run_cli(args, env_for(models))
    assert second.returncode == 0, second.stderr[-2000:]
    assert len(counted(study_of(conf, "n_trials=5"))) == 5


def _damaged_db(t: Path) -> Path:
    db = t / "run" / "study.db"
    db.parent.mkdir(parents=True)
    con = sqlite3.connect(db)
    con.execute("create table t (x)")
    con.executemany("insert into t values (?)", [(os.urandom(200),) for _ in range(200)])
    con.commit()
    con.close()
    data = bytearray(db.read_bytes())
    data[4096:8192] = os.urandom(4096)  # a page of garbage
    db.write_bytes(bytes(data))
    return db


def _fifo(t: Path) -> Path:
    path = t / "fifo.log"
    os.mkfifo(path)
    return path


# id -> (storage value given tmp folder, what the one line says)
STORAGE_CASES = {
    "sqlite file of garbage": (lambda t: _write(t / "g.db", os.urandom(5000)), "damaged or not a SQLite database"),
    "sqlite file damaged": (_damaged_db, "damaged or not a SQLite database"),
    "sqlite path a folder": (lambda t: _mkdir(t / "d.db"), "is not a regular file (a folder)"),
    "sqlite in memory": (lambda t: "sqlite://", "in-memory"),
    "sqlite :memory:": (lambda t: "'sqlite:///:memory:'", "in-memory"),
    "journal path a folder": (lambda t: _mkdir(t / "d.log"), "is not a regular file (a folder)"),
    "journal a FIFO": (_fifo, "(a FIFO)"),
    "malformed URL (port)": (lambda t: "postgresql+psycopg2://u:p@localhost:port/db", "not a valid database URL"),
    "unreachable server": (lambda t: "postgresql+psycopg2://u:secret@127.0.0.1:1/db", "cannot open"),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


@pytest.mark.parametrize("case", list(STORAGE_CASES))
def test_storage_problems_are_one_line_before_any_model(case, tmp_path, fake, capsys, monkeypatch):
    make, needle = STORAGE_CASES[case]
    value = make(tmp_path)
    storage = f"sqlite:///{value}" if isinstance(value, Path) and value.name.endswith(".db") else str(value)
    conf = write_config(tmp_path, fake, storage=storage)
    before = {p: (p.stat().st_size if p.is_file() else None) for p in tmp_path.rglob("*") if "models" not in p.parts}
    _no_models(monkeypatch)
    capsys.readouterr()
    assert main(_search(conf)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: storage:") and needle in err, err
    assert "secret" not in err
    after = {p: (p.stat().st_size if p.is_file() else None) for p in tmp_path.rglob("*") if "models" not in p.parts}
    assert after == before
