"""Scores already measured, so nothing is scored twice: the one score cache, in two stores.

In the study (its user attrs, so export, report and a resumed run agree without re-scoring):
- `trial_key(n)` -> a trial's dev+test scores (all dev documents + held-out test), shared by export and report;
- `rescore_key(n)` -> a trial's scores on all dev documents (the top-K selection, evolve.select);
- `recipe_key(recipe, cfg)` -> the dev+test scores of a report row that is not a trial (source, baseline).
Across studies (`<models.cache_dir>/scores/<score_key>.json`): report rows that do not depend on the search
(sources, untuned baselines), so a rerun with a fresh study scores only its evolved merge. That key covers
everything a score depends on: the recipe, the bytes of every model it reads, the eval tasks' files, the evaluation
settings, the evaluator and library versions.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from merge_core.writer import atomic_write_text

VERSION = 2  # 2: dev scores on every dev document; partitioned tasks (tasks.split)

Scores = dict[str, float]


def trial_key(number: int) -> str:
    """Study attr of a trial's dev (all documents) + test scores."""
    return f"scores:trial{number}"


def rescore_key(number: int) -> str:
    """Study attr of a trial's scores on all dev documents."""
    return f"devall:trial{number}"


def recipe_key(recipe: Any, cfg: Any) -> str:
    """Study attr of a non-trial recipe's dev + test scores: the recipe (no provenance), seed, tasks and split."""
    from merge_core.recipe import recipe_to_dict

    data = recipe_to_dict(recipe)
    data.pop("evolve_merge", None)
    t = cfg.tasks
    split = {k: t.split[k] for k in ("dev_size", "dev_fraction", "seed")}
    text = json.dumps([data, recipe.seed, list(t.names), [str(p) for p in t.include_path], split], sort_keys=True,
                      default=str)
    return "scores:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def in_study(study: Any, key: str, compute: Callable[[], Scores]) -> Scores:
    """The scores stored in the study's user attrs under `key`; on a miss computed, stored, and returned."""
    cached = study.user_attrs.get(key)
    if cached is not None:
        return dict(cached)
    scores = compute()
    study.set_user_attr(key, scores)
    return scores


def across_studies(folder: Path, key: str, compute: Callable[[], Scores], name: str) -> Scores:
    """The scores of `folder/<key>.json`; on a miss computed, stored (named `name`) and returned."""
    scores = load(folder, key)
    if scores is None:
        scores = compute()
        store(folder, key, scores, name)
    return scores


def _files_digest(named: Iterable[tuple[str, Path]], digest: Any = None) -> Any:
    """sha256 (new, or `digest` updated) over each file's name and bytes, in the order given."""
    digest = hashlib.sha256() if digest is None else digest
    for name, file in named:
        digest.update(name.encode() + b"\0" + file.read_bytes() + b"\0")
    return digest


def _task_files_digest(names: list[str]) -> dict[str, str]:
    """sha256 over every file of each local task folder (YAMLs, data, loaders); lm-eval built-ins are keyed by version."""
    import eval_tasks

    out = {}
    for name in names:
        folder = Path(eval_tasks.PATH) / name
        if not folder.is_dir():
            continue
        files = sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        named = [(str(f.relative_to(folder)), f) for f in files]
        named.append(("../loader.py", Path(eval_tasks.PATH) / "loader.py"))  # the task YAMLs' shared data loader
        out[name] = _files_digest(named).hexdigest()
    return out


def _include_digest(folders: list[Path]) -> dict[str, str]:
    """sha256 over every file of the user's task folders (tasks.include_path): a changed task means new scores."""
    out = {}
    for folder in folders:
        files = sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        out[str(folder.resolve())] = _files_digest((str(f.relative_to(folder)), f) for f in files).hexdigest()
    return out


def _small_files_digest(folders: list[Path]) -> str:
    """sha256 over the config and tokenizer files (not the weights) of the given model folders."""
    digest = hashlib.sha256()
    for folder in folders:
        if not folder.is_dir():
            digest.update(str(folder).encode())  # a hub id: its weights' hash stands for it
            continue
        files = [f for f in sorted(folder.iterdir()) if f.is_file() and f.suffix in (".json", ".txt", ".model", ".jinja")]
        _files_digest(((f.name, f) for f in files), digest)
    return digest.hexdigest()


def _code_digest() -> str:
    """sha256 over the merge library and the evaluator's source: changed merge or scoring code means new scores."""
    import evolve
    import merge_core

    files = sorted(Path(merge_core.__file__).parent.rglob("*.py"))
    files += [Path(evolve.__file__).parent / name for name in ("evaluate.py", "tasks.py")]
    return _files_digest((f.name, f) for f in files).hexdigest()


def score_key(recipe: Any, model_hashes: dict[str, str], cfg: Any, device: str, tokenizer_dir: Path,
              evaluator: str = "evolve.evaluate:Evaluator") -> str:
    """Content key of one recipe's dev+test scores under this config's evaluation settings and evaluator
    (`module:Class`, the name the key has always held for the project's Evaluator)."""
    import lm_eval
    import torch
    import transformers

    from merge_core.recipe import recipe_to_dict

    data = recipe_to_dict(recipe)
    data.pop("evolve_merge", None)
    t = cfg.tasks
    names = [str(n) for n in t.names]
    payload = {
        "version": VERSION,
        "recipe": data,
        "seed": recipe.seed,
        "weights": {m: model_hashes.get(m) for m in sorted(recipe.model_ids())},
        "tasks": names,
        "task_files": _task_files_digest(names),
        "include_path": _include_digest([Path(str(p)) for p in t.get("include_path") or []]),
        "split": {k: t.split[k] for k in ("dev_size", "dev_fraction", "seed")} if t.get("split") else None,
        "configs": _small_files_digest([Path(m) for m in sorted(recipe.model_ids())] + [Path(tokenizer_dir)]),
        "eval": {"limit": t.limit, "subset_seed": t.subset_seed, "test_limit": t.test_limit,
                 "batch_size": t.batch_size, "stages": [float(s) for s in t.stages], "dtype": str(cfg.dtype),
                 "device": device, "evaluator": evaluator},
        "code": _code_digest(),
        "libs": [getattr(lm_eval, "__version__", ""), torch.__version__, transformers.__version__],
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def load(folder: Path, key: str) -> dict[str, float] | None:
    """Cached scores for `key`, or None (a missing or unreadable entry is a miss)."""
    path = Path(folder) / f"{key}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    scores = data.get("scores") if isinstance(data, dict) else None
    if not isinstance(scores, dict) or not all(isinstance(v, (int, float)) for v in scores.values()):
        return None
    return {str(k): float(v) for k, v in scores.items()}


def store(folder: Path, key: str, scores: dict[str, float], name: str) -> None:
    """Write one entry atomically (a killed run leaves the old entry or none, never half a file)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / f"{key}.json", json.dumps({"name": name, "scores": scores}, indent=1) + "\n")
