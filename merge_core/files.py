"""Output files others can use: atomic writes and temp folders with the umask's modes (0644/0755), never 0600.

`tempfile.mkstemp`/`mkdtemp` and safetensors create 0600 files and 0700 folders; renamed into place they would
leave recipes and cached models readable by their owner only. Everything we write goes through here.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plain `open(path, "w")` gives a new file here (0644 under the usual umask 022)."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """The mode `mkdir` gives a new folder here (0755 under umask 022)."""
    return 0o777 & ~_umask()


def temp_tag() -> str:
    """`<pid>@<host>`: names this process's temp files, so a later run can tell a dead writer's leftovers."""
    return f"{os.getpid()}@{socket.gethostname().split('.')[0]}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike, name: str) -> list[Path]:
    """Remove `.<name>.*<pid>@<host>*` temp entries in `folder` left by dead processes of this host (kill -9)."""
    folder, host, removed = Path(folder), socket.gethostname().split(".")[0], []
    if not folder.is_dir():
        return removed
    for entry in folder.glob(f".{glob_escape(name)}.*"):
        m = re.search(r"(\d+)@([\w-]+)", entry.name[len(name) + 2:])
        # temps of other machines (a shared out_dir) may belong to a live writer there: left alone
        if m and m.group(2) == host and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def glob_escape(text: str) -> str:
    """`text` with glob wildcards escaped."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `path` through a temp file named with temp_tag(), then rename: readers never see half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{temp_tag()}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())  # mkstemp makes 0600
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def make_temp_dir(parent: str | os.PathLike, prefix: str) -> Path:
    """A fresh folder inside `parent` (to be renamed into place) with the mode of any other new folder."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    tmp.chmod(dir_mode())
    return tmp


def share_tree(folder: str | os.PathLike) -> Path:
    """Give `folder` and everything below it the umask's modes (files written by safetensors come out 0600)."""
    folder = Path(folder)
    fmode, dmode = file_mode(), dir_mode()
    folder.chmod(dmode)
    for path in folder.rglob("*"):
        if path.is_symlink():
            continue
        # an executable (a script) keeps being one; data files get the plain file mode
        path.chmod(dmode if path.is_dir() or path.stat().st_mode & 0o111 else fmode)
    return folder


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive flock on the file `path` (created if missing) while the block runs: writers take turns."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def files_sha256(paths: Iterable[str | os.PathLike]) -> str:
    """Hex sha256 over the bytes of the files in order, read in chunks (one file: that file's plain sha256)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()
