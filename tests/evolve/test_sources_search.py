"""A tiny search whose sources are as users have them: a fine-tune that added tokens and a LoRA adapter on the base.
It runs, exports a folder whose tokenizer, vocab_size and rows agree, and lm-eval's CLI reproduces the held-out row."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ADDED = ("<|tool|>", "<|eot|>")


@pytest.mark.slow
def test_search_with_added_tokens_and_lora_adapter(toy_models, tmp_path, capsys):
    from transformers import AutoTokenizer

    from evolve.cli import main
    from merge_core.synthetic import make_lora_adapter, with_added_tokens

    succ = with_added_tokens(toy_models["succ"], tmp_path / "succ_tools", ADDED, seed=1)
    adapter = make_lora_adapter(toy_models["base"], tmp_path / "upper_lora", seed=2, scale=0.02)
    out = tmp_path / "run"
    args = ["search", "conf=tiny", f"out_dir={out}", "models.prepare=null", f"models.base={toy_models['base']}",
            f"models.sources=[{succ},{toy_models['base']}+{adapter}]", "models.tokenizer_source=union",
            "n_trials=2", "progress=false", "score_cache=false"]
    assert main(args) == 0, capsys.readouterr().err
    model = out / "best" / "model"
    config = json.loads((model / "config.json").read_text())
    tok = AutoTokenizer.from_pretrained(model)
    assert config["vocab_size"] == len(tok) == len(AutoTokenizer.from_pretrained(toy_models["base"])) + len(ADDED)
    assert all(tok.convert_tokens_to_ids(t) < config["vocab_size"] for t in ADDED)
    assert "tokenizer_source: union" in (out / "best" / "recipe.yaml").read_text()
    rows = json.loads((out / "report" / "results.json").read_text())
    evolved = next(r for r in rows if r["kind"] == "evolved")
    res = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={model},dtype=float32",
         "--include_path", str(Path(__file__).resolve().parents[2] / "eval_tasks"), "--tasks", "toy_succ_test",
         "--device", "cpu", "--batch_size", "64", "--output_path", str(tmp_path / "lm_eval")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    results = json.loads(next((tmp_path / "lm_eval").rglob("results_*.json")).read_text())["results"]
    assert results["toy_succ_test"]["acc,none"] == pytest.approx(evolved["scores"]["toy_succ_test"], abs=1e-9)
