"""Reading small user files safely: regular files only (a FIFO or device would block), a size limit, UTF-8, and
YAML whose aliases do not expand into a huge tree (an alias bomb hangs whatever walks it, e.g. OmegaConf)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import yaml

from merge_core.errors import UserError

MAX_TEXT_BYTES = 1 << 20  # a recipe or config is a few KB; 1 MiB leaves room for per-layer lists of any model
MAX_YAML_NODES = 100_000  # nodes after expanding aliases; a 126-layer recipe with every option is ~10_000


def read_text(path: str | os.PathLike, where: str | None = None, limit: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of a regular file of at most `limit` bytes, or a one-line UserError naming it."""
    path = Path(path)
    where = where or str(path)
    try:
        st = path.stat()
    except OSError as exc:
        raise UserError(f"{where}: cannot read ({exc.strerror}); check the path") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device"
        raise UserError(f"{where}: is {kind}, not a regular file (reading it could block); give a file path")
    if st.st_size > limit:
        raise UserError(f"{where}: {st.st_size} bytes is more than the {limit}-byte limit for this file; "
                        "check it is the right file (a recipe or config is a few KB)")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{where}: cannot read ({exc.strerror}); check the path and permissions") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserError(f"{where}: not UTF-8 text (byte {exc.start}, line {line}); save it as UTF-8") from None


def check_yaml_size(text: str, where: str, limit: int = MAX_YAML_NODES) -> None:
    """UserError when the YAML's node tree, aliases expanded, exceeds `limit` nodes (counted without expanding)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return  # the caller's own parse reports the syntax error with its line
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        # a shared (aliased) node counts once per use: memoized, so this is linear in the unexpanded tree
        key = id(node)
        if key not in sizes:
            sizes[key] = 1  # guards recursive aliases
            if isinstance(node, yaml.SequenceNode):
                sizes[key] = 1 + sum(size(n) for n in node.value)
            elif isinstance(node, yaml.MappingNode):
                sizes[key] = 1 + sum(size(k) + size(v) for k, v in node.value)
        return sizes[key]

    if root is not None and size(root) > limit:
        raise UserError(f"{where}: its aliases (*name) expand to more than {limit} YAML nodes; write the values "
                        "out instead of nesting aliases")
