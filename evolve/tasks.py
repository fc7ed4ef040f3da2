"""Task names in configs -> lm-eval Task objects: eval_tasks base names get a split suffix, others are lm-eval's own."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import eval_tasks
from evolve.errors import UserError

SPLITS = ("dev", "test")


@dataclass(frozen=True)
class TaskRef:
    """One requested task: its lm-eval name and whether it lives in our include path."""

    request: str  # the name as the user wrote it
    name: str  # the lm-eval task (or group) name
    local: bool


def as_paths(include_path: Path | str | Sequence[Path | str] | None) -> list[Path]:
    """Normalise an include path argument to a list of folders (default: eval_tasks.PATH)."""
    if include_path is None:
        return [eval_tasks.PATH]
    if isinstance(include_path, (str, Path)):
        return [Path(include_path)]
    return [Path(p) for p in include_path]


def local_task_names(include_path: Path | str | Sequence[Path | str] | None = None) -> list[str]:
    """Base names of the tasks that follow the eval_tasks layout (`<task>/<task>.yaml`)."""
    names = set()
    for root in as_paths(include_path):
        for yaml_file in root.glob("*/*.yaml"):
            if yaml_file.stem == yaml_file.parent.name:
                names.add(yaml_file.stem)
    return sorted(names)


def resolve(
    names: Sequence[str],
    split: str = "dev",
    *,
    include_path: Path | str | Sequence[Path | str] | None = None,
    allow_test: bool = False,
) -> list[TaskRef]:
    """Map config task names to lm-eval names; refuses the test split unless `allow_test` (contamination)."""
    if split not in SPLITS:
        raise UserError(f"split: {split!r} is not a split; use one of {', '.join(SPLITS)}")
    if isinstance(names, str) or not names:
        raise UserError(f"tasks: expected a non-empty list of task names, got {names!r}; e.g. tasks=[retention]")
    local = set(local_task_names(include_path))
    refs = []
    for name in names:
        base, task_split = name, split
        # a full local name (`retention_test`) is accepted and keeps its own split
        for s in SPLITS:
            if name.endswith(f"_{s}") and name[: -len(s) - 1] in local:
                base, task_split = name[: -len(s) - 1], s
        if base in local:
            if task_split == "test" and not allow_test:
                raise UserError(
                    f"tasks: {name!r} on split test is held out and must not be searched on (contamination); "
                    "use split=dev, or pass allow_test=True for a final report"
                )
            refs.append(TaskRef(name, f"{base}_{task_split}", True))
        else:
            refs.append(TaskRef(name, name, False))
    if len({r.name for r in refs}) != len(refs):
        raise UserError(f"tasks: {list(names)} names a task twice; list each task once")
    return refs


def load_tasks(refs: Sequence[TaskRef], include_path: Path | str | Sequence[Path | str] | None = None) -> dict:
    """Build lm-eval Task objects (leaf name -> Task); unknown names and broken task folders are UserErrors."""
    with quiet("lm_eval"):  # lm-eval warns about every custom_dataset
        return _load_tasks(refs, [str(p) for p in as_paths(include_path)], include_path)


def _load_tasks(refs: Sequence[TaskRef], paths: list[str], include_path: Path | str | Sequence[Path | str] | None) -> dict:
    """load_tasks without the log filter."""
    from lm_eval.tasks import TaskManager

    tasks: dict = {}
    local = [r for r in refs if r.local]
    other = [r for r in refs if not r.local]
    if local:
        manager = TaskManager(include_path=paths, include_defaults=False)
        for ref in local:
            tasks.update(_load_one(manager, ref, paths))
    if other:
        for ref in other:
            _check_known(ref, (), include_path, quick=True)
        # the default index parses every built-in task YAML (tens of seconds): only pay for it when a name needs it
        manager = TaskManager(include_path=paths, include_defaults=True)
        for ref in other:
            _check_known(ref, manager.all_tasks, include_path)
            tasks.update(_load_one(manager, ref, paths))
    return tasks


def _load_one(manager, ref: TaskRef, paths: list[str]) -> dict:
    """Load one task or group through the manager, turning task-folder failures into one-line UserErrors."""
    try:
        return dict(manager.load([ref.name])["tasks"])
    except UserError:
        raise
    except Exception as exc:  # a broken YAML or data file is the user's input, not our bug
        where = f"{paths[0]}/{ref.name.rsplit('_', 1)[0]}" if ref.local else ref.name
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{where}: cannot load task {ref.name}: {msg}") from exc


def validate(refs: Sequence[TaskRef], include_path: Path | str | Sequence[Path | str] | None = None) -> None:
    """Fail fast, before a model is loaded: local tasks must load (data present), other names must look known."""
    if any(r.local for r in refs):
        load_tasks([r for r in refs if r.local], include_path)
    for ref in refs:
        if not ref.local:
            _check_known(ref, (), include_path, quick=True)


def _check_known(
    ref: TaskRef, known: Sequence[str], include_path: Path | str | Sequence[Path | str] | None, quick: bool = False
) -> None:
    """UserError listing our tasks when a name is neither ours nor lm-eval's (`quick`: a text scan, no index)."""
    if not (_mentioned_in_builtin_yaml(ref.name) if quick else ref.name in known):
        raise UserError(
            f"tasks: unknown task {ref.request!r}; eval_tasks has: {', '.join(local_task_names(include_path))} "
            "(or name an lm-eval built-in task)"
        )


def _mentioned_in_builtin_yaml(name: str) -> bool:
    """Whether any built-in lm-eval task YAML mentions `name`: a fast negative test before the slow index."""
    import lm_eval

    pattern = re.compile(r"(?<![\w-])" + re.escape(name) + r"(?![\w-])")
    root = Path(lm_eval.__file__).parent / "tasks"
    return any(pattern.search(p.read_text(encoding="utf-8", errors="ignore")) for p in root.rglob("*.yaml"))


@contextmanager
def quiet(logger_name: str) -> Iterator[None]:
    """Raise a logger's level to ERROR for the duration of the block."""
    log = logging.getLogger(logger_name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)
