"""The offline demo's models: SmolLM2-135M-Instruct plus one fine-tuned specialist per skill task, cached by manifest."""

from __future__ import annotations

import os
import time
from pathlib import Path

import yaml

import eval_tasks
from evolve.errors import UserError
from evolve.finetune import finetune
from evolve.smollm2 import convert_smollm2, read_manifest
from merge_core.files import files_sha256

TASKS = ("arith", "units")
# Chosen by a GPU sweep on the dev splits (docs/demo_prep.md): arith needs ~12 trainable layers and ~100 steps.
DEFAULTS = {"steps": 100, "lr": 5e-4, "batch_size": 16, "max_len": 40, "train_layers": 12}
TASKS_DIR = eval_tasks.PATH


class _TaskLoader(yaml.SafeLoader):
    """YAML loader that reads lm-eval's `!function` tags as plain strings."""


_TaskLoader.add_multi_constructor("!", lambda loader, suffix, node: loader.construct_scalar(node))


def task_prompt(task: str) -> tuple[str, str]:
    """(doc_to_text template, target_delimiter) of `eval_tasks/<task>/<task>.yaml`, so training sees the eval's prompt."""
    path = TASKS_DIR / task / f"{task}.yaml"
    if not path.is_file():
        raise UserError(f"models.prepare_options.tasks: no task file {path}; choose tasks that exist in {TASKS_DIR}")
    data = yaml.load(path.read_text(encoding="utf-8"), Loader=_TaskLoader)
    return data["doc_to_text"], data.get("target_delimiter", " ")


def specialist_manifest(task: str, base: Path, seed: int, hyper: dict) -> dict:
    """Everything a specialist depends on: train data, base weights, prompt and hyper-parameters."""
    prompt, delimiter = task_prompt(task)
    train = TASKS_DIR / task / "data" / "train.jsonl"
    if not train.is_file():
        raise UserError(f"{train}: missing train split; run python {TASKS_DIR / task / 'generate.py'}")
    return {
        "kind": "specialist", "task": task, "seed": seed, "hyper": hyper, "prompt": prompt, "delimiter": delimiter,
        "train_sha256": files_sha256([train]), "base_weights_sha256": (read_manifest(base) or {}).get("weights_sha256"),
    }


def prepare_demo(
    cache_dir: Path, *, seed: int = 0, progress: bool = True, tasks: list[str] | tuple[str, ...] = TASKS, **options
) -> dict[str, Path]:
    """{"base": SmolLM2 folder, <task>: specialist folder, ...}; each is rebuilt only when its manifest inputs change."""
    unknown = set(options) - set(DEFAULTS) - {"limit", "device", "per_task"}
    if unknown:
        raise UserError(f"models.prepare_options: unknown key(s) {', '.join(sorted(unknown))}; "
                        f"use {', '.join(sorted(DEFAULTS))}, limit, device, per_task")
    per_task = dict(options.get("per_task") or {})
    for task, override in per_task.items():
        if task not in tasks or not isinstance(override, dict) or set(override) - set(DEFAULTS):
            raise UserError(f"models.prepare_options.per_task.{task}: must map a prepared task ({', '.join(tasks)}) "
                            f"to overrides of {', '.join(sorted(DEFAULTS))}")
    hyper = {**DEFAULTS, **{k: v for k, v in options.items() if k in DEFAULTS}, "limit": options.get("limit")}
    device = options.get("device", "cpu")
    bad = [k for k in ("steps", "batch_size", "max_len", "train_layers") if not (isinstance(hyper[k], int) and hyper[k] >= 1)]
    if bad or not float(hyper["lr"]) > 0:
        raise UserError(f"models.prepare_options: {', '.join(bad) or 'lr'} must be positive; e.g. steps=100 lr=5e-4")
    cache_dir = Path(cache_dir)
    manifests = {}
    for task in tasks:  # validate every task before the slow conversion
        task_prompt(task)
    if progress:
        plan = announce(cache_dir, tasks, hyper, per_task, seed, device)
        if plan:
            print(plan, flush=True)
    base = convert_smollm2(cache_dir, progress=progress)
    out: dict[str, Path] = {"base": base}
    for task in tasks:
        task_hyper = {**hyper, **per_task.get(task, {})}
        manifests[task] = specialist_manifest(task, base, seed, task_hyper)
        folder = cache_dir / task
        if read_manifest(folder) == manifests[task]:
            out[task] = folder
            continue
        start = time.time()
        out[task] = finetune(
            base, TASKS_DIR / task / "data" / "train.jsonl", folder, seed=seed, progress=progress,
            prompt=manifests[task]["prompt"], delimiter=manifests[task]["delimiter"], manifest=manifests[task],
            device=device, **task_hyper,
        )
        if progress:
            print(f"specialist {task}: {out[task]} ({time.time() - start:.0f} s)")
    return out


# Measured on a quiet 2-core CPU VM (docs/results.md): GGUF -> HF ~60 s, fine-tuning ~2.8 s per step.
CONVERT_SECONDS, STEP_SECONDS, MEASURED_CORES = 60.0, 2.8, 2


def announce(cache_dir: Path, tasks, hyper: dict, per_task: dict, seed: int, device: str) -> str:
    """One line saying which demo models will be made (those not cached) and roughly how long; "" when all are cached."""
    base_cached = read_manifest(cache_dir / "base") is not None
    todo = []
    for task in tasks:
        manifest = read_manifest(cache_dir / task)
        if not base_cached or manifest is None or manifest.get("hyper") != {**hyper, **per_task.get(task, {})} \
                or manifest.get("seed") != seed:
            todo.append((task, int({**hyper, **per_task.get(task, {})}["steps"])))
    if base_cached and not todo:
        return ""
    what = ([] if base_cached else ["SmolLM2-135M-Instruct base (GGUF -> HF folder)"]) + \
        [f"specialist {t} ({steps} fine-tuning steps)" for t, steps in todo]
    if str(device).startswith("cuda"):
        when = "a few minutes on a GPU"
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        seconds = (0 if base_cached else CONVERT_SECONDS) + STEP_SECONDS * sum(s for _, s in todo)
        seconds *= MEASURED_CORES / max(1, min(cores, 8))  # past a few cores a 135M model gains little
        when = f"roughly {max(1, round(seconds / 60))} min on this machine's {cores} CPU core(s)"
    return (f"preparing the demo models into {cache_dir} (once; later runs reuse them): {', '.join(what)}; {when}")
