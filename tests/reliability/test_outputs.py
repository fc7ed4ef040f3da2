"""No output may hold an input (merge, export, eval, search), and merged tensors are finite or nothing is written:
each refusal is one line, exit 2, and every file under the test folder is byte-identical before and after."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.helpers.fake_cli import main
from tests.reliability.helpers import counted, env_for, make_models, study_of, tree_digest, write_config


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Fake models, an evolve-merged model (ours: replaceable by merge), a finished first study with its export."""
    root = tmp_path_factory.mktemp("outputs")
    models = make_models(root / "models")
    recipe = root / "linear.yaml"
    recipe.write_text(yaml.safe_dump({"merge_method": "linear", "models": [
        {"model": str(models["a"]), "parameters": {"weight": 1.0}},
        {"model": str(models["b"]), "parameters": {"weight": 1.0}}]}))
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env_for(models).items():
            mp.setenv(k, v)
        assert main(["merge", f"recipe={recipe}", f"out={root / 'merged'}"]) == 0
        conf = write_config(root, models)
        assert main(["search", f"conf={conf}", "n_trials=2", "report=false"]) == 0
    return {"root": root, "models": models, "recipe": recipe, "conf": conf}


def _recipe(tmp: Path, data: dict) -> Path:
    path = tmp / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _second_study(w, tmp: Path, out_dir: Path) -> Path:
    """A config whose first source is the first study's exported best/model."""
    text = w["conf"].read_text().replace(f"out_dir: {w['root'] / 'run'}", f"out_dir: {out_dir}")
    text = text.replace(f"sources: [{w['models']['a']},", f"sources: [{w['root'] / 'run' / 'best' / 'model'},")
    text = text.replace("study_name: fake", "study_name: second")
    path = tmp / "second.yaml"
    path.write_text(text)
    return path


# id -> (arguments given the world and a fresh tmp folder, what the one line says)
CASES = {
    "merge: out is a source (an earlier output of ours)": (
        lambda w, t: ["merge", f"recipe={_recipe(t, {'merge_method': 'linear', 'models': [{'model': str(w['root'] / 'merged'), 'parameters': {'weight': 1}}, {'model': str(w['models']['a']), 'parameters': {'weight': 1}}]})}",
                      f"out={w['root'] / 'merged'}"], "is model"),
    "merge: out lies inside a source": (
        lambda w, t: ["merge", f"recipe={w['recipe']}", f"out={w['models']['a'] / 'merged'}"], "lies inside model"),
    "merge: out lies inside the tokenizer source": (
        lambda w, t: ["merge", f"recipe={_recipe(t, {'merge_method': 'linear', 'tokenizer_source': str(w['models']['base']), 'models': [{'model': str(w['models']['a']), 'parameters': {'weight': 1}}]})}",
                      f"out={w['models']['base'] / 'sub'}"], "lies inside tokenizer_source"),
    "merge: out contains the recipe": (
        lambda w, t: ["merge", f"recipe={_copy(w['recipe'], w['root'] / 'merged' / 'r.yaml')}", f"out={w['root'] / 'merged'}"],
        "contains the recipe"),
    "export: out/model is the second study's source": (
        lambda w, t: ["export", f"conf={w['conf']}", "trial=1", f"out={w['root'] / 'run' / 'best'}",
                      f"models.sources=[{w['root'] / 'run' / 'best' / 'model'},{w['models']['b']}]"],
        "models.sources[0]"),
    "export: out is a source folder": (
        lambda w, t: ["export", f"conf={w['conf']}", f"out={w['models']['a']}"], "lies inside models.sources[0]"),
    "search: out_dir is a source folder": (
        lambda w, t: ["search", f"conf={w['conf']}", f"out_dir={w['models']['a']}"], "out_dir: "),
    "search: out_dir/best holds the source (same out_dir as the first study)": (
        lambda w, t: ["search", f"conf={_second_study(w, t, w['root'] / 'run')}"], "best contains models.sources[0]"),
    "eval: out is the model's own config.json": (
        lambda w, t: ["eval", f"model={w['root'] / 'merged'}", "tasks=[toy_succ]", f"out={w['root'] / 'merged' / 'config.json'}"],
        "was not written by evolve eval"),
    "eval: out is some existing file": (
        lambda w, t: ["eval", f"model={w['root'] / 'merged'}", "tasks=[toy_succ]", f"out={w['recipe']}"],
        "was not written by evolve eval"),
    "eval: out is a folder": (
        lambda w, t: ["eval", f"model={w['root'] / 'merged'}", "tasks=[toy_succ]", f"out={w['root'] / 'models'}"],
        "is a folder"),
    "merge: weight .inf": (
        lambda w, t: ["merge", f"recipe={_text(t, 'merge_method: linear', w, '.inf')}", f"out={t / 'out'}"],
        "not a finite number"),
    "merge: slerp t outside [0, 1]": (
        lambda w, t: ["merge", f"recipe={_slerp(t, w, 1e30)}", f"out={t / 'out'}"], "outside [0, 1]"),
    "merge: merged tensor overflows the output dtype": (
        lambda w, t: ["merge", f"recipe={_text(t, 'merge_method: task_arithmetic', w, '1.0e+30', base=True)}",
                      f"out={t / 'out'}", "dtype=float16"], "has NaN or inf values"),
    "search: searched bounds outside the parameter's range": (
        lambda w, t: ["search", f"conf={w['conf']}", f"out_dir={t / 'o'}", "method.search.density.high=2"],
        "method.search.density"),
}


def _copy(src: Path, dst: Path) -> Path:
    shutil.copyfile(src, dst)
    return dst


def _text(t: Path, head: str, w: dict, weight: str, base: bool = False) -> Path:
    path = t / "r.yaml"
    lines = [head] + ([f"base_model: {w['models']['base']}"] if base else []) + ["models:"]
    lines += [f"  - {{model: {w['models'][k]}, parameters: {{weight: {weight}}}}}" for k in ("a", "b")]
    path.write_text("\n".join(lines) + "\n")
    return path


def _slerp(t: Path, w: dict, value: float) -> Path:
    return _recipe(t, {"merge_method": "slerp", "base_model": str(w["models"]["base"]),
                       "models": [{"model": str(w["models"]["base"])}, {"model": str(w["models"]["a"])}],
                       "parameters": {"t": value}})


@pytest.mark.parametrize("case", list(CASES))
def test_refused_in_one_line_and_nothing_changes(case, world, tmp_path, monkeypatch, capsys):
    for k, v in env_for(world["models"]).items():
        monkeypatch.setenv(k, v)
    make, needle = CASES[case]
    args = make(world, tmp_path)
    before, before_t = tree_digest(world["root"]), tree_digest(tmp_path)
    capsys.readouterr()
    assert main(args) == 2
    # merge's progress bar (stderr) may precede the line
    err = "\n".join(x for x in capsys.readouterr().err.strip().split("\n") if not x.startswith("merging"))
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and needle in err, err
    assert "; " in err
    assert tree_digest(world["root"]) == before
    assert tree_digest(tmp_path) == before_t and not (tmp_path / "out").exists()
    for leftover in (world["root"] / "merged" / "r.yaml",):
        leftover.unlink(missing_ok=True)


def test_eval_replaces_only_its_own_results(world, tmp_path, monkeypatch):
    """A results file `evolve eval` wrote may be rewritten by the same command (a rerun)."""
    from evolve.commands import eval as eval_cmd

    out = tmp_path / "scores.json"
    out.write_text(json.dumps({"written_by": eval_cmd.WRITTEN_BY, "scores": {}}))
    eval_cmd.check_eval_out(out)  # ours: accepted
    out.write_text(json.dumps({"scores": {}}))
    with pytest.raises(Exception, match="not written by evolve eval"):
        eval_cmd.check_eval_out(out)


def test_a_non_finite_candidate_fails_its_trial_and_the_search_goes_on(world, tmp_path, monkeypatch):
    """task_arithmetic with a huge weight range on a float16 live model: overflowing candidates fail by name."""
    for k, v in env_for(world["models"]).items():
        monkeypatch.setenv(k, v)
    conf = write_config(tmp_path, world["models"])
    args = ["search", f"conf={conf}", "n_trials=4", "export=false", "report=false", "method=task_arithmetic",
            "method.search.weight.low=0", "method.search.weight.high=1e30", "dtype=float16",
            "max_failures_in_row=10", "optimizer=random"]
    assert main(args) == 0
    study = study_of(conf)
    reasons = [t.user_attrs.get("fail_reason", "") for t in counted(study)]
    assert len(counted(study)) == 4
    assert any(r.startswith("FloatingPointError: merged tensor model.") and "NaN or inf" in r for r in reasons), reasons
