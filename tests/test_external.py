"""The external-program helper: one setting for mergekit, skip locally, fail under CI=true."""

from __future__ import annotations

import pytest

from tests import external


@pytest.fixture
def no_mergekit(monkeypatch, tmp_path):
    monkeypatch.setenv("EVOLVE_MERGEKIT_PYTHON", str(tmp_path / "absent" / "python"))
    external.mergekit_python.cache_clear()
    yield
    external.mergekit_python.cache_clear()


def test_missing_mergekit_skips_locally(no_mergekit, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="scripts/mergekit_venv.sh"):
        external.require_mergekit()


def test_missing_mergekit_fails_under_ci(no_mergekit, monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true and mergekit 0.1.5 not found"):
        external.require_mergekit()


def test_missing_postgres_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    monkeypatch.delenv("EVOLVE_TEST_POSTGRES_URL", raising=False)
    with pytest.raises(pytest.fail.Exception, match="EVOLVE_TEST_POSTGRES_URL"):
        external.require_postgres()


def test_yaml_setting_alone_finds_its_python(monkeypatch, tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python").symlink_to(__import__("sys").executable)  # a python without mergekit: found, then refused
    monkeypatch.delenv("EVOLVE_MERGEKIT_PYTHON", raising=False)
    monkeypatch.setenv("EVOLVE_MERGEKIT_YAML", str(fake / "mergekit-yaml"))
    external.mergekit_python.cache_clear()
    try:
        assert external.mergekit_python() is None
    finally:
        external.mergekit_python.cache_clear()
