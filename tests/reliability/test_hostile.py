"""Hostile and unlucky inputs: non-UTF-8, FIFOs, huge files, YAML alias bombs, absurd layer counts, missing keys and
files, too many threads (one line, exit 2, before any model loads); SIGTERM (exit 143, the same command resumes);
a real full disk under safetensors; two exports racing for one folder."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers.fake_cli import main
from tests.reliability.helpers import (
    counted,
    env_for,
    make_models,
    run_cli,
    searched_world,
    study_of,
    tree_digest,
    write_config,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Fake models, a config and a stored study of 3 trials (no export/report)."""
    return searched_world(tmp_path_factory.mktemp("hostile"), "n_trials=3", "export=false", "report=false")


BOMB = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10))
BOMB = "l0: &l0 [x, x, x, x, x, x, x, x, x]\n" + BOMB
NOT_UTF8 = b"# caf\xe9 (latin-1)\nmerge_method: linear\n"


def _recipe(t: Path, w: dict, text: str | bytes | None = None) -> Path:
    path = t / "r.yaml"
    body = (f"merge_method: linear\nmodels:\n  - {{model: {w['models']['a']}, parameters: {{weight: 1}}}}\n"
            f"  - {{model: {w['models']['b']}, parameters: {{weight: 1}}}}\n")
    data = body.encode() if text is None else text if isinstance(text, bytes) else (body + text).encode()
    path.write_bytes(data)
    return path


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _broken_base(t: Path, w: dict, kind: str) -> Path:
    base = t / f"base_{kind}"
    shutil.copytree(w["models"]["base"], base)
    cfg = json.loads((base / "config.json").read_text())
    if kind == "no_layers":
        del cfg["num_hidden_layers"]
    elif kind == "huge_layers":
        cfg["num_hidden_layers"] = 10**9
    elif kind == "wrong_layers":
        cfg["num_hidden_layers"] = 5
    elif kind == "no_tokenizer":
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (base / name).unlink()
    elif kind == "fifo_config":
        (base / "config.json").unlink()
        _fifo(base / "config.json")
        return base
    elif kind == "fifo_shard":
        (base / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "shard.safetensors"}}))
        (base / "model.safetensors").unlink()
        _fifo(base / "shard.safetensors")
    (base / "config.json").write_text(json.dumps(cfg))
    return base


def _conf(t: Path, w: dict, extra: str | bytes) -> Path:
    path = t / "c.yaml"
    data = w["conf"].read_bytes()
    path.write_bytes(data + (extra if isinstance(extra, bytes) else extra.encode()))
    return path


def _search(w: dict, t: Path, *extra: str) -> list[str]:
    return ["search", f"conf={w['conf']}", f"out_dir={t / 'out'}", *extra]


def _base(w, t, kind):
    return _search(w, t, f"models.base={_broken_base(t, w, kind)}")


CASES = {
    "merge: recipe not UTF-8": (lambda w, t: ["merge", f"recipe={_recipe(t, w, NOT_UTF8)}", f"out={t / 'out'}"],
                                "not UTF-8 text"),
    "merge: recipe a FIFO": (lambda w, t: ["merge", f"recipe={_fifo(t / 'r.yaml')}", f"out={t / 'out'}"], "is a FIFO"),
    "merge: recipe of several MB": (lambda w, t: ["merge", f"recipe={_recipe(t, w, '#' * (3 << 20) + chr(10))}",
                                                  f"out={t / 'out'}"], "byte limit"),
    "merge: recipe with an alias bomb": (lambda w, t: ["merge", f"recipe={_recipe(t, w, 'evolve_merge:' + chr(10) + ''.join('  ' + line + chr(10) for line in BOMB.splitlines()))}",
                                                       f"out={t / 'out'}"], "aliases"),
    "merge: a model's config.json is a FIFO": (
        lambda w, t: ["merge", f"recipe={_recipe(t, w, ('merge_method: linear' + chr(10) + 'models: [{model: ' + str(_broken_base(t, w, 'fifo_config')) + ', parameters: {weight: 1}}]' + chr(10)).encode())}",
                      f"out={t / 'out'}"], "is a FIFO"),
    "merge: a shard index names a FIFO": (
        lambda w, t: ["merge", f"recipe={_recipe(t, w, ('merge_method: linear' + chr(10) + 'models: [{model: ' + str(_broken_base(t, w, 'fifo_shard')) + ', parameters: {weight: 1}}]' + chr(10)).encode())}",
                      f"out={t / 'out'}"], "not a regular file"),
    "search: conf not UTF-8": (lambda w, t: ["search", f"conf={_conf(t, w, NOT_UTF8)}"], "not UTF-8"),
    "search: conf with an alias bomb": (lambda w, t: ["search", f"conf={_conf(t, w, BOMB)}"], "aliases"),
    "search: threads=100000": (lambda w, t: _search(w, t, "threads=100000"), "threads"),
    "search: base without num_hidden_layers": (lambda w, t: _base(w, t, "no_layers"), "no num_hidden_layers"),
    "search: base with 10**9 layers": (lambda w, t: _base(w, t, "huge_layers"), "not an integer in [1, 1024]"),
    "search: base config and weights disagree on layers": (lambda w, t: _base(w, t, "wrong_layers"), "weights hold 3"),
    "search: base without tokenizer files": (lambda w, t: _base(w, t, "no_tokenizer"), "no tokenizer files"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_one_line_exit_2_before_any_model(case, world, tmp_path, monkeypatch, capsys):
    for k, v in env_for(world["models"]).items():
        monkeypatch.setenv(k, v)

    def refuse(*a, **k):
        raise AssertionError("a live model was built before the input was checked")

    monkeypatch.setattr("merge_core.live.build_live_model", refuse)
    make, needle = CASES[case]
    args = make(world, tmp_path)
    before = tree_digest(world["root"])
    capsys.readouterr()
    assert main(args) == 2  # a read blocking on a FIFO would hang here (the suite's timeout)
    err = "\n".join(x for x in capsys.readouterr().err.strip().split("\n") if not x.startswith("merging"))
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and needle in err, err
    assert "; " in err
    assert tree_digest(world["root"]) == before
    assert not (tmp_path / "out").exists()


# SIGTERM (docker stop, timeout, SLURM) during the 3rd evaluation of the run
_TERM = """
import tests.helpers.fake_eval as fe
_orig, _n = fe.FakeEvaluator.evaluate, [0]
def _evaluate(self):
    _n[0] += 1
    if _n[0] == 3:
        os.kill(os.getpid(), signal.SIGTERM)
    return _orig(self)
fe.FakeEvaluator.evaluate = _evaluate
"""


def test_sigterm_fails_the_trial_exit_143_and_the_same_command_resumes(tmp_path):
    models = make_models(tmp_path / "models")
    conf = write_config(tmp_path, models)
    args = ["search", f"conf={conf}", "n_trials=4", "export=false", "report=false"]
    first = run_cli(args, env_for(models), hook=_TERM)
    assert first.returncode == 143, first.stderr[-2000:]
    lines = first.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("terminated (SIGTERM)"), first.stderr[-2000:]
    study = study_of(conf)
    states = [t.state.name for t in study.get_trials()]
    assert "RUNNING" not in states and "FAIL" in states  # told failed at once, not left to the grace period
    second = run_cli(args, env_for(models))
    assert second.returncode == 0, second.stderr[-2000:]
    assert len(counted(study_of(conf))) == 4


def test_real_full_disk_under_safetensors_is_one_line_and_leaves_nothing(world, small_disk, monkeypatch, capsys):
    for k, v in env_for(world["models"]).items():
        monkeypatch.setenv(k, v)
    recipe = small_disk.parent / "r.yaml"
    _recipe(small_disk.parent, world)
    capsys.readouterr()
    assert main(["merge", f"recipe={recipe}", f"out={small_disk / 'm'}", "dtype=float32"]) == 2
    err = [x for x in capsys.readouterr().err.strip().split("\n") if not x.startswith("merging")]
    assert len(err) == 1 and "No space left on device" in err[0] and str(small_disk / "m") in err[0], err
    assert list(small_disk.iterdir()) == []
    assert main(["export", f"conf={world['conf']}", f"out={small_disk / 'best'}", "out_dtype=float32"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0], err
    assert list((small_disk / "best").iterdir()) == []  # no model, no recipe, no temp folder


def test_two_exports_racing_for_one_folder_end_consistent(world, tmp_path):
    """Two trials exported at once to one out: the recipe.yaml left belongs to the model left."""
    out = tmp_path / "best"
    procs = [subprocess.Popen([sys.executable, "-m", "tests.helpers.fake_cli", "export", f"conf={world['conf']}", f"trial={n}",
                               f"out={out}"], env=env_for(world["models"]), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for n in (0, 2)]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-2000:]
    recipe_trial = yaml.safe_load((out / "recipe.yaml").read_text())["evolve_merge"]["trial"]
    card = (out / "model" / "README.md").read_text()
    assert re.search(r"trial (\d+)", card).group(1) == str(recipe_trial)
    card_recipe = yaml.safe_load(card.split("```yaml\n", 1)[1].split("```", 1)[0])
    assert card_recipe["evolve_merge"]["trial"] == recipe_trial


def test_sigterm_handler_is_restored_after_main(world):
    before = signal.getsignal(signal.SIGTERM)
    main(["report", "conf=no_such"])
    assert signal.getsignal(signal.SIGTERM) is before
