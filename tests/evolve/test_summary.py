"""The closing lines of a search: the lm-eval command they print works from any working directory."""

from __future__ import annotations

import shlex

import eval_tasks
from evolve.config import load_config
from evolve.summary import _lm_eval_line


def test_the_lm_eval_line_names_eval_tasks_by_an_absolute_path(tmp_path, monkeypatch):
    cfg, _ = load_config(["conf=tiny", f"out_dir={tmp_path}"])
    monkeypatch.chdir(eval_tasks.PATH.parent)  # inside the checkout, where a relative path would be printed
    words = shlex.split(_lm_eval_line(cfg, "runs/tiny/best/model"))
    folder = words[words.index("--include_path") + 1]
    assert folder == str(eval_tasks.PATH.resolve())
    assert words[words.index("--tasks") + 1] == ",".join(f"{t}_test" for t in cfg.tasks.names)
