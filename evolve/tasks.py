"""Task names in configs -> lm-eval Task objects, and which of them the project splits itself.

A name is an *eval_tasks pair* when the include paths hold both `<name>_dev` and `<name>_test` (the layout of
eval_tasks/): the search scores `<name>_dev`, the report `<name>_test`, under those keys. Any other task (an lm-eval
built-in, or any task of `tasks.include_path`, flat YAMLs included) is *partitioned*: evolve.splits cuts its
evaluation documents into disjoint dev and test ids, and its scores are keyed `<lm_eval_task>_dev` / `_test`.
eval_tasks/ is always on the include path; `tasks.include_path` adds folders, as `lm_eval --include_path` does.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import eval_tasks
from evolve.errors import UserError

SPLITS = ("dev", "test")
IncludePath = Path | str | Sequence[Path | str] | None


@dataclass(frozen=True)
class TaskRef:
    """One requested task: its lm-eval name, where it lives, and whether the project splits it."""

    request: str  # the name as the user wrote it
    name: str  # the lm-eval task (or group) name
    local: bool  # found in an include path (eval_tasks or tasks.include_path), else an lm-eval built-in
    pair: bool = True  # an eval_tasks-style pair: `name` already is the split's own task
    split: str = "dev"

    @property
    def key(self) -> str:
        """The score key: the pair's own task name, or `<lm_eval_task>_<split>` for a partitioned task."""
        return self.name if self.pair else f"{self.name}_{self.split}"

    @property
    def builtin(self) -> bool:
        """Whether the task is one of lm-eval's own benchmarks."""
        return not self.local


def as_paths(include_path: IncludePath) -> list[Path]:
    """eval_tasks/ followed by the given folders (each once); every given folder must exist."""
    given = [] if include_path is None else [include_path] if isinstance(include_path, (str, Path)) else include_path
    paths = [Path(eval_tasks.PATH).resolve()]
    for p in given:
        path = Path(str(p)).expanduser()
        if not path.is_dir():
            raise UserError(f"tasks.include_path: {p} is not a folder; give folders of lm-eval task YAMLs")
        if path.resolve() not in paths:
            paths.append(path.resolve())
    return paths


@functools.lru_cache(maxsize=16)
def _local_index(paths: tuple[str, ...]) -> dict[str, str]:
    """Every task, group and tag lm-eval finds in these folders (any layout it accepts) -> its YAML file ('' if none)."""
    from lm_eval.tasks import TaskManager

    with quiet("lm_eval"):
        index = TaskManager(include_path=list(paths), include_defaults=False).task_index
    return {name: str(getattr(entry, "yaml_path", "") or "") for name, entry in index.items()}


def local_index(include_path: IncludePath = None) -> dict[str, str]:
    """Task names lm-eval finds in eval_tasks/ and the include path folders -> their YAML files."""
    return _local_index(tuple(str(p) for p in as_paths(include_path)))


def task_folder(name: str, include_path: IncludePath = None) -> Path | None:
    """The include folder (eval_tasks/ or one of tasks.include_path) that defines lm-eval task `name`; None: built-in."""
    yaml_path = local_index(include_path).get(name)
    if not yaml_path:
        return None
    for folder in as_paths(include_path):
        if Path(yaml_path).resolve().is_relative_to(folder):
            return folder
    return None


def local_task_names(include_path: IncludePath = None) -> list[str]:
    """Names a config may use from the include paths: pair base names and the other local tasks."""
    index = local_index(include_path)
    pairs = {n[:-4] for n in index if n.endswith("_dev") and f"{n[:-4]}_test" in index}
    others = {n for n in index if not any(n == f"{p}_{s}" for p in pairs for s in SPLITS)}
    return sorted(pairs | others)


def resolve(
    names: Sequence[str],
    split: str = "dev",
    *,
    include_path: IncludePath = None,
    allow_test: bool = False,
) -> list[TaskRef]:
    """Map config task names to TaskRefs; refuses the test split unless `allow_test` (contamination)."""
    if split not in SPLITS:
        raise UserError(f"split: {split!r} is not a split; use one of {', '.join(SPLITS)}")
    if isinstance(names, str) or not names:
        raise UserError(f"tasks: expected a non-empty list of task names, got {names!r}; e.g. tasks=[retention]")
    index = local_index(include_path)
    refs = []
    for name in names:
        name = str(name)
        base, task_split = name, split
        # a full pair name (`retention_test`) is accepted and keeps its own split
        for s in SPLITS:
            stem = name[: -len(s) - 1]
            if name.endswith(f"_{s}") and f"{stem}_dev" in index and f"{stem}_test" in index:
                base, task_split = stem, s
        pair = f"{base}_dev" in index and f"{base}_test" in index
        if task_split == "test" and not allow_test:
            raise UserError(
                f"tasks: {name!r} on split test is held out and must not be searched on (contamination); "
                "use split=dev, or pass allow_test=True for a final report"
            )
        if pair:
            refs.append(TaskRef(name, f"{base}_{task_split}", True, True, task_split))
        else:
            refs.append(TaskRef(name, name, name in index, False, task_split))
    keys = [r.key for r in refs]
    if len(set(keys)) != len(keys):
        raise UserError(f"tasks: {list(names)} names a task twice (score keys {keys}); list each task once")
    return refs


def load_tasks(refs: Sequence[TaskRef], include_path: IncludePath = None) -> dict:
    """Build lm-eval Task objects (leaf name -> Task); unknown names, missing data and broken folders are UserErrors.

    Every task is tried before failing, so one line names all that are missing.
    """
    with quiet("lm_eval"), quiet("datasets"), quiet("huggingface_hub"):  # lm-eval warns about every custom_dataset
        return _load_tasks(refs, [str(p) for p in as_paths(include_path)], include_path)


def _load_tasks(refs: Sequence[TaskRef], paths: list[str], include_path: IncludePath) -> dict:
    """load_tasks without the log filters."""
    from lm_eval.tasks import TaskManager

    unknown = [r for r in refs if not r.local and not _mentioned_in_builtin_yaml(r.name)]
    if unknown:
        raise _unknown(unknown, include_path)
    tasks: dict = {}
    missing: list[tuple[TaskRef, str]] = []
    local = [r for r in refs if r.local]
    other = [r for r in refs if not r.local]
    managers = []
    if local:
        managers.append((TaskManager(include_path=paths, include_defaults=False), local))
    if other:
        # the default index parses every built-in task YAML (tens of seconds): only pay for it when a name needs it
        manager = TaskManager(include_path=paths, include_defaults=True)
        unknown = [r for r in other if r.name not in manager.all_tasks]
        if unknown:
            raise _unknown(unknown, include_path)
        managers.append((manager, other))
    for manager, group in managers:
        for ref in group:
            try:
                loaded = _load_one(manager, ref, paths)
            except _MissingData as exc:
                missing.append((ref, exc.dataset))
                continue
            if not ref.pair and list(loaded) != [ref.name]:
                raise UserError(f"tasks: {ref.request!r} is a group of {len(loaded)} lm-eval tasks; the project splits "
                                f"single tasks only: name them one by one (e.g. {', '.join(sorted(loaded)[:3])})")
            tasks.update(loaded)
    if missing:
        names = ", ".join(f"{r.request} ({d})" if d else r.request for r, d in missing)
        raise UserError(
            f"tasks: the data of {names} is not on this machine (not in the Hugging Face datasets cache; nothing is "
            "downloaded); put each dataset in the cache (HF_DATASETS_CACHE, e.g. run lm_eval on those tasks once "
            "where the Hub is reachable) or give local task YAMLs with tasks.include_path=[DIR]")
    return tasks


class _MissingData(Exception):
    """A task's dataset is neither local nor in the datasets cache."""

    def __init__(self, dataset: str) -> None:
        super().__init__(dataset)
        self.dataset = dataset


_MISSING = re.compile(r"Couldn't reach '([^']+)'|OfflineModeIsEnabled|LocalEntryNotFoundError|"
                      r"Couldn't find cache for ([^\s]+)|Dataset '([^']+)' doesn't exist")


def _load_one(manager, ref: TaskRef, paths: list[str]) -> dict:
    """Load one task or group through the manager, turning task-folder failures into one-line UserErrors."""
    try:
        return dict(manager.load([ref.name])["tasks"])
    except UserError:
        raise
    except Exception as exc:  # a broken YAML or data file is the user's input, not our bug
        text = f"{type(exc).__name__}: {exc}"
        found = _MISSING.search(text)
        if found or isinstance(exc, ConnectionError):
            raise _MissingData(next((g for g in found.groups() if g), "") if found else "") from exc
        where = ref.name if not ref.local else _yaml_of(manager, ref.name) or paths[0]
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{where}: cannot load task {ref.name}: {msg}") from exc


def _yaml_of(manager, name: str) -> str | None:
    """The YAML file that defines a task in the manager's index, if known."""
    entry = getattr(manager, "task_index", {}).get(name)
    return str(entry.yaml_path) if entry is not None and getattr(entry, "yaml_path", None) else None


def validate(refs: Sequence[TaskRef], include_path: IncludePath = None) -> None:
    """Fail fast, before a model is loaded: every task loads here, with its data (all missing ones in one line)."""
    load_tasks(refs, include_path)


def _unknown(refs: Sequence[TaskRef], include_path: IncludePath) -> UserError:
    """UserError naming the unknown tasks and listing the local ones."""
    names = ", ".join(repr(r.request) for r in refs)
    return UserError(
        f"tasks: unknown task {names}; the include paths have: {', '.join(local_task_names(include_path))} "
        "(or name an lm-eval built-in task, or add its folder with tasks.include_path=[DIR])"
    )


@functools.lru_cache(maxsize=256)
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
