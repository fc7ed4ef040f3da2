"""Storage checks before any model is opened: the URL's form, the database or journal file itself, torn writes.

A journal is one JSON record per line, appended under a lock. A crash or a full disk mid-append leaves the last
record cut (no newline); Optuna skips such a tail when reading, but the next append would glue its record onto
the torn bytes and every later read would fail. So before the first append the tail is cut back (under the
journal's own lock, so no live writer is mid-append), and a record that does not parse anywhere else is refused.
"""

from __future__ import annotations

import json
import re
import sqlite3
import stat
import sys
from pathlib import Path

from evolve.errors import UserError

JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")
RDB_SCHEMES = ("sqlite", "postgresql", "mysql")
_NEW_STUDY = "or start a new study elsewhere (another out_dir/storage)"


def redact(url: str) -> str:
    """The URL without its password (error messages end up in logs)."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def is_journal(url: str) -> bool:
    """Whether a storage value names a journal file (not a database URL)."""
    return url.endswith(JOURNAL_SUFFIXES) and "://" not in url


def check_storage_url(url: str) -> None:
    """Full check of a storage value: its form, then the file or server it names; UserError on any problem."""
    if is_journal(url):
        repair_journal(Path(url))
        return
    if url.split(":", 1)[0].split("+", 1)[0] not in RDB_SCHEMES:
        raise UserError(f"storage: {redact(url)!r} is neither a database URL ({', '.join(RDB_SCHEMES)}) nor a "
                        f"journal file ({', '.join(JOURNAL_SUFFIXES)}); e.g. storage=runs/x/journal.log")
    import sqlalchemy

    try:
        parsed = sqlalchemy.engine.make_url(url)
    except Exception as exc:  # ArgumentError, ValueError (bad port): the URL's own form
        raise UserError(f"storage: {redact(url)!r} is not a valid database URL ({_first(exc)}); write e.g. "
                        "sqlite:///runs/x/study.db or postgresql+psycopg2://user:password@host:5432/db") from None
    if parsed.get_backend_name() == "sqlite":
        check_sqlite_file(parsed.database, url)
    else:
        probe_server(url)


def check_sqlite_file(database: str | None, url: str) -> None:
    """A SQLite study must be a file (not in memory, not a folder), and an existing one must pass quick_check."""
    if not database or database == ":memory:" or database.startswith("file::memory:"):
        raise UserError(f"storage: {redact(url)!r} is an in-memory database, lost when the process ends; give a "
                        "file, e.g. storage=sqlite:///runs/x/study.db")
    path = Path(database)
    if not path.exists():
        _check_parent(path)
        return
    if not path.is_file():
        raise UserError(f"storage: {path} is not a regular file ({_kind(path)}); give a database file path, "
                        "e.g. storage=sqlite:///runs/x/study.db")
    try:
        con = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=60)
        try:
            result = [row[0] for row in con.execute("PRAGMA quick_check").fetchall()]
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise UserError(f"storage: {path} is damaged or not a SQLite database ({_first(exc)}); restore it from a "
                        f"backup {_NEW_STUDY}") from None
    if result != ["ok"]:
        raise UserError(f"storage: {path} is damaged (quick_check: {_first(result[0])}); restore it from a backup "
                        f"{_NEW_STUDY}")


def probe_server(url: str) -> None:
    """Connect once to a database server (no tables created): driver, address, credentials and database."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url, connect_args=_connect_args(url))
        try:
            with engine.connect():
                pass
        finally:
            engine.dispose()
    except ImportError as exc:
        raise no_driver(url, exc) from None
    except Exception as exc:  # OperationalError and friends: server down, bad password, no database
        if type(exc).__module__.split(".")[0] not in ("sqlalchemy", "psycopg2", "psycopg", "pymysql", "MySQLdb"):
            raise
        raise cannot_open(url, exc) from None


def _connect_args(url: str) -> dict:
    # a dead address should not hang for the OS's default TCP timeout (minutes)
    return {"connect_timeout": 10} if url.startswith(("postgresql", "mysql")) else {}


def no_driver(url: str, exc: BaseException) -> UserError:
    """The one line for a missing database driver."""
    return UserError(f"storage: no database driver for {redact(url)} ({exc.__cause__ or exc}); install it: "
                     "pip install psycopg2-binary and write postgresql+psycopg2://... (plain postgresql:// "
                     "means psycopg 3 in SQLAlchemy 2.1+)")


def cannot_open(url: str, exc: BaseException) -> UserError:
    """The one line for a database that cannot be reached or opened."""
    return UserError(f"storage: cannot open {redact(url)} ({_first(getattr(exc, 'orig', None) or exc)}); check the "
                     "URL, server and credentials")


def repair_journal(path: Path) -> int:
    """Cut a torn last record (warning on stderr); refuse a record that does not parse elsewhere. Returns bytes cut."""
    if not path.exists():
        _check_parent(path)
        return 0
    if not path.is_file():
        raise UserError(f"storage: {path} is not a regular file ({_kind(path)}); give a journal file path, "
                        "e.g. storage=runs/x/journal.log")
    from evolve.optuna_compat import journal_append_lock

    # the lock Optuna's JournalFileBackend takes for each append: holding it, no writer is mid-record
    with journal_append_lock(str(path)):
        good, tail = _scan(path)
        if not tail:
            return 0
        if _parses(tail):
            # every byte but the newline made it: keep the record
            with open(path, "ab") as f:
                f.write(b"\n")
            return 0
        with open(path, "r+b") as f:
            f.truncate(good)
    print(f"warning: storage: {path}: cut a torn last record ({len(tail)} bytes, left by a crash or a full disk); "
          "the study resumes from the records before it", file=sys.stderr)
    return len(tail)


def _scan(path: Path) -> tuple[int, bytes]:
    """Byte length of the complete records and the unterminated tail; UserError naming a bad complete record."""
    good = 0
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.endswith(b"\n"):
                return good, line
            if line.strip() and not _parses(line):
                raise UserError(f"storage: {path}: line {number} is not a journal record (damaged file); restore it "
                                f"from a backup, or delete that line if it is the torn record of an old crash, "
                                f"{_NEW_STUDY}")
            good += len(line)
    return good, b""


def _parses(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def _check_parent(path: Path) -> None:
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"storage: {parent} is a file, so {path} cannot be created; choose another path")
            return


def _kind(path: Path) -> str:
    mode = path.stat().st_mode
    return "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or special file"


def _first(exc: object) -> str:
    return " ".join(str(exc).split())[:200]
