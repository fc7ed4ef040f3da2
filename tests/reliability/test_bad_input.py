"""Bad input across the commands: one line naming the thing and the fix, exit 2, nothing (half-)written.

More kinds live beside their commands: tests/evolve/test_merge_cli.py (recipes, pickles, NaN weights, shapes),
test_config.py (override keys/types/ranges), test_eval_cli.py (missing folder, unknown task, empty data file).
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest

from evolve.cli import main as evolve_main
from merge_core.synthetic import make_checkpoint
from tests.helpers.fake_cli import main
from tests.reliability.helpers import dot_temps, env_for, make_models, write_config


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Fake models, a config, a stored study of 2 trials (no export/report), and broken copies of a model."""
    root = tmp_path_factory.mktemp("bad_input")
    models = make_models(root / "models")
    broken = {}
    for kind in ("garbled_config", "no_weights", "truncated", "architecture", "custom_code"):
        dst = broken[kind] = root / kind
        shutil.copytree(models["a"], dst)
        weights, config = dst / "model.safetensors", dst / "config.json"
        if kind == "garbled_config":
            config.write_text('{"model_type": "llama", ')
        elif kind == "no_weights":
            weights.unlink()
        elif kind == "truncated":
            weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        elif kind == "architecture":
            data = json.loads(config.read_text())
            config.write_text(json.dumps({**data, "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
        else:  # a folder that would run its own Python if trusted
            data = json.loads(config.read_text())
            config.write_text(json.dumps({**data, "auto_map": {"AutoModelForCausalLM": "evil.EvilForCausalLM"}}))
            (dst / "evil.py").write_text(f"open({str(root / 'PWNED')!r}, 'w')\n")
    broken["vocab"] = make_checkpoint(root / "vocab", like=None, layers=3, hidden=32, intermediate=64, heads=4,
                                      kv_heads=2, vocab=96, seed=3)
    conf = write_config(root, models)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env_for(models).items():
            mp.setenv(k, v)
        assert main(["search", f"conf={conf}", "n_trials=2", "export=false", "report=false"]) == 0
    return {"root": root, "models": models, "conf": conf, "broken": broken}


def _sources(w, kind):
    return f"models.sources=[{w['models']['a']},{w['broken'][kind]}]"


def _search(w: dict, t: Path) -> list[str]:
    """The start of a search command on the test world, writing into the fresh tmp folder."""
    return ["search", f"conf={w['conf']}", f"out_dir={t / 'out'}"]


# id -> (arguments, given the world and a fresh tmp folder; what the one line must say)
CASES = {
    "search: unknown conf name": (lambda w, t: ["search", "conf=no_such"], "conf=no_such: no such config"),
    "export: unknown conf name": (lambda w, t: ["export", "conf=no_such"], "conf=no_such: no such config"),
    "report: override of the wrong type": (lambda w, t: ["report", f"conf={w['conf']}", "n_trials=many"], "n_trials"),
    "prepare: config without a preparer": (lambda w, t: ["prepare", f"conf={w['conf']}"], "models.prepare is null"),
    "search: config.json not JSON": (
        lambda w, t: [*_search(w, t), _sources(w, "garbled_config")],
        "garbled_config/config.json: not valid JSON"),
    "search: no safetensors": (
        lambda w, t: [*_search(w, t), _sources(w, "no_weights")],
        "no model.safetensors"),
    "search: truncated safetensors": (
        lambda w, t: [*_search(w, t), _sources(w, "truncated")],
        "truncated/model.safetensors: not a readable safetensors file"),
    "search: other architecture": (
        lambda w, t: [*_search(w, t), _sources(w, "architecture")],
        "GPT2LMHeadModel"),
    "search: vocabulary mismatch": (
        lambda w, t: [*_search(w, t), _sources(w, "vocab")],
        "differ in vocab_size"),
    "search: unknown task": (
        lambda w, t: [*_search(w, t), "tasks.names=[toy_succ,no_such_task]"], "unknown task 'no_such_task'"),
    "search: storage URL of no known kind": (
        lambda w, t: [*_search(w, t), "storage=ftp://host/x"], "storage:"),
    "search: out_dir not writable (sysfs)": (
        lambda w, t: ["search", f"conf={w['conf']}", "out_dir=/sys/evolve_run"], "out_dir: cannot create /sys/"),
    "eval: model runs its own code": (
        lambda w, t: ["eval", f"model={w['broken']['custom_code']}", "tasks=[toy_succ]"], "auto_map"),
    "eval: truncated safetensors": (
        lambda w, t: ["eval", f"model={w['broken']['truncated']}", "tasks=[toy_succ]"], "not a readable safetensors"),
    "export: trial not a number": (lambda w, t: ["export", f"conf={w['conf']}", "trial=abc", f"out={t / 'out'}"],
                                   "trial: 'abc' is not `best` or a trial number"),
    "export: out is a file": (lambda w, t: ["export", f"conf={w['conf']}", f"out={t / 'file'}"], "is a file"),
    "export: out not writable (sysfs)": (
        lambda w, t: ["export", f"conf={w['conf']}", "out=/sys/evolve_best"], "/sys/evolve_best: cannot write"),
    "report: no stored study": (lambda w, t: ["report", f"conf={w['conf']}", f"out_dir={t / 'out'}"],
                                "no study 'fake'"),
    "merge: source with truncated safetensors": (lambda w, t: ["merge", f"recipe={_recipe(w, t)}", f"out={t / 'out'}"],
                                                 "not a readable safetensors"),
}
# cases run by the project's own evaluator (`python -m evolve`), not the fake world's
REAL_EVALUATOR = {"search: unknown task"}


def _recipe(w, t):
    path = t / "recipe.yaml"
    path.write_text(f"merge_method: linear\nmodels:\n  - {{model: {w['models']['a']}, parameters: {{weight: 1}}}}\n"
                    f"  - {{model: {w['broken']['truncated']}, parameters: {{weight: 1}}}}\n")
    return path


@pytest.mark.parametrize("case", list(CASES))
def test_one_line_exit_2_nothing_written(case, world, tmp_path, monkeypatch, capsys):
    for k, v in env_for(world["models"]).items():
        monkeypatch.setenv(k, v)
    (tmp_path / "file").write_text("keep me")
    make_args, needle = CASES[case]
    args = make_args(world, tmp_path)
    capsys.readouterr()
    assert (evolve_main if case in REAL_EVALUATOR else main)(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and needle in err, err
    assert "; " in err  # the fix follows the problem
    assert sorted(p.name for p in tmp_path.iterdir()) in (["file"], ["file", "recipe.yaml"])
    assert (tmp_path / "file").read_text() == "keep me"
    assert not (world["root"] / "PWNED").exists()


def test_disk_full_during_export_leaves_nothing(world, tmp_path, monkeypatch, capsys):
    for k, v in env_for(world["models"]).items():
        monkeypatch.setenv(k, v)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("merge_core.shards.save_file", full)  # the one shard writer
    out = tmp_path / "best"
    capsys.readouterr()
    assert main(["export", f"conf={world['conf']}", f"out={out}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No space left on device" in err and f"{out / 'model'}" in err
    assert not (out / "model").exists() and not (out / "recipe.yaml").exists() and not dot_temps(out)
