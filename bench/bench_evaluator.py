"""Evaluator time per candidate vs (a) bare forward/generate over the same tokens and (b) a from-scratch lm-eval run.

    python bench/bench_evaluator.py [--models tiny,smollm2] [--tasks retention,arith] [--limit 40] [--reps 3]

(a) is our own minimal loop: the Evaluator's loglikelihood token sequences forwarded in length-sorted batches of the
same size with a log-softmax gather, and greedy `generate` on the same prompts with the same max_gen_toks (no stop
strings, so it may generate more than the Evaluator). (b) builds a new HFLM and TaskManager (eval_tasks only) and calls
simple_evaluate every time, with bootstrap_iters=0. Times are medians over --reps after one warm-up call.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT  # noqa: E402  (puts the repository on sys.path)


def load(name: str, cache: Path):
    """(model, tokenizer) for 'tiny' (random, char tokenizer) or 'smollm2' (converted from the GGUF, cached)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name == "tiny":
        from merge_core.synthetic import make_checkpoint

        path = make_checkpoint(cache / "tiny", seed=0)
    else:
        from evolve.smollm2 import convert_smollm2

        path = convert_smollm2(cache / "smollm2", progress=True)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(path)


def timed(fn, reps: int) -> float:
    """Median seconds of `fn()` over `reps` calls after one warm-up."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bare_loop(ev, model, tok, batch_size: int):
    """A closure running the Evaluator's token sequences (the scored docs only) through plain forward / generate."""
    gens = [(inst.args[0], inst.args[1].get("max_gen_toks", 256)) for run in ev.runs for d in run.order
            for inst in run.instances[d] if inst.request_type == "generate_until"]
    seqs = sorted({tuple(ev._ll_tokens[id(inst)][0] + ev._ll_tokens[id(inst)][1]): len(ev._ll_tokens[id(inst)][1])
                   for run in ev.runs for d in run.order for inst in run.instances[d]
                   if inst.request_type == "loglikelihood"}.items(), key=lambda kv: -len(kv[0]))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    tok.padding_side = "left"

    def run() -> None:
        with torch.no_grad():
            for i in range(0, len(seqs), batch_size):
                batch = seqs[i : i + batch_size]
                width = len(batch[0][0])
                ids = torch.full((len(batch), width), pad, dtype=torch.long)
                for row, (s, _) in enumerate(batch):
                    ids[row, : len(s)] = torch.tensor(s)
                logp = torch.log_softmax(model(ids).logits.float(), dim=-1)
                for row, (s, n) in enumerate(batch):
                    pos = torch.arange(len(s) - n - 1, len(s) - 1)
                    logp[row, pos, torch.tensor(s[-n:])].sum().item()
            for i in range(0, len(gens), batch_size):
                batch = gens[i : i + batch_size]
                enc = tok([g[0] for g in batch], return_tensors="pt", padding=True)
                model.generate(**enc, max_new_tokens=max(g[1] for g in batch), do_sample=False, pad_token_id=pad)

    return run, sum(len(s) for s, _ in seqs)


def naive_loop(model, tok, tasks: list[str], limit: int, batch_size: int):
    """A closure that runs lm-eval from scratch: new HFLM, new TaskManager, simple_evaluate."""
    import eval_tasks
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    def run() -> None:
        lm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size)
        tm = TaskManager(include_path=str(eval_tasks.PATH), include_defaults=False)
        simple_evaluate(model=lm, tasks=[f"{t}_dev" for t in tasks], limit=limit, task_manager=tm, bootstrap_iters=0,
                        log_samples=False, verbosity="ERROR")

    return run


def main() -> None:
    """Run the comparison and print a markdown table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="tiny,smollm2")
    p.add_argument("--tasks", default="retention,arith")
    p.add_argument("--limit", type=int, default=40)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", type=Path, default=ROOT / ".cache" / "bench")
    p.add_argument("--skip-naive", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import logging

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    from evolve.evaluate import Evaluator

    tasks = args.tasks.split(",")
    rows = []
    for name in args.models.split(","):
        model, tok = load(name, args.cache)
        ev = Evaluator(model, tok, tasks, limit=args.limit, batch_size=args.batch_size, device="cpu")
        result = ev.evaluate()
        t_eval = timed(ev.evaluate, args.reps)
        bare, _ = bare_loop(ev, model, tok, args.batch_size)
        t_bare = timed(bare, args.reps)
        t_naive = float("nan") if args.skip_naive else timed(naive_loop(model, tok, tasks, args.limit, args.batch_size), 1)
        scores = ", ".join(f"{k}={v:.3f}" for k, v in result.scores.items())
        rows.append((name, sum(result.n_items.values()), result.tokens, t_eval, t_bare, t_naive, scores))
    print(f"\n{datetime.date.today()}  torch threads={args.threads}  limit={args.limit}  batch={args.batch_size}  "
          f"tasks={args.tasks}  reps={args.reps}")
    print("| model | items | tokens | evaluator s | (a) bare s | evaluator / bare | (b) naive s | naive / evaluator | scores |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for name, n, toks, te, tb, tn, scores in rows:
        print(f"| {name} | {n} | {toks} | {te:.3f} | {tb:.3f} | {te / tb:.2f} | {tn:.3f} | {tn / te:.2f} | {scores} |")


if __name__ == "__main__":
    main()
