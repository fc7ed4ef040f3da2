"""Evaluator cost per demo task against a bare batched forward of the same requests, and against HFLM (before).

    nice -n -5 python bench/bench_evaluator.py            # SmolLM2-135M, the demo's tasks and settings (< 5 min, 2 cores)
    python bench/bench_evaluator.py --models tiny --reps 3   # the tests' tiny random model

For each task (retention: multiple_choice; arith, units: generate_until), in one process, side by side:
- evaluator: `Evaluator(model, tok, [task], limit, batch_size).evaluate()` (evolve.lm.EvalLM inside: each distinct
  prompt once, the choices from its key/value cache; greedy generation that stops per sequence).
- bare: the same requests written as plain torch, nothing of lm-eval: for multiple_choice one right-padded prompt pass
  per batch of distinct prompts and the choices on its cache; for generation a greedy KV-cache loop, left-padded,
  rows leaving the batch at the same stop rule (an `until` string in the decoded text, EOS, max_gen_toks).
  Its results are checked equal to the evaluator's (loglikelihoods within 1e-4, generations identical).
- bare full (multiple_choice only): every choice as its own prompt+choice sequence (what HFLM computes), plain torch.
- HFLM (before): the previous Evaluator, i.e. the same task and request handling with lm-eval's HFLM doing the model
  calls (`HFLM._loglikelihood_tokens` on pre-tokenized requests, `HFLM.generate_until`); its per-item scores are
  checked equal to the evaluator's.
tokens = the requests' tokens as the Evaluator counts them (context + continuation per choice; prompt + generated
text), the same numerator for every column, so tok/s ratios are time ratios. Times: best of --reps calls (the first
call is also the warm-up), wall clock by default or `--clock cpu`. The machine's load and torch threads are printed
with the table. Defaults: the demo's tasks.batch_size 32 and 60 dev items per task, 2 torch threads.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

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


CLOCK = time.perf_counter  # --clock cpu: time.process_time (this process's CPU seconds, all threads)


def best_of(fn: Callable[[], object], reps: int) -> tuple[float, object]:
    """(fastest seconds of `reps` calls, the last call's result)."""
    times, out = [], None
    for _ in range(reps):
        t0 = CLOCK()
        out = fn()
        times.append(CLOCK() - t0)
    return min(times), out


# ---- bare loops: plain torch over the Evaluator's own token ids -----------------------------------------------------

def bare_choices(model, pairs: list[tuple[list[int], list[int]]], bs: int, pad: int) -> dict[tuple, float]:
    """Shared-prompt scoring: distinct prompts longest first in batches of bs, choices on the prompt pass's cache."""
    from transformers import DynamicCache

    prompts = sorted({tuple(c) for c, _ in pairs}, key=lambda p: (-len(p), p))
    conts: dict[tuple, set] = {}
    for c, t in pairs:
        conts.setdefault(tuple(c), set()).add(tuple(t))
    out = {}
    with torch.no_grad():
        for a in range(0, len(prompts), bs):
            chunk = prompts[a : a + bs]
            lens = torch.tensor([len(p) for p in chunk])
            ids = torch.full((len(chunk), int(lens.max())), pad)
            for b, p in enumerate(chunk):
                ids[b, : len(p)] = torch.tensor(p)
            res = model(ids, use_cache=True, logits_to_keep=(lens - 1)[:, None])
            first = F.log_softmax(res.logits[:, 0], -1)
            kv = [(k, v) for k, v, *_ in res.cache]
            rows = sorted(((b, t) for b, p in enumerate(chunk) for t in conts[p]), key=lambda r: -len(r[1]))
            for b, t in rows:
                out[(chunk[b], t)] = float(first[b, t[0]])
            rows = [r for r in rows if len(r[1]) > 1]
            for s in range(0, len(rows), bs):
                part = rows[s : s + bs]
                idx = torch.tensor([b for b, _ in part])
                n = len(part[0][1]) - 1
                x = torch.full((len(part), n), pad)
                for r, (_, t) in enumerate(part):
                    x[r, : len(t) - 1] = torch.tensor(t[:-1])
                mask = torch.cat([torch.arange(ids.shape[1])[None] < lens[idx][:, None], torch.ones(len(part), n, dtype=torch.bool)], 1)
                pos = lens[idx][:, None] + torch.arange(n)[None]
                cache = DynamicCache(ddp_cache_data=[(k[idx], v[idx]) for k, v in kv])
                logp = F.log_softmax(model(x, attention_mask=mask.long(), position_ids=pos, cache=cache).logits, -1)
                for r, (b, t) in enumerate(part):
                    out[(chunk[b], t)] += float(logp[r, torch.arange(len(t) - 1), torch.tensor(t[1:])].sum())
    return out


def bare_full(model, pairs: list[tuple[list[int], list[int]]], bs: int, pad: int) -> None:
    """Every (context, choice) as one right-padded sequence, longest first, log-softmax gather (HFLM's computation)."""
    seqs = sorted({(tuple(c) + tuple(t), len(t)) for c, t in pairs}, key=lambda s: -len(s[0]))
    with torch.no_grad():
        for a in range(0, len(seqs), bs):
            chunk = seqs[a : a + bs]
            ids = torch.full((len(chunk), len(chunk[0][0]) - 1), pad)
            for r, (s, _) in enumerate(chunk):
                ids[r, : len(s) - 1] = torch.tensor(s[:-1])
            logp = F.log_softmax(model(ids).logits, -1)
            for r, (s, n) in enumerate(chunk):
                float(logp[r, torch.arange(len(s) - 1 - n, len(s) - 1), torch.tensor(s[-n:])].sum())


def bare_generate(model, tok, prompts: list[list[int]], stop: list[str], max_new: int, bs: int) -> list[str]:
    """Greedy KV-cache decoding, left-padded, length-sorted batches; a row leaves at a stop string, EOS or max_new."""
    from transformers import DynamicCache

    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    texts = [""] * len(prompts)
    with torch.no_grad():
        for a in range(0, len(order), bs):
            batch = order[a : a + bs]
            w = max(len(prompts[i]) for i in batch)
            ids = torch.full((len(batch), w), pad)
            mask = torch.zeros((len(batch), w), dtype=torch.long)
            for r, i in enumerate(batch):
                ids[r, w - len(prompts[i]) :] = torch.tensor(prompts[i])
                mask[r, w - len(prompts[i]) :] = 1
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            cache = DynamicCache()
            logits = model(ids, attention_mask=mask, position_ids=pos, cache=cache, logits_to_keep=1).logits[:, -1]
            nxt_pos, rows, gen = pos[:, -1] + 1, list(batch), {i: [] for i in batch}
            for _ in range(max_new):
                nxt = logits.argmax(-1)
                keep = []
                for r, (i, t) in enumerate(zip(rows, nxt.tolist(), strict=True)):
                    gen[i].append(t)
                    text = tok.decode(gen[i], skip_special_tokens=True)
                    if t not in eos and len(gen[i]) < max_new and not any(s and s in text for s in stop):
                        keep.append(r)
                if not keep:
                    break
                sel = torch.tensor(keep)
                cache.batch_select_indices(sel)
                mask = torch.cat([mask[sel], torch.ones(len(keep), 1, dtype=torch.long)], 1)
                nxt, nxt_pos, rows = nxt[sel], nxt_pos[sel], [rows[r] for r in keep]
                logits = model(nxt[:, None], attention_mask=mask, position_ids=nxt_pos[:, None], cache=cache).logits[:, -1]
                nxt_pos = nxt_pos + 1
            for i in batch:
                text = tok.decode(gen[i], skip_special_tokens=True)
                for s in stop:
                    text = text.split(s)[0] if s else text
                texts[i] = text
    return texts


# ---- HFLM before: the previous Evaluator's model calls ----------------------------------------------------------------

def hflm_evaluator(model, tok, task: str, limit: int, bs: int):
    """An Evaluator whose model calls go through lm-eval's HFLM exactly as the Evaluator made them before EvalLM."""
    from lm_eval.models.huggingface import HFLM

    from evolve.evaluate import Evaluator

    class HFLMEvaluator(Evaluator):
        def _call_once(self, reqtype, reqs):
            if reqtype == "loglikelihood":
                enc = [(inst.args, *self._ll_tokens[id(inst)]) for inst in reqs]
                return self.hflm._loglikelihood_tokens(enc, disable_tqdm=True), 0
            return getattr(self.hflm, reqtype)(reqs, disable_tqdm=True), 0

    ev = HFLMEvaluator(model, tok, [task], limit=limit, batch_size=bs, device="cpu")
    ev.hflm = HFLM(pretrained=model, tokenizer=tok, device="cpu", batch_size=bs)
    return ev


def bench_task(model, tok, task: str, args) -> dict:
    """All columns for one task; checks that every loop computed the same results."""
    from evolve.evaluate import Evaluator

    ev = Evaluator(model, tok, [task], limit=args.limit, batch_size=args.batch_size, device="cpu")
    t_ev, result = best_of(ev.evaluate, args.reps)
    run = ev.runs[0]
    insts = [inst for d in run.order for inst in run.instances[d]]
    row = {"task": task, "type": insts[0].request_type, "items": result.n_items[run.name], "tokens": result.tokens,
           "score": result.scores[run.name], "evaluator": t_ev, "bare_full": float("nan")}
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    if row["type"] == "loglikelihood":
        pairs = [ev._ll_tokens[id(i)] for i in insts]
        row["bare"], bare = best_of(lambda: bare_choices(model, pairs, args.batch_size, pad), args.reps)
        diff = max(abs(bare[(tuple(c), tuple(t))] - i.resps[0][0]) for (c, t), i in zip(pairs, insts, strict=True))
        assert diff < 1e-4, f"{task}: bare loop differs from the evaluator by {diff}"
        row["bare_full"], _ = best_of(lambda: bare_full(model, pairs, args.batch_size, pad), args.reps)
    else:
        gk = insts[0].args[1]
        stop = list(gk["until"]) + [tok.decode(tok.eos_token_id, skip_special_tokens=False)]
        prompts = [tok(i.args[0])["input_ids"] for i in insts]
        row["bare"], texts = best_of(lambda: bare_generate(model, tok, prompts, stop, gk["max_gen_toks"],
                                                           args.batch_size), args.reps)
        assert texts == [i.resps[0] for i in insts], f"{task}: bare generations differ from the evaluator's"
    if not args.skip_hflm:
        old = hflm_evaluator(model, tok, task, args.limit, args.batch_size)
        row["hflm"], before = best_of(old.evaluate, args.reps)
        assert before.per_item == result.per_item, f"{task}: HFLM's per-item scores differ from the evaluator's"
    else:
        row["hflm"] = float("nan")
    return row


def main() -> None:
    """Run every task of every model and print one markdown table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="smollm2", help="comma list of tiny, smollm2 (default smollm2)")
    p.add_argument("--tasks", default="retention,arith,units", help="eval_tasks names (default: the demo's)")
    p.add_argument("--limit", type=int, default=60, help="first N dev items per task (the demo scores 60)")
    p.add_argument("--batch-size", type=int, default=32, help="rows per forward pass (the demo's tasks.batch_size)")
    p.add_argument("--reps", type=int, default=2, help="calls per measurement; the best is reported")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--cache", type=Path, default=ROOT / ".cache" / "bench")
    p.add_argument("--skip-hflm", action="store_true", help="leave out the HFLM (before) column")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall seconds, or this process's CPU seconds (steadier on a shared machine; use --threads 1)")
    args = p.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    import logging

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    t0, rows = time.perf_counter(), []
    for name in args.models.split(","):
        model, tok = load(name, args.cache)
        for task in args.tasks.split(","):
            rows.append({"model": name, **bench_task(model, tok, task, args)})
    print(f"\n{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC  torch threads={args.threads}  "
          f"limit={args.limit}  batch={args.batch_size}  reps={args.reps}  clock={args.clock}  "
          f"load average {os.getloadavg()[0]:.1f}  "
          f"wall {time.perf_counter() - t0:.0f} s")
    print("| model | task | type | items | tokens | evaluator s | evaluator tok/s | bare s | evaluator / bare (tok/s) "
          "| bare full s | HFLM (before) s | HFLM / evaluator | score |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['task']} | {r['type']} | {r['items']} | {r['tokens']} | {r['evaluator']:.2f} | "
              f"{r['tokens'] / r['evaluator']:.0f} | {r['bare']:.2f} | {r['bare'] / r['evaluator']:.2f} | "
              f"{r['bare_full']:.2f} | {r['hflm']:.2f} | {r['hflm'] / r['evaluator']:.2f} | {r['score']:.3f} |")


if __name__ == "__main__":
    main()
