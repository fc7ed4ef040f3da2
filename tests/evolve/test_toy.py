"""The tiny world: cached preparation, loadable Llama-3.2-shaped folders, specialists that really learned their skill."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from evolve import toy
from merge_core.errors import UserError

TINY = {"layers": 1, "hidden": 16, "base_steps": 2, "steps": 2, "batch_size": 4}


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k).clone() for k in f.keys()}


def test_prepare_is_cached_and_rebuilds_on_change(tmp_path: Path) -> None:
    first = toy.prepare(tmp_path, progress=False, **TINY)
    stamps = {n: (p / "model.safetensors").stat().st_mtime_ns for n, p in first.items()}
    t0 = time.perf_counter()
    again = toy.prepare(tmp_path, progress=False, **TINY)
    assert time.perf_counter() - t0 < 2.0
    assert again == first
    assert {n: (p / "model.safetensors").stat().st_mtime_ns for n, p in again.items()} == stamps

    changed = toy.prepare(tmp_path, progress=False, **{**TINY, "steps": 3})
    assert json.loads((tmp_path / "manifest.json").read_text())["key"]["options"]["steps"] == 3
    assert (changed["succ"] / "model.safetensors").stat().st_mtime_ns != stamps["succ"]
    assert not list(tmp_path.glob(".build-*"))


def test_prepare_is_deterministic_and_heals_a_damaged_cache(tmp_path: Path) -> None:
    folders = toy.prepare(tmp_path, progress=False, **TINY)
    before = _weights(folders["upper"])
    (folders["upper"] / "model.safetensors").write_bytes(b"truncated")
    after = _weights(toy.prepare(tmp_path, progress=False, **TINY)["upper"])
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("options", [{"hiden": 64}, {"steps": 0}, {"layers": 1.5}, {"hidden": 30, "heads": 4}])
def test_bad_options_are_user_errors(tmp_path: Path, options: dict) -> None:
    with pytest.raises(UserError, match="prepare_options"):
        toy.prepare(tmp_path, progress=False, **options)
    assert not (tmp_path / "manifest.json").exists()


def test_saved_folders_are_tied_llama32_shaped_and_load(toy_models: dict[str, Path]) -> None:
    assert set(toy_models) == {"base", "succ", "upper"}
    for folder in toy_models.values():
        assert "lm_head.weight" not in _weights(folder)
        cfg = json.loads((folder / "config.json").read_text())
        assert cfg["tie_word_embeddings"] is True and cfg["architectures"] == ["LlamaForCausalLM"]
        assert cfg["rope_parameters"]["rope_type"] == "llama3" and cfg["rope_parameters"]["factor"] == 32.0
        assert cfg["num_key_value_heads"] < cfg["num_attention_heads"]
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
        tok = AutoTokenizer.from_pretrained(folder)
        assert tok("next 14 3 77 =")["input_ids"] == [tok.bos_token_id] + tok.convert_tokens_to_ids("next 14 3 77 =".split())


def test_task_data_is_in_vocab_and_splits_are_disjoint() -> None:
    tok = toy.make_tokenizer()
    for task in toy.SKILLS.values():
        prompts = {}
        for split in ("train", "dev", "test"):
            rows = toy.read_split(task, split)
            prompts[split] = {r["prompt"] for r in rows}
            words = {w for r in rows for w in " ".join([r["prompt"], *r["choices"]]).split()}
            assert tok.unk_token_id not in tok(" ".join(sorted(words)))["input_ids"]
        assert len(prompts["dev"]) >= 100 and len(prompts["test"]) >= 200
        assert not (prompts["train"] & prompts["dev"] or prompts["train"] & prompts["test"] or prompts["dev"] & prompts["test"])


def test_specialists_beat_the_base_on_their_own_skill(toy_models: dict[str, Path]) -> None:
    tok = AutoTokenizer.from_pretrained(toy_models["base"])
    acc = {}
    for name, folder in toy_models.items():
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        acc[name] = {task: toy.mc_accuracy(model, tok, toy.read_split(task, "dev")) for task in toy.SKILLS.values()}
    for name, task in toy.SKILLS.items():
        assert acc[name][task] >= acc["base"][task] + 0.3, acc
        assert acc[name][task] >= 0.7, acc


def test_lm_eval_scores_a_saved_folder_like_the_direct_computation(toy_models: dict[str, Path]) -> None:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    tasks_dir = Path(toy.__file__).resolve().parent.parent / "eval_tasks"
    out = simple_evaluate(
        model="hf",
        model_args=f"pretrained={toy_models['succ']},dtype=float32",
        tasks=["toy_succ_dev"],
        task_manager=TaskManager(include_path=str(tasks_dir), include_defaults=False),
        batch_size=64,
        device="cpu",
        limit=60,
    )
    model = AutoModelForCausalLM.from_pretrained(toy_models["succ"], dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(toy_models["succ"])
    direct = toy.mc_accuracy(model, tok, toy.read_split("toy_succ", "dev")[:60])
    assert out["results"]["toy_succ_dev"]["acc,none"] == pytest.approx(direct, abs=1e-9)
