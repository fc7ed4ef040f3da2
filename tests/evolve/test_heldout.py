"""Held-out for every task: the seeded partition, include_path tasks, test documents never searched, top-K selection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from evolve.errors import UserError
from evolve.splits import SplitRule
from tests.evolve.flat_task import TASK, write_flat_task

REPO = Path(__file__).resolve().parents[2]


def test_partition_is_disjoint_complete_sized_and_seeded() -> None:
    rule = SplitRule(dev_size=300, dev_fraction=0.5, seed=0)
    dev, test = rule.partition("arc_easy", 2376)
    assert len(dev) == 300 and len(test) == 2076 and not set(dev) & set(test)
    assert sorted(dev + test) == list(range(2376)) and dev == sorted(dev) and test == sorted(test)
    assert rule.partition("arc_easy", 2376) == (dev, test)
    assert SplitRule(300, 0.5, seed=1).partition("arc_easy", 2376)[0] != dev  # the seed matters
    assert rule.partition("gsm8k", 2376)[0] != dev  # so does the task: tasks do not share one pattern
    assert len(SplitRule(500, 0.5).partition("t", 100)[0]) == 50  # capped by the fraction
    assert len(SplitRule(500, 0.01).partition("t", 10)[0]) == 1 and len(SplitRule(500, 0.5).partition("t", 10)[1]) == 5
    with pytest.raises(UserError, match="at least 2"):
        rule.partition("t", 1)


def test_partition_is_the_same_in_another_process() -> None:
    """No dependence on hash randomisation or RNG state: a fresh interpreter draws the same ids."""
    code = "from evolve.splits import SplitRule; print(SplitRule(40, 0.3, 7).partition('flat_succ', 360)[0])"
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == SplitRule(40, 0.3, 7).partition("flat_succ", 360)[0]


def test_resolve_keys_pairs_partitioned_and_builtin_tasks(tmp_path: Path) -> None:
    from evolve.tasks import resolve

    flat = write_flat_task(tmp_path / "mytasks")
    refs = {r.request: r for r in resolve(["toy_succ", TASK, "arc_easy"], include_path=[flat])}
    assert refs["toy_succ"].pair and refs["toy_succ"].key == "toy_succ_dev" and not refs["toy_succ"].builtin
    assert not refs[TASK].pair and refs[TASK].local and refs[TASK].key == f"{TASK}_dev"
    assert not refs["arc_easy"].pair and refs["arc_easy"].builtin and refs["arc_easy"].key == "arc_easy_dev"
    test = {r.request: r.key for r in resolve([TASK, "toy_succ"], "test", include_path=[flat], allow_test=True)}
    assert test == {TASK: f"{TASK}_test", "toy_succ": "toy_succ_test"}
    with pytest.raises(UserError, match="held out"):
        resolve([TASK], "test", include_path=[flat])
    with pytest.raises(UserError, match="include_path"):
        resolve([TASK], include_path=[tmp_path / "nowhere"])


def test_evaluator_scores_only_its_split_and_limit_draws_from_dev(tmp_path: Path, tiny_models, monkeypatch) -> None:
    """Every document a dev evaluator scores (limit, seeded subset, stages) is a dev id; the test one only test ids."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evolve.evaluate import Evaluator

    flat = write_flat_task(tmp_path / "mytasks")
    log = tmp_path / "docs.log"
    monkeypatch.setenv("EVOLVE_DOC_LOG", str(log))
    model = AutoModelForCausalLM.from_pretrained(tiny_models["base"], dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny_models["base"])
    rule = SplitRule(dev_size=100, dev_fraction=0.5, seed=3)
    dev_ids, test_ids = rule.partition(TASK, 360)
    ev = Evaluator(model, tok, [TASK], include_path=[flat], device="cpu", limit=24, subset_seed=1,
                   stages=[0.5, 1.0], split_rule=rule)
    assert set(ev.order[f"{TASK}_dev"]) <= set(dev_ids) and len(ev.order[f"{TASK}_dev"]) == 24
    results = list(ev.evaluate_staged())
    assert [r.n_items[f"{TASK}_dev"] for r in results] == [12, 24]
    seen = [json.loads(x) for x in log.read_text().split()]
    assert len(seen) == 24 and set(seen) == set(ev.order[f"{TASK}_dev"])  # the fixture's ids are the doc indices
    assert ev.splits[TASK]["dev"] == dev_ids and ev.splits[TASK]["test"] == test_ids
    log.unlink()
    test = Evaluator(model, tok, [TASK], split="test", allow_test=True, include_path=[flat], device="cpu",
                     split_rule=rule)
    scores = test.evaluate().scores
    assert list(scores) == [f"{TASK}_test"]
    assert sorted(json.loads(x) for x in log.read_text().split()) == test_ids


def test_heldout_text_labels_builtins_and_prints_one_command_per_folder(tmp_path: Path) -> None:
    from evolve.report import heldout_text

    cfg = OmegaConf.create({"out_dir": str(tmp_path / "run"), "out_dtype": "bfloat16",
                            "tasks": {"include_path": [], "test_limit": None}})
    splits = {"arc_easy": {"lm_eval_task": "arc_easy", "dev": [1, 2], "test": [0, 3, 4], "split_by": "evolve",
                           "builtin": True},
              "units": {"lm_eval_task": {"dev": "units_dev", "test": "units_test"}, "dev": [0], "test": [0, 1],
                        "split_by": "eval_tasks", "builtin": False}}
    text = heldout_text(cfg, splits, tmp_path / "run" / "report")
    assert "3 test documents of `arc_easy`" in text and "built-in benchmark" in text
    cmds = [line.strip() for line in text.splitlines() if line.strip().startswith("lm_eval ")]
    assert len(cmds) == 2
    assert any("--tasks arc_easy --samples" in c and "--include_path" not in c for c in cmds)
    assert any("--include_path" in c and "--tasks units_test" in c and "--samples" not in c for c in cmds)


@pytest.mark.slow  # a tiny search (about a minute) and one run of the lm-eval CLI (about 20 s of indexing)
def test_search_on_a_flat_include_path_task_holds_out_and_reproduces(tmp_path: Path, toy_models, monkeypatch) -> None:
    """conf=tiny with a flat task in tasks.include_path: the search scores dev ids only; lm_eval --samples on
    best/model gives the report's <task>_test exactly; the card and mergekit_config.yml follow the conventions."""
    from evolve import export as export_mod
    from evolve.config import load_config
    from evolve.pipeline import run_search

    flat = write_flat_task(tmp_path / "mytasks")
    search_log, heldout_log = tmp_path / "search.log", tmp_path / "heldout.log"
    monkeypatch.setenv("EVOLVE_DOC_LOG", str(search_log))
    real_export = export_mod.export_trial

    def export_after_search(*args, **kwargs):  # the search and its top-K selection are over: log apart from here on
        os.environ["EVOLVE_DOC_LOG"] = str(heldout_log)
        return real_export(*args, **kwargs)

    monkeypatch.setattr(export_mod, "export_trial", export_after_search)
    out = tmp_path / "run"
    cfg, _ = load_config(["conf=tiny", f"out_dir={out}", "n_trials=5", "progress=false", "tasks.limit=40",
                          "tasks.subset_seed=0", "tasks.stages=[0.5,1.0]", "select.top_k=3",
                          f"models.cache_dir={Path(toy_models['base']).parent}",
                          f"tasks.include_path=[{flat}]", f"tasks.names=[toy_succ,{TASK}]"])
    study = run_search(cfg)

    splits = json.loads((out / "report" / "splits.json").read_text())
    dev, test = splits[TASK]["dev"], splits[TASK]["test"]
    assert splits[TASK]["lm_eval_task"] == TASK and splits[TASK]["split_by"] == "evolve"
    assert not set(dev) & set(test) and sorted(dev + test) == list(range(360))
    assert splits["toy_succ"]["split_by"] == "eval_tasks" and len(splits["toy_succ"]["test"]) == 240
    searched = {json.loads(x) for x in search_log.read_text().split()}
    assert searched == set(dev)  # trials scored a 40-document subset of dev, the top-K re-scoring all of dev
    assert set(test) <= {json.loads(x) for x in heldout_log.read_text().split()}

    rows = json.loads((out / "report" / "results.json").read_text())
    evolved = next(r for r in rows if r["kind"] == "evolved")
    assert {f"{TASK}_dev", f"{TASK}_test", "toy_succ_dev", "toy_succ_test"} <= set(evolved["scores"])
    selection = study.user_attrs["selection"]
    assert evolved["name"] == f"evolved (trial {selection['pick']})" and len(selection["candidates"]) == 3
    assert study.metric_names == ["combined_dev"]
    md = (out / "report" / "results.md").read_text()
    assert "re-scored dev (all documents)" in md and f"{len(test)} test documents of `{TASK}`" in md

    model = out / "best" / "model"
    card = (model / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["tags"] == ["merge", "mergekit", "evolve-merge"] and front["library_name"] == "transformers"
    assert "base_model" not in front  # local folders are named in the text, not as Hub ids
    assert "test (held out)" in card and "| acc |" in card
    assert yaml.safe_load((model / "mergekit_config.yml").read_text())["merge_method"] == cfg.method.name

    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("EVOLVE_DOC_LOG")
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={model},dtype=float32",
           "--device", "cpu", "--batch_size", "8", "--include_path", str(flat), "--tasks", TASK,
           "--samples", json.dumps({TASK: test}), "--output_path", str(tmp_path / "lm_eval_out")]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(next((tmp_path / "lm_eval_out").rglob("results_*.json")).read_text())["results"]
    assert results[TASK]["acc,none"] == pytest.approx(evolved["scores"][f"{TASK}_test"], abs=1e-9)


@pytest.mark.slow  # lm-eval indexes its built-in task YAMLs (about 20 s of CPU)
def test_llama32_offline_names_every_missing_task_before_any_model(tmp_path: Path) -> None:
    """Local model folders that are not even models: the run stops at the tasks, so no model was opened."""
    base, src = tmp_path / "base", tmp_path / "src"
    base.mkdir()
    src.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_DATASETS_CACHE=str(tmp_path / "empty_cache"))
    env.pop("HF_DATASETS_OFFLINE", None)  # the CLI itself must not reach for the Hub
    env.pop("HF_HUB_OFFLINE", None)
    proc = subprocess.run([sys.executable, "-m", "evolve", "search", "conf=llama32", f"models.base={base}",
                           f"models.sources=[{src}]", f"out_dir={tmp_path / 'run'}"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Retrying" not in proc.stderr, proc.stderr[-2000:]
    assert all(t in lines[0] for t in ("arc_easy", "hellaswag", "gsm8k")) and "tasks.include_path" in lines[0]
    assert not (tmp_path / "run").exists()


def test_eval_command_takes_a_flat_include_path_task(tmp_path: Path, tiny_models) -> None:
    """`evolve eval include_path=[DIR]` runs a flat task YAML (as `lm_eval --include_path DIR` does) on its test ids."""
    from evolve.cli import main

    flat = write_flat_task(tmp_path / "mytasks")
    out = tmp_path / "eval.json"
    assert main(["eval", f"model={tiny_models['base']}", f"tasks=[{TASK}]", f"include_path=[{flat}]", "split=test",
                 f"out={out}", "device=cpu"]) == 0
    data = json.loads(out.read_text())
    assert list(data["scores"]) == [f"{TASK}_test"] and data["n_items"][f"{TASK}_test"] == 180


def test_model_card_front_matter_follows_hub_conventions(tmp_path: Path, tiny_models) -> None:
    """Hub ids only in base_model, the base's license carried over, the recipe as mergekit_config.yml."""
    import shutil

    from merge_core.recipe import parse_recipe
    from merge_core.sources import Sources
    from merge_core.writer import is_hub_id, model_card

    base = tmp_path / "base"
    shutil.copytree(tiny_models["base"], base)
    (base / "README.md").write_text("---\nlicense: llama3.2\n---\n# base\n")
    recipe = parse_recipe({"merge_method": "task_arithmetic", "base_model": str(base),
                           "models": [{"model": str(tiny_models["ft_a"]), "parameters": {"weight": 1.0}}]})
    card = model_card(recipe, Sources.open(recipe))
    front = yaml.safe_load(card.split("---")[1])
    assert front == {"license": "llama3.2", "library_name": "transformers", "tags": ["merge", "mergekit", "evolve-merge"]}
    assert str(tiny_models["ft_a"]) in card
    assert is_hub_id("meta-llama/Llama-3.2-1B") and not is_hub_id(str(base)) and not is_hub_id("./x/y")
