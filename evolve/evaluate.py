"""Scores a live model on lm-eval tasks; one EvalLM and one set of prebuilt requests serve every candidate.

Contract: `Evaluator(model, tokenizer, tasks, ...)` builds the tasks and their requests once; `evaluate()` and
`evaluate_staged()` run the model as it is *now* (weights changed in place change the next score) and aggregate with
each task's own `process_results` and aggregation functions, so a score equals what lm-eval's CLI prints for the same
items. The primary metric of a task is the first entry of its metric_list under its first filter.
The model calls go through `evolve.lm.EvalLM` (lm-eval's LM interface; each distinct prompt runs once, generation
stops per sequence), whose loglikelihoods equal HFLM's within float rounding and whose greedy generations are HFLM's.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from evolve import lm_eval_adapter as adapter
from evolve.errors import UserError
from evolve.lm import EvalLM
from evolve.progress import quiet_bars
from evolve.splits import SplitRule
from evolve.tasks import TaskRef, load_tasks, resolve

log = logging.getLogger(__name__)
FEWSHOT_SEED = 1234  # lm-eval's CLI default, so few-shot tasks draw the same examples


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether an exception is a device (or host allocator) out-of-memory error."""
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


class NonFiniteLogits(RuntimeError):
    """The model produced NaN or inf logits: the candidate is broken, the search should fail the trial."""


@dataclass
class EvalResult:
    """Scores of one evaluation: primary metric per lm-eval task name, per-item values, counts, cost."""

    scores: dict[str, float]
    per_item: dict[str, list[float]]
    n_items: dict[str, int]
    tokens: int  # prompt + generated tokens processed (cumulative over the stages of one evaluate_staged)
    seconds: float


@dataclass
class _TaskRun:
    """A built task: its documents in evaluation order and their Instances, grouped per document."""

    name: str  # the score key (TaskRef.key)
    task: Any
    metric: str
    filter: str
    order: list[int]  # doc ids, seeded-shuffled or in file order, cut to `limit`
    docs: dict[int, dict]
    instances: dict[int, list[Any]]
    ref: TaskRef | None = None
    split_ids: dict[str, list[int]] | None = None  # a partitioned task's dev and test ids (evolve.splits)
    stage_ends: list[int] = field(default_factory=list)


class Evaluator:
    """One EvalLM around the live model plus lm-eval tasks whose requests are built once and reused."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        tasks: Sequence[str],
        *,
        split: str = "dev",
        batch_size: int = 8,
        device: str = "auto",
        include_path: Path | str | Sequence[Path | str] | None = None,
        limit: int | None = None,
        subset_seed: int | None = None,
        stages: Sequence[float] = (1.0,),
        allow_test: bool = False,
        max_length: int | None = None,
        split_rule: SplitRule | None = None,
    ) -> None:
        """Validate arguments, wrap the model, load the tasks and build every request (no model call yet)."""
        stages = tuple(float(s) for s in stages)
        if not stages or any(not 0.0 < s <= 1.0 for s in stages) or list(stages) != sorted(set(stages)):
            raise UserError(f"stages: {list(stages)} must be increasing fractions in (0, 1], e.g. [0.25, 0.5, 1.0]")
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise UserError(f"limit: {limit!r} must be a positive integer or null")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"batch_size: {batch_size!r} must be a positive integer")
        refs = resolve(tasks, split, include_path=include_path, allow_test=allow_test)
        built = load_tasks(refs, include_path)
        self.split_rule = split_rule or SplitRule()
        self.lm = _make_lm(model, tokenizer, pick_device(device), batch_size, max_length)

        self.model = model
        self.stages = stages
        self.oom_retries = 0  # batch-size halvings so far (the EvalLM keeps the smaller size)
        by_name = {r.name: r for r in refs}
        self.runs = [self._build(name, task, limit, subset_seed, by_name.get(name)) for name, task in built.items()]
        self._ll_tokens = {
            id(inst): self.lm.encode_pair(*inst.args) for run in self.runs for insts in run.instances.values()
            for inst in insts if inst.request_type == "loglikelihood"
        }

    def _build(self, name: str, task: Any, limit: int | None, subset_seed: int | None, ref: TaskRef | None) -> _TaskRun:
        """Build the requests of the documents to score once and fix the order in which they are scored.

        A partitioned task's requests are built by lm-eval's own document selection (`samples`, what
        `lm_eval --samples` uses) over its split's ids only: the other split's documents are never turned into
        requests, and a full split scores exactly as `lm_eval --samples '{task: ids}'` does.
        """
        if task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=FEWSHOT_SEED)
        split_ids, selected = None, None
        if ref is not None and not ref.pair:
            dev, test = self.split_rule.partition(name, len(task.eval_docs))
            split_ids = {"dev": dev, "test": test}
            selected = list(split_ids[ref.split])
            if subset_seed is not None:
                random.Random(subset_seed).shuffle(selected)
            selected = selected[:limit] if limit else selected
        key = ref.key if ref is not None else name
        if selected is None:
            with quiet_bars():  # lm-eval's unlabeled per-task bar; ours say what is being scored
                task.build_all_requests(rank=0, world_size=1)
            ids = None
        else:
            ids = sorted(selected)  # lm-eval enumerates the chosen documents in their own order
            with quiet_bars():
                task.build_all_requests(rank=0, world_size=1, samples=ids)
        true_id = (lambda pos: pos) if ids is None else ids.__getitem__
        instances: dict[int, list[Any]] = {}
        for inst in task.instances:
            instances.setdefault(true_id(inst.doc_id), []).append(inst)
        for insts in instances.values():
            insts.sort(key=lambda i: i.idx)
        docs = {true_id(pos): doc for pos, doc in task.doc_iterator(samples=ids)}
        if selected is None:
            order = sorted(docs)
            if subset_seed is not None:
                random.Random(subset_seed).shuffle(order)
            order = order[:limit] if limit else order
        else:
            order = selected
        if not order:
            raise UserError(f"tasks: {key} has no items; check its data files")
        _memoize_choices(task, docs.values())
        metric = task.config.metric_list[0]["metric"] if task.config.metric_list else next(iter(task.aggregation()))
        filters = adapter.task_filters(task)
        run = _TaskRun(key, task, metric, filters[0].name if filters else "none", order, docs, instances, ref, split_ids)
        run.stage_ends = [max(1, math.ceil(s * len(order) - 1e-9)) for s in self.stages]
        return run

    @property
    def splits(self) -> dict[str, dict[str, Any]]:
        """Task as requested -> its lm-eval task, split, scored doc ids, and (partitioned) both splits' ids."""
        out = {}
        for run in self.runs:
            ref = run.ref
            entry: dict[str, Any] = {"lm_eval_task": ref.name if ref else run.name, "key": run.name,
                                     "split": ref.split if ref else None, "ids": sorted(run.order),
                                     "partitioned": bool(run.split_ids), "builtin": bool(ref and ref.builtin)}
            if run.split_ids:
                entry.update(run.split_ids)
            out[ref.request if ref else run.name] = entry
        return out

    @property
    def metrics(self) -> dict[str, str]:
        """lm-eval task name -> its primary metric (the value in EvalResult.scores)."""
        return {run.name: run.metric for run in self.runs}

    @property
    def order(self) -> dict[str, list[int]]:
        """lm-eval task name -> document ids in the order they are scored (stages take prefixes of it)."""
        return {run.name: list(run.order) for run in self.runs}

    def evaluate(self, stage: int = -1) -> EvalResult:
        """Score every item up to `stage` (default: the last stage) with the model as it is now."""
        n_stages = len(self.stages)
        if not -n_stages <= stage < n_stages:
            raise IndexError(f"stage {stage} out of range for stages {self.stages}")
        return self._run([(0, run.stage_ends[stage]) for run in self.runs], {r.name: [] for r in self.runs})

    def evaluate_staged(self) -> Iterator[EvalResult]:
        """Yield one EvalResult per stage; each stage scores only its new items and aggregates over all so far."""
        done = {run.name: [] for run in self.runs}
        start, tokens, seconds = [0] * len(self.runs), 0, 0.0
        for k in range(len(self.stages)):
            spans = [(start[i], run.stage_ends[k]) for i, run in enumerate(self.runs)]
            result = self._run(spans, done)
            tokens, seconds = tokens + result.tokens, seconds + result.seconds
            result.tokens, result.seconds = tokens, seconds
            start = [end for _, end in spans]
            yield result

    def _run(self, spans: list[tuple[int, int]], done: dict[str, list[tuple[int, Any]]]) -> EvalResult:
        """Run the requests of docs order[a:b] of each task, append their per-doc metrics to `done`, aggregate."""
        t0 = time.perf_counter()
        by_type: dict[str, list[Any]] = {}
        new: list[tuple[_TaskRun, list[int], list[Any]]] = []
        for run, (a, b) in zip(self.runs, spans, strict=True):
            doc_ids = run.order[a:b]
            insts = [inst for d in doc_ids for inst in run.instances[d]]
            for inst in insts:  # responses of the previous candidate must not leak in
                inst.resps, inst.filtered_resps = [], {}
                by_type.setdefault(inst.request_type, []).extend([inst] * (inst.repeats or 1))
            new.append((run, doc_ids, insts))
        tokens = 0
        with _FirstForwardCheck(self.model):
            for reqtype, reqs in by_type.items():
                outs, n_tok = self._call(reqtype, reqs)
                tokens += n_tok
                for out, inst in zip(outs, reqs, strict=True):
                    inst.resps.append(out)
        for run, doc_ids, insts in new:
            if insts:
                for ensemble in adapter.task_filters(run.task):  # applied to this stage's instances only
                    ensemble.apply(insts)
            for d in doc_ids:
                metrics = run.task.process_results(run.docs[d], [i.filtered_resps[run.filter] for i in run.instances[d]])
                done[run.name].append((d, metrics))
        scores, per_item, n_items = {}, {}, {}
        for run in self.runs:
            rows = done[run.name]
            values = [m[run.metric] for _, m in rows]
            scores[run.name] = float(run.task.aggregation()[run.metric](values))
            per_item[run.name] = [float(v) if isinstance(v, (int, float, bool)) else math.nan for v in values]
            n_items[run.name] = len(rows)
        return EvalResult(scores, per_item, n_items, tokens, time.perf_counter() - t0)

    def _call(self, reqtype: str, reqs: list[Any]) -> tuple[list[Any], int]:
        """`_call_once`, halving the batch size on out-of-memory down to 1 (the smaller size is kept afterwards)."""
        while True:
            try:
                return self._call_once(reqtype, reqs)
            except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is a RuntimeError
                size = self.lm.batch_size_per_gpu
                if not is_out_of_memory(exc) or not isinstance(size, int) or size <= 1:
                    raise
                self.lm.batch_size_per_gpu = max(1, size // 2)
                self.oom_retries += 1
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                log.warning("out of memory at batch size %d; retrying at %d", size, self.lm.batch_size_per_gpu)

    def _call_once(self, reqtype: str, reqs: list[Any]) -> tuple[list[Any], int]:
        """Run one request type through the EvalLM; returns the responses and the tokens of the requests."""
        if reqtype == "loglikelihood":
            # tokenized once at build time: lm-eval would otherwise re-tokenize every request for every candidate
            encoded = [self._ll_tokens[id(inst)] for inst in reqs]
            outs = self.lm.score_tokens(encoded)
            if any(not math.isfinite(ll) for ll, _ in outs):
                raise NonFiniteLogits("non-finite loglikelihood: the candidate model's logits contain NaN or inf")
            # counted as lm-eval counts requests (context + continuation each), so token budgets stay comparable
            return outs, sum(len(c) + len(t) for c, t in encoded)
        outs = getattr(self.lm, reqtype)(reqs, disable_tqdm=True)
        if reqtype == "generate_until":
            n_tok = sum(len(self.lm.tok_encode(inst.args[0])) + len(self.lm.tok_encode(o, add_special_tokens=False))
                        for inst, o in zip(reqs, outs, strict=True))
        else:
            n_tok = sum(len(self.lm.tok_encode(inst.args[0])) for inst in reqs)
            if any(not math.isfinite(o) for o in outs):
                raise NonFiniteLogits("non-finite loglikelihood: the candidate model's logits contain NaN or inf")
        return outs, n_tok


class _FirstForwardCheck:
    """Raises NonFiniteLogits when the first forward pass of an evaluation returns NaN/inf logits."""

    def __init__(self, model: torch.nn.Module) -> None:
        """Remember the model; the hook is attached on entry."""
        self.model, self.handle = model, None

    def _hook(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        """Check the logits once, then detach so later batches cost nothing."""
        self.handle.remove()
        logits = getattr(output, "logits", None)
        if logits is None and isinstance(output, (tuple, list)):
            logits = output[0]
        if logits is not None and not torch.isfinite(logits).all():
            raise NonFiniteLogits("the candidate model's logits contain NaN or inf on the first batch")

    def __enter__(self) -> _FirstForwardCheck:
        """Attach the hook."""
        self.handle = self.model.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        """Detach the hook if no forward pass ran."""
        self.handle.remove()


def _memoize_choices(task: Any, docs: Any) -> None:
    """Render each doc's choices once: process_results re-compiles the Jinja template per doc and per candidate."""
    if task.get_config("output_type") != "multiple_choice":
        return
    render = task.doc_to_choice
    rendered = {id(doc): render(doc) for doc in docs}

    def doc_to_choice(doc: Any, doc_to_choice: Any = None) -> list[str]:
        if doc_to_choice is None and id(doc) in rendered:
            return list(rendered[id(doc)])
        return render(doc, doc_to_choice)

    # an attribute of this Task object only (built by and private to this Evaluator), not a patch of lm-eval
    task.doc_to_choice = doc_to_choice


def _make_lm(model: torch.nn.Module, tokenizer: Any, device: str, batch_size: int, max_length: int | None) -> EvalLM:
    """Move the model to `device` (in place) and wrap it, without copying, in our lm-eval LM."""
    if next(model.parameters()).device != torch.device(device):
        model.to(device)
    model.eval()
    model.tie_weights()  # as HFLM did on wrapping: a tied config's head is the embedding, whatever was loaded
    return EvalLM(model, tokenizer, batch_size=batch_size, max_length=max_length)


def pick_device(device: str) -> str:
    """'auto' -> cuda when available, else cpu; anything else passes through."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
