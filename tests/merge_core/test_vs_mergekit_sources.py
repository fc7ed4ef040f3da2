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


def _models(root: Path) -> dict[str, Path]:
    from merge_core.synthetic import make_checkpoint, make_lora_adapter

    base = make_checkpoint(root / "base", layers=3, seed=0, tokenizer=True)
    return {
        "base": base,
        "ft": make_checkpoint(root / "ft", like=base, noise=0.02, seed=1),
        "adapter": make_lora_adapter(base, root / "adapter", seed=2, use_rslora=True),
    }


def _recipes(m: dict[str, Path]) -> dict[str, dict]:
    base, ft, lora = str(m["base"]), str(m["ft"]), f"{m['base']}+{m['adapter']}"
    return {
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
@pytest.mark.parametrize("name", list(_recipes({k: Path(k) for k in ("base", "ft", "adapter")})))
def test_same_tensors_as_mergekit(rows, name):
    row = rows[name]
    assert row["only_ours"] == [] and row["only_mergekit"] == []
    assert row["max_abs_diff"] <= parity.TOLERANCE, f"{row['worst_tensor']} differs by {row['max_abs_diff']}"
