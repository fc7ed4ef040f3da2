"""Task names in configs -> lm-eval Task objects: eval_tasks base names get a split suffix, others are lm-eval's own."""

from __future__ import annotations

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
    from lm_eval.tasks import TaskManager

    paths = [str(p) for p in as_paths(include_path)]
    tasks: dict = {}
    local = [r for r in refs if r.local]
    other = [r for r in refs if not r.local]
    if local:
        manager = TaskManager(include_path=paths, include_defaults=False)
        for ref in local:
            tasks.update(_load_one(manager, ref, paths))
    if other:
        # the default index scans every built-in task YAML: only pay for it when a name needs it
        manager = TaskManager(include_path=paths, include_defaults=True)
        for ref in other:
            if ref.name not in manager.all_tasks:
                raise UserError(
                    f"tasks: unknown task {ref.request!r}; eval_tasks has: {', '.join(local_task_names(include_path))} "
                    "(or name an lm-eval built-in task)"
                )
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
