"""kill -9 during export (weights, recipe) and during the report: the same command again finishes the job.

(kill -9 during a trial, with the trial retried: tests/evolve/test_search.py and test_workers.py here.)
"""

from __future__ import annotations

import json

import yaml

from merge_core.writer import CARD_MARKER
from tests.reliability.helpers import counted, dot_temps, env_for, make_models, run_cli, study_of, write_config

# Each hook SIGKILLs the process at one point of the export/report; nothing after it runs, no cleanup either.
_KILL_AT_WEIGHTS = ("import merge_core.writer as w\n"
                    "w._write_metadata = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)")


def _kill_at_rename_of(name: str) -> str:
    """A hook killing the process just before a temp file is renamed onto `name`."""
    return ("_replace = os.replace\n"
            "def _kill(src, dst, *a, **k):\n"
            f"    if str(dst).endswith({name!r}):\n"
            "        os.kill(os.getpid(), signal.SIGKILL)\n"
            "    return _replace(src, dst, *a, **k)\n"
            "os.replace = _kill")


def test_kill9_in_export_and_report_then_the_same_command_finishes(tmp_path):
    models = make_models(tmp_path / "models")
    path = write_config(tmp_path, models)
    args, env = ["search", f"conf={path}", "n_trials=2"], env_for(models)
    best, report = tmp_path / "run" / "best", tmp_path / "run" / "report"

    # 1. killed while the weights are written: nothing at best/model, the partial folder is hidden
    res = run_cli(args, env, _KILL_AT_WEIGHTS)
    assert res.returncode == -9, res.stderr[-2000:]
    assert len(counted(study_of(path))) == 2
    assert not (best / "model").exists() and not (best / "recipe.yaml").exists()
    assert [p.name.split("-")[0] for p in dot_temps(best)] == [".model.partial"]

    # 2. same command, killed just before recipe.yaml is renamed into place: the model is whole, the leftover gone
    res = run_cli(args, env, _kill_at_rename_of("recipe.yaml"))
    assert res.returncode == -9, res.stderr[-2000:]
    assert CARD_MARKER in (best / "model" / "README.md").read_text()
    assert json.loads((best / "model" / "config.json").read_text())["tie_word_embeddings"] is True
    assert not (best / "recipe.yaml").exists()
    assert [p.name.startswith(".recipe.yaml.") and p.name.endswith(".tmp") for p in dot_temps(best)] == [True]

    # 3. same command, killed while a report plot is renamed into place: the tables are whole JSON/markdown
    res = run_cli(args, env, _kill_at_rename_of("history.png"))
    assert res.returncode == -9, res.stderr[-2000:]
    assert yaml.safe_load((best / "recipe.yaml").read_text())["evolve_merge"]["trial"] == study_of(path).best_trial.number
    assert [r["kind"] for r in json.loads((report / "results.json").read_text())][0] == "evolved"
    assert not (report / "history.png").exists() and not dot_temps(best)
    assert [p.name.startswith(".history.png.") for p in dot_temps(report)] == [True]

    # 4. same command, no kill: everything in place, no temp left, no trial lost or added
    res = run_cli(args, env)
    assert res.returncode == 0, res.stderr[-2000:]
    for rel in ("best/recipe.yaml", "best/model/model.safetensors", "report/results.md", "report/history.png",
                "report/recipe_heatmap.png"):
        assert (tmp_path / "run" / rel).is_file(), rel
    assert not dot_temps(best, best / "model", report)
    study = study_of(path)
    assert len(counted(study)) == 2 == len(study.get_trials())
