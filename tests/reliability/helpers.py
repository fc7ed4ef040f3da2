"""Shared helpers of the reliability tests: the fake world of tests/helpers, subprocess runs with a kill hook."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna

from evolve.config import load_config
from evolve.study import is_counted, make_pruner, make_sampler, open_study
from tests.helpers.fake_eval import env_for, make_models, write_config

__all__ = ["counted", "dot_temps", "tree_digest", "env_for", "make_models", "run_cli", "study_of", "write_config"]

# `python -c` prelude: the command's own code runs after a hook that may SIGKILL the process at a chosen point
_RUNNER = "import os, signal, sys\n{hook}\nfrom tests.helpers.fake_cli import main\nsys.exit(main(sys.argv[1:]))\n"


def run_cli(args: list[str], env: dict[str, str], hook: str = "", timeout: float = 240) -> subprocess.CompletedProcess:
    """`python -m tests.helpers.fake_cli ARGS` (evolve with FakeEvaluator) in a child process, `hook` run first."""
    code = _RUNNER.format(hook=hook)
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def study_of(path: Path, *overrides: str) -> optuna.Study:
    """The stored study of a fake-world config file."""
    cfg, _ = load_config([f"conf={path}", *overrides])
    return open_study(cfg, make_sampler(cfg), make_pruner(cfg), create=False)


def counted(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials that used up the n_trials budget."""
    return [t for t in study.get_trials() if is_counted(t)]


def dot_temps(*folders: Path) -> list[Path]:
    """Hidden temp entries (`.name.partial-*`, `.name.*.tmp`, `.name.old-*`) left in the folders."""
    return [p for f in folders if f.is_dir() for p in f.iterdir() if p.name.startswith(".")]


def tree_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`; a SQLite database by its logical contents (its -shm/-wal side files,
    and its bytes at a WAL checkpoint, change on mere reads)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name.endswith(("-shm", "-wal")):
            continue
        if p.suffix == ".db":
            con = sqlite3.connect(p)
            data = "\n".join(con.iterdump()).encode()
            con.close()
        else:
            data = p.read_bytes()
        out[str(p.relative_to(folder))] = hashlib.sha256(data).hexdigest()
    return out


def searched_world(root: Path, *args: str) -> dict:
    """Fake models under `root`, their config, and a study searched in-process with `args` (e.g. n_trials=3)."""
    import pytest

    from tests.helpers.fake_cli import main

    models = make_models(root / "models")
    conf = write_config(root, models)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env_for(models).items():
            mp.setenv(k, v)
        assert main(["search", f"conf={conf}", *args]) == 0
    return {"root": root, "models": models, "conf": conf}
