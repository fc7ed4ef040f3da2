"""Fixtures of the reliability tests: a real small disk."""

from __future__ import annotations

import subprocess

import pytest


@pytest.fixture()
def small_disk(tmp_path):
    """A real 64 KiB tmpfs (root only); unmounted afterwards."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)
