"""`evolve eval model=DIR tasks=[a,b] [split=dev|test] [batch_size=8] [device=auto] [limit=N] [dtype=float32] [out=FILE.json]
[include_path=DIR or [DIR,...]]`: eval_tasks/ plus the given folders of lm-eval task YAMLs (any layout, flat included).
A task that is not an eval_tasks pair is scored on the split's documents of the project's default partition
(evolve/splits.py); a study with its own tasks.split is reproduced by the report's lm_eval --samples command.

The JSON goes beside the model folder, never into it (a model folder holds the model only, so it can be copied or
uploaded as is): `DIR_eval_<split>.json` by default, e.g. `runs/demo/best/model_eval_test.json`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from evolve.commands._args import parse_kv
from evolve.errors import UserError
from merge_core.device import DTYPES as MERGE_DTYPES
from merge_core.files import atomic_write_text

KEYS = ("model", "tasks", "split", "batch_size", "device", "limit", "dtype", "out", "include_path")
DTYPES = (*MERGE_DTYPES, "auto")  # merge_core.device's list, plus the checkpoint's own


def run(args: list[str]) -> int:
    """Score a saved model folder on eval_tasks (or lm-eval built-ins), print a table and write JSON."""
    opts = parse_kv(args, KEYS, required=("model", "tasks"))
    model_dir = Path(str(opts["model"]))
    if not (model_dir / "config.json").is_file():
        raise UserError(f"model: {model_dir} is not a saved model folder (no config.json); pass model=DIR")
    check_model_folder(model_dir)
    tasks = opts["tasks"] if isinstance(opts["tasks"], list) else [opts["tasks"]]
    tasks = [str(t) for t in tasks]
    split = str(opts.get("split", "dev"))
    batch_size = _positive_int(opts.get("batch_size", 8), "batch_size")
    limit = None if opts.get("limit") is None else _positive_int(opts["limit"], "limit")
    dtype = str(opts.get("dtype", "float32"))
    if dtype not in DTYPES:
        raise UserError(f"dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    out = Path(str(opts["out"])) if opts.get("out") else default_out(model_dir, split)
    check_eval_out(out)

    include_path = opts.get("include_path")
    folders = [] if include_path is None else include_path if isinstance(include_path, list) else [include_path]
    for folder in folders:
        if not Path(str(folder)).is_dir():
            raise UserError(f"include_path: {folder} is not a folder; pass folders of lm-eval task YAMLs")
    include_path = [Path(str(f)) for f in folders] or None

    from evolve.tasks import resolve, validate

    # an eval command scores for a report: the held-out split is allowed here, unlike in a search
    validate(resolve(tasks, split, include_path=include_path, allow_test=True), include_path)

    import torch
    from huggingface_hub.errors import StrictDataclassError
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from evolve.evaluate import Evaluator, NonFiniteLogits

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report of missing keys would precede our one-line refusal
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=dtype if dtype == "auto" else getattr(torch, dtype), trust_remote_code=False,
            output_loading_info=True)
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError, StrictDataclassError) as exc:  # transformers' ways of saying
        first = " ".join(str(exc).split())[:300]                                    # the folder is not loadable
        raise UserError(f"model: {model_dir} cannot be loaded by transformers ({first}); "
                        "point at a complete Hugging Face model folder (config, weights, tokenizer)") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = sorted(info.get("missing_keys") or [])
    if missing:  # transformers would fill them with random values and score those
        raise UserError(f"model: {model_dir} has no tensor {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1
                        else "") + "; point at a complete model folder")
    evaluator = Evaluator(model, tokenizer, tasks, split=split, batch_size=batch_size, device=str(opts.get("device", "auto")),
                          limit=limit, allow_test=True, include_path=include_path)
    try:
        result = evaluator.evaluate()
    except NonFiniteLogits as exc:
        raise UserError(f"model: {model_dir}: {exc}; its weights hold NaN or inf, or overflow in dtype={dtype}") from None
    rows = [(name, evaluator.metrics[name], value, result.n_items[name]) for name, value in result.scores.items()]
    print(_table(rows))
    report = {
        "written_by": WRITTEN_BY, "model": str(model_dir), "split": split, "scores": result.scores,
        "metrics": evaluator.metrics,
        "n_items": result.n_items, "limit": limit, "tokens": result.tokens, "seconds": round(result.seconds, 3),
    }
    check_eval_out(out)  # again: the scoring took a while, and the file may have appeared meanwhile
    atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def default_out(model_dir: Path, split: str) -> Path:
    """`<model folder>_eval_<split>.json` beside the model folder (outside it)."""
    model_dir = model_dir.resolve()
    return model_dir.with_name(f"{model_dir.name}_eval_{split}.json")


WRITTEN_BY = "evolve eval"  # marks the JSON files this command wrote: only those may be replaced


def check_eval_out(out: Path) -> None:
    """out= must be a new file, or a results file an earlier `evolve eval` wrote; never a folder or another file."""
    if not out.parent.is_dir():
        raise UserError(f"out: folder {out.parent} does not exist; create it or choose another out=FILE.json")
    if out.is_dir():
        raise UserError(f"out: {out} is a folder; give a file path, e.g. out={out / 'eval.json'}")
    if out.exists() or out.is_symlink():
        if not out.is_file() or _written_by(out) != WRITTEN_BY:
            raise UserError(f"out: {out} exists and was not written by evolve eval; it is left alone: choose a new "
                            "file path, e.g. out=eval_results.json")
    if not os.access(out.parent, os.W_OK):
        raise UserError(f"out: folder {out.parent} is not writable; choose another out=FILE.json")


def _written_by(path: Path) -> object:
    try:
        if path.stat().st_size > 1 << 24:  # a results file is a few KB
            return None
        return json.loads(path.read_text(encoding="utf-8")).get("written_by")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return None


def check_model_folder(model_dir: Path) -> None:
    """Before any heavy import: the folder's config is JSON, its weights are readable safetensors, no custom code."""
    from merge_core.checkpoint import Checkpoint

    ck = Checkpoint(model_dir)  # refuses garbled config.json, missing/truncated safetensors and pickles
    if ck.config.get("auto_map"):
        raise UserError(f"model: {model_dir / 'config.json'} asks for the model's own Python code (auto_map); "
                        "evolve never runs it (trust_remote_code is off): use a standard architecture's folder")


def _positive_int(value: object, key: str) -> int:
    """An int >= 1 or a UserError naming the key."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise UserError(f"{key}: {value!r} is not a positive integer; e.g. {key}=8")


def _table(rows: list[tuple[str, str, float, int]]) -> str:
    """A plain aligned text table: task, metric, value, n."""
    lines = [("task", "metric", "value", "n")] + [(t, m, f"{v:.4f}", str(n)) for t, m, v, n in rows]
    widths = [max(len(r[i]) for r in lines) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in lines)
