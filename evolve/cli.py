"""Command dispatch: `evolve COMMAND key=value ...`; each command lives in evolve/commands/<name>.py."""

from __future__ import annotations

import errno
import importlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from evolve.errors import UserError
from evolve.progress import quiet_library_bars

# command name -> module under evolve.commands exposing `run(args: list[str]) -> int`
COMMANDS: dict[str, str] = {
    "search": "search",
    "merge": "merge",
    "eval": "eval",
    "export": "export",
    "report": "report",
    "prepare": "prepare",
}

# commands that score models take the evaluator from the caller (tests inject a fast stand-in); none is configured
USES_EVALUATOR = ("search", "export", "report")


class Terminated(KeyboardInterrupt):
    """SIGTERM (docker stop, timeout, SLURM) raised as an interrupt, so it unwinds like Ctrl-C: trial told failed."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS)
USAGE = "usage: evolve {" + ",".join(COMMANDS) + "} key=value ... (see README.md)"


def main(argv: Sequence[str] | None = None, *, evaluator_factory: Callable[..., Any] | None = None) -> int:
    """Run one command; map bad input to exit 2 with one line, internal errors to exit 1.

    `evaluator_factory` replaces evolve.evaluate.Evaluator for search/export/report (same constructor and methods).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if args else 2
    name, rest = args[0], args[1:]
    # nothing is downloaded at run time: a dataset or model not on this machine fails at once, without the Hub's
    # retries (a user who wants downloads sets these to 0)
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        os.environ.setdefault(var, "1")
    quiet_library_bars()
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    main_thread = threading.current_thread() is threading.main_thread()  # signal handlers can only be set there
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    try:
        return _run(name, rest, evaluator_factory)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _run(name: str, rest: list[str], evaluator_factory: Callable[..., Any] | None) -> int:
    try:
        module = importlib.import_module(f"evolve.commands.{COMMANDS[name]}")
        if evaluator_factory is not None and name in USES_EVALUATOR:
            return int(module.run(rest, evaluator_factory=evaluator_factory) or 0)
        return int(module.run(rest) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        # the disk, the permissions or the file system, not our code: say which file and what to do, no traceback
        where = exc.filename or "output"
        if exc.errno in WRITE_ERRNOS:
            print(f"error: {where}: cannot write ({exc.strerror}); free disk space or choose a writable "
                  "out/out_dir, then run the same command again", file=sys.stderr)
            return 2
        print(f"error: {where}: {exc.strerror or exc} (OSError {exc.errno}); check the file system, then run the "
              "same command again", file=sys.stderr)
        return 1
    except Terminated:
        print("terminated (SIGTERM): the running trial is marked failed and not counted; run the same command "
              "again to resume", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
