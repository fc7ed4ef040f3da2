"""Programs some tests need from outside this environment: mergekit 0.1.5 (its own venv) and a PostgreSQL server.

One setting each, one skip message each, and under `CI=true` a missing one fails the test instead of skipping it,
so a CI run can never go green without the checks it advertises.
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

import pytest

# where scripts/mergekit_venv.sh puts the venv by default; .ci/run uses the same folder
DEFAULT_MERGEKIT_VENV = Path(os.environ.get("TMPDIR") or "/tmp") / "evolve-ci-mergekit"
MERGEKIT_HINT = ("mergekit 0.1.5 not found: run scripts/mergekit_venv.sh (or set EVOLVE_MERGEKIT_PYTHON to the "
                 "python of a venv with mergekit==0.1.5)")
POSTGRES_HINT = "EVOLVE_TEST_POSTGRES_URL is not set (.ci/run sets it after installing and starting PostgreSQL)"


def in_ci() -> bool:
    """True under CI=true (or 1): missing external programs are failures there."""
    return os.environ.get("CI", "").lower() in ("true", "1")


def missing(reason: str) -> None:
    """Skip the test saying why; under CI fail it instead."""
    if in_ci():
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


@functools.lru_cache(maxsize=1)
def mergekit_python() -> Path | None:
    """The python of the mergekit venv: EVOLVE_MERGEKIT_PYTHON, else beside EVOLVE_MERGEKIT_YAML, else the default venv."""
    explicit = os.environ.get("EVOLVE_MERGEKIT_PYTHON")
    yaml_cli = os.environ.get("EVOLVE_MERGEKIT_YAML")
    if explicit:
        candidate = Path(explicit)
    elif yaml_cli:
        candidate = Path(yaml_cli).with_name("python")
    else:
        candidate = DEFAULT_MERGEKIT_VENV / "bin" / "python"
    if not candidate.is_file():
        return None
    ok = subprocess.run([str(candidate), "-c", "import mergekit"], capture_output=True, timeout=120).returncode == 0
    return candidate if ok else None


def require_mergekit() -> Path:
    """The mergekit venv's python, or skip (fail under CI) with the one message that says how to get it."""
    python = mergekit_python()
    if python is None:
        missing(MERGEKIT_HINT)
    return python


def export_mergekit_env() -> None:
    """Put the resolved venv into EVOLVE_MERGEKIT_PYTHON / _YAML, so bench scripts and subprocesses see the same one."""
    python = mergekit_python()
    if python is not None:
        os.environ.setdefault("EVOLVE_MERGEKIT_PYTHON", str(python))
        os.environ.setdefault("EVOLVE_MERGEKIT_YAML", str(python.with_name("mergekit-yaml")))


def require_postgres() -> str:
    """The PostgreSQL URL of the storage test, or skip (fail under CI)."""
    url = os.environ.get("EVOLVE_TEST_POSTGRES_URL")
    if not url:
        missing(POSTGRES_HINT)
    return url
