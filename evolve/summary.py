"""The closing lines of `search` and `report`: where the study, recipe, model and report are, and what to run next."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

import yaml
from omegaconf import DictConfig

import eval_tasks
from evolve.storage_check import is_journal
from evolve.study import storage_url


def show(path: str | Path) -> str:
    """A path as a user types it: relative to the working directory when inside it, else absolute."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd())) or "."
    except ValueError:
        return str(path)


def _trial_of(recipe: Path) -> int | None:
    try:
        return yaml.safe_load(recipe.read_text(encoding="utf-8")).get("evolve_merge", {}).get("trial")
    except (OSError, yaml.YAMLError, AttributeError):
        return None


def _dashboard(cfg: DictConfig) -> str:
    url = storage_url(cfg)
    if url.startswith("sqlite:///"):
        return f"optuna-dashboard {shlex.quote('sqlite:///' + show(url[len('sqlite:///'):]))}"
    if is_journal(url):
        return f"optuna-dashboard {shlex.quote(show(url))}"
    return "optuna-dashboard STORAGE_URL   (the storage= of this study)"


def _study_location(cfg: DictConfig) -> str:
    url = storage_url(cfg)
    if url.startswith("sqlite:///"):
        return show(url[len("sqlite:///"):])
    if is_journal(url):
        return show(url)
    return f"study {cfg.study_name!r} in the storage= database"


def _lm_eval_line(cfg: DictConfig, model: str) -> str:
    """The lm-eval command that scores the exported model on the held-out split, as the report does."""
    names = [str(t) for t in cfg.tasks.names]
    local = {p.parent.name for p in eval_tasks.PATH.glob("*/*.yaml") if p.stem == p.parent.name}
    if all(n in local for n in names):
        tasks = ",".join(f"{n}_test" for n in names)
        return (f"lm_eval --model hf --model_args pretrained={model},dtype={cfg.dtype} --include_path "
                f"{shlex.quote(str(eval_tasks.PATH.resolve()))} --tasks {tasks}")  # absolute: works from any folder
    return (f"lm_eval --model hf --model_args pretrained={model},dtype={cfg.dtype} --tasks ... --samples ...   "
            "(the held-out document ids per task: report/splits.json)")


def closing_lines(cfg: DictConfig, conf_args: Sequence[str] | None = None) -> str:
    """Where this study's outputs are, then the next commands (`conf_args`: how the study was named, e.g. conf=demo)."""
    out = Path(cfg.out_dir)
    recipe, model, report = out / "best" / "recipe.yaml", out / "best" / "model", out / "report"
    args = " ".join(shlex.quote(a) for a in (conf_args or [f"conf={cfg.study_name}"]))
    lines = [f"study {cfg.study_name!r}, outputs:", f"  study   {_study_location(cfg)}"]
    if recipe.is_file():
        trial = _trial_of(recipe)
        lines.append(f"  recipe  {show(recipe)}" + (f"   (trial {trial})" if trial is not None else ""))
    if (model / "config.json").is_file():
        lines.append(f"  model   {show(model)}/")
    if (report / "results.md").is_file():
        pngs = ", ".join(sorted(p.name for p in report.glob("*.png")))
        lines.append(f"  report  {show(report)}/   (results.md, results.json{', ' + pngs if pngs else ''})")
    lines.append("next:")
    lines.append(f"  python -m evolve export {args} trial=N out=DIR     # write another trial's recipe and model")
    if (model / "config.json").is_file():
        m = shlex.quote(show(model))
        names = ",".join(str(t) for t in cfg.tasks.names)
        lines.append(f"  python -m evolve eval model={m} 'tasks=[{names}]' split=test")
        lines.append(f"  {_lm_eval_line(cfg, m)}")
    lines.append(f"  {_dashboard(cfg)}     # browse the trials (pip install optuna-dashboard)")
    return "\n".join(lines)
