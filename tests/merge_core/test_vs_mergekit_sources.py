"""Parity with mergekit 0.1.5 for sources as users have them: a base+LoRA-adapter source, and vocabularies
(tokenizer_source base / union / a model, a padded-vocabulary source, the tokenizer: block).

mergekit runs in CI's side venv (EVOLVE_MERGEKIT_PYTHON, see .ci/run), all recipes in one process; skipped, saying
so, where it is absent. Every tensor within 1e-5 (float32), and the same output vocabulary.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

_BENCH = Path(__file__).resolve().parents[2] / "bench" / "compare_mergekit.py"
_spec = importlib.util.spec_from_file_location("compare_mergekit", _BENCH)
parity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(parity)

_DRIVER = """
import sys, json
from mergekit.scripts.run_yaml import main
cache = sys.argv[2]
for cfg, out in json.loads(sys.argv[1]):
    main([cfg, out, "--quiet", "--no-cuda", "--no-lazy-unpickle", "--random-seed", "0", "--lora-merge-cache", cache],
         standalone_mode=False)
"""


ADDED = ("<|tool|>", "<|think|>")


def _models(root: Path) -> dict[str, Path]:
    from merge_core.synthetic import make_checkpoint, make_lora_adapter, make_tokenizer

    base = make_checkpoint(root / "base", layers=3, seed=0, tokenizer=True)
    added = make_tokenizer(128)
    added.add_tokens(list(ADDED), special_tokens=True)
    return {
        "base": base,
        "ft": make_checkpoint(root / "ft", like=base, noise=0.02, seed=1),
        "adapter": make_lora_adapter(base, root / "adapter", seed=2, use_rslora=True),
        # a fine-tune that added two tokens (130 rows), and one padded to 192 rows around the base's 128 tokens
        "added": make_checkpoint(root / "added", layers=3, seed=3, vocab=130, tokenizer=added),
        "padded": make_checkpoint(root / "padded", layers=3, seed=4, vocab=192, tokenizer=make_tokenizer(128)),
    }


def _recipes(m: dict[str, Path]) -> dict[str, dict]:
    base, ft, lora = str(m["base"]), str(m["ft"]), f"{m['base']}+{m['adapter']}"
    added, padded = str(m["added"]), str(m["padded"])

    def ties(tokenizer: dict, *models: str, method: str = "ties") -> dict:
        density = {"density": 0.7} if method == "ties" else {}
        return {"merge_method": method, "base_model": base, "dtype": "float32", **tokenizer,
                "models": [{"model": x, "parameters": {"weight": 0.4 + 0.2 * i, **density}} for i, x in enumerate(models)]}

    return {
        "ties_union": ties({"tokenizer_source": "union"}, added, padded),
        "ties_base_padded": ties({"tokenizer_source": "base"}, padded, ft),
        "ties_base_added": ties({"tokenizer_source": "base"}, added, ft),
        "ties_model_source": ties({"tokenizer_source": added}, padded, added),
        "linear_union_no_base": {"merge_method": "linear", "dtype": "float32", "tokenizer_source": "union",
                                 "models": [{"model": padded, "parameters": {"weight": 0.3}},
                                            {"model": added, "parameters": {"weight": 0.7}}]},
        "passthrough_union": {"merge_method": "passthrough", "dtype": "float32", "tokenizer_source": "union",
                              "slices": [{"sources": [{"model": added, "layer_range": [0, 2]}]},
                                         {"sources": [{"model": padded, "layer_range": [1, 3]}]}]},
        # task_arithmetic: TIES would keep an arbitrary subset of the identical padding rows' tied magnitudes
        "block_padded": ties({"tokenizer": {"source": "union", "pad_to_multiple_of": 64, "tokens": {
            "<|tool|>": {"source": added},
            "<|new|>": {"source": {"kind": "zero"}},
            "A": {"source": {"kind": "model_token", "model": padded, "token": "B"}, "force": True}}}}, added, padded,
            method="task_arithmetic"),
        "ties_lora_source": {"merge_method": "ties", "base_model": base, "dtype": "float32",
                             "models": [{"model": ft, "parameters": {"weight": 0.6, "density": 0.7}},
                                        {"model": lora, "parameters": {"weight": 0.5, "density": 0.8}}]},
        "linear_lora_source": {"merge_method": "linear", "dtype": "float32",
                               "models": [{"model": ft, "parameters": {"weight": 0.4}},
                                          {"model": lora, "parameters": {"weight": 0.6}}]},
    }


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    found = parity.mergekit_command()
    if found is None or not found[1]:
        pytest.skip("mergekit not installed: set EVOLVE_MERGEKIT_PYTHON to a mergekit 0.1.5 install's python")
    work = tmp_path_factory.mktemp("parity_sources")
    models = _models(work / "models")
    jobs = []
    for name, recipe in _recipes(models).items():
        path = work / "recipes" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        jobs.append((name, path, work / "mergekit" / name))
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    subprocess.run([found[0][0], "-c", _DRIVER, json.dumps([[str(r), str(o)] for _, r, o in jobs]),
                    str(work / "lora_cache")], check=True, env=env, timeout=900)
    out = {}
    for name, recipe, theirs in jobs:
        ours = work / "ours" / name
        parity.run_ours(recipe, ours)
        out[name] = parity.compare(ours, theirs) | {"ours": ours, "theirs": theirs}
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", list(_recipes({k: Path(k) for k in ("base", "ft", "adapter", "added", "padded")})))
def test_same_tensors_as_mergekit(rows, name):
    row = rows[name]
    assert row["only_ours"] == [] and row["only_mergekit"] == []
    assert row["max_abs_diff"] <= parity.TOLERANCE, f"{row['worst_tensor']} differs by {row['max_abs_diff']}"
    ours, theirs = (json.loads((row[k] / "config.json").read_text()) for k in ("ours", "theirs"))
    assert ours["vocab_size"] == theirs["vocab_size"]
    if (row["theirs"] / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        a, b = (AutoTokenizer.from_pretrained(row[k]) for k in ("ours", "theirs"))
        assert a.get_vocab() == b.get_vocab()
        assert max(a.get_vocab().values()) < ours["vocab_size"]  # every token id has an embedding row


def test_union_has_the_added_tokens_inside_vocab_size(rows):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(rows["ties_union"]["ours"])
    size = json.loads((rows["ties_union"]["ours"] / "config.json").read_text())["vocab_size"]
    assert size == 130 and all(0 <= tok.convert_tokens_to_ids(t) < size for t in ADDED)
    assert tok.decode(tok("<|tool|>A")["input_ids"], skip_special_tokens=False).endswith("<|tool|>A")
