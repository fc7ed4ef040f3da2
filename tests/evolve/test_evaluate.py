"""The Evaluator and its EvalLM: equal to lm-eval's CLI and HFLM item by item, live weights, subsets, stages, guards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import eval_tasks
from evolve.errors import UserError
from evolve.evaluate import Evaluator, NonFiniteLogits

REPO = Path(__file__).resolve().parents[2]
LIMIT = 12
REL = 1e-5  # float32 rounding: HFLM itself moves by ~3e-6 relative between batch sizes 1 and 32 on SmolLM2


@pytest.fixture(scope="module")
def saved(tiny_models: dict[str, Path]) -> Path:
    """A saved tiny random Llama with a char tokenizer (from the shared fixtures)."""
    return tiny_models["base"]


def _load(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def live(saved: Path):
    """One live model and a dev evaluator on retention (multiple_choice), shared by the tests that restore it."""
    model, tok = _load(saved)
    return model, Evaluator(model, tok, ["retention"], limit=40, batch_size=8, device="cpu")


def _lm_eval_cli(model_dir: Path, tasks: list[str], out: Path) -> dict:
    """Run `python -m lm_eval` from another working directory; returns {task: {"score": ..., "samples": [...]}}."""
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={model_dir},dtype=float32",
           "--device", "cpu", "--batch_size", "8", "--include_path", str(eval_tasks.PATH), "--tasks", ",".join(tasks),
           "--limit", str(LIMIT), "--output_path", str(out), "--log_samples"]
    proc = subprocess.run(cmd, cwd=out.parent, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]
    found = {}
    for task in tasks:
        samples = [json.loads(line) for f in out.rglob(f"samples_{task}_*.jsonl") for line in f.read_text().splitlines()]
        found[task] = {"results": results[task], "samples": sorted(samples, key=lambda s: s["doc_id"])}
    return found


@pytest.mark.slow  # lm-eval's CLI indexes its ~14k built-in task YAMLs first (about 20 s of CPU)
def test_equals_lm_eval_cli(saved: Path, tmp_path: Path) -> None:
    """Scores, per-item values and generations match the lm-eval CLI for a multiple_choice and a generate_until task."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    cli = _lm_eval_cli(saved, ["retention_test", "arith_test"], cwd / "out")
    model, tok = _load(saved)
    ev = Evaluator(model, tok, ["retention", "arith"], split="test", allow_test=True, limit=LIMIT, batch_size=8,
                   device="cpu")
    assert ev.metrics == {"retention_test": "acc", "arith_test": "exact_match"}
    result = ev.evaluate()
    assert result.n_items == {"retention_test": LIMIT, "arith_test": LIMIT}
    for task, metric in ev.metrics.items():
        assert result.scores[task] == pytest.approx(cli[task]["results"][f"{metric},none"], abs=1e-9)
        assert result.per_item[task] == [float(s[metric]) for s in cli[task]["samples"]]
    # loglikelihoods and generated text item by item, not only the (coarse) aggregate
    runs = {run.name: run for run in ev.runs}
    for s in cli["retention_test"]["samples"]:
        ours = [inst.resps[0][0] for inst in runs["retention_test"].instances[s["doc_id"]]]
        assert ours == pytest.approx([float(r[0][0]) for r in s["resps"]], rel=REL)
    gens = [runs["arith_test"].instances[s["doc_id"]][0].resps[0] for s in cli["arith_test"]["samples"]]
    assert gens == [s["resps"][0][0] for s in cli["arith_test"]["samples"]]
    assert any(g.strip() for g in gens)
    assert result.tokens > 0 and result.seconds > 0


def test_weights_changed_in_place_change_the_score(live) -> None:
    """The evaluator wraps the live model: an in-place change shows in the next result; restoring restores it."""
    model, ev = live
    before = ev.evaluate()
    weight = model.model.layers[0].mlp.down_proj.weight
    saved = weight.detach().clone()
    with torch.no_grad():
        weight.mul_(8.0)
    try:
        changed = ev.evaluate()
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    assert changed.per_item["retention_dev"] != before.per_item["retention_dev"]
    again = ev.evaluate()
    assert again.per_item == before.per_item and again.scores == before.scores


def test_nonfinite_logits_raise_and_recover(live) -> None:
    """NaN weights raise NonFiniteLogits; the next healthy candidate scores normally."""
    model, ev = live
    before = ev.evaluate()
    norm = model.model.norm.weight
    saved = norm.detach().clone()
    with torch.no_grad():
        norm.fill_(float("nan"))
    try:
        with pytest.raises(NonFiniteLogits):
            ev.evaluate()
    finally:
        with torch.no_grad():
            norm.copy_(saved)
    assert ev.evaluate().scores == before.scores


def test_subsets_are_seeded_and_stages_are_supersets(saved: Path) -> None:
    """A seeded subset is the same for equal seeds; each stage adds items and only computes the new ones."""
    model, tok = _load(saved)
    kwargs = dict(limit=20, stages=(0.25, 0.5, 1.0), batch_size=8, device="cpu")
    ev = Evaluator(model, tok, ["retention"], subset_seed=7, **kwargs)
    order = ev.order["retention_dev"]
    assert order == Evaluator(model, tok, ["retention"], subset_seed=7, **kwargs).order["retention_dev"]
    assert order != Evaluator(model, tok, ["retention"], subset_seed=8, **kwargs).order["retention_dev"]
    assert order != list(range(20)) and len(set(order)) == 20
    assert Evaluator(model, tok, ["retention"], **kwargs).order["retention_dev"] == list(range(20))

    staged = list(ev.evaluate_staged())
    assert [r.n_items["retention_dev"] for r in staged] == [5, 10, 20]
    items = [r.per_item["retention_dev"] for r in staged]
    assert items[1][:5] == items[0] and items[2][:10] == items[1]
    for k, r in enumerate(staged):
        single = ev.evaluate(stage=k)
        assert single.per_item == r.per_item and single.scores == r.scores
        # cumulative tokens equal one pass over the same items: earlier stages were not recomputed
        assert single.tokens == r.tokens
    assert staged[-1].scores["retention_dev"] == pytest.approx(sum(items[2]) / 20)


def test_test_split_and_bad_arguments_are_refused(saved: Path) -> None:
    """Searching on test needs allow_test; bad stages, limits and unknown names are UserErrors before any work."""
    model, tok = _load(saved)
    with pytest.raises(UserError, match="held out"):
        Evaluator(model, tok, ["retention"], split="test")
    with pytest.raises(UserError, match="held out"):
        Evaluator(model, tok, ["retention_test"])
    with pytest.raises(UserError, match="stages"):
        Evaluator(model, tok, ["retention"], stages=(0.5, 0.25))
    with pytest.raises(UserError, match="limit"):
        Evaluator(model, tok, ["retention"], limit=0)
    with pytest.raises(UserError, match="unknown task 'no_such_task_xyz'.*retention"):
        Evaluator(model, tok, ["no_such_task_xyz"])


# ---- EvalLM (our lm-eval LM) against lm-eval's HFLM, item by item -------------------------------------------------

def _hflm(model, tok, batch_size: int, **kwargs):
    """lm-eval's stock HFLM around the same model object."""
    from lm_eval.models.huggingface import HFLM

    from evolve.tasks import quiet

    with quiet("lm_eval"):
        return HFLM(pretrained=model, tokenizer=tok, device="cpu", batch_size=batch_size, **kwargs)


def _requests(kind: str, args: list[tuple]) -> list:
    """lm-eval Instances of one request type."""
    from lm_eval.api.instance import Instance

    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


@pytest.mark.parametrize("batch_size", [1, 5])
def test_task_items_score_as_hflm_item_by_item(saved: Path, batch_size: int) -> None:
    """eval_tasks samples (multi-token choices, a BOS-adding tokenizer): same loglikelihoods, greedy flags, metrics."""
    model, tok = _load(saved)
    ev = Evaluator(model, tok, ["retention", "toy_succ"], limit=10, batch_size=batch_size, device="cpu")
    result = ev.evaluate()
    ref = _hflm(model, tok, batch_size)
    for run in ev.runs:
        insts = [inst for d in run.order for inst in run.instances[d]]
        assert any(len(ev._ll_tokens[id(i)][1]) > 1 for i in insts)  # multi-token continuations are exercised
        theirs = ref.loglikelihood(insts, disable_tqdm=True)
        ours = [inst.resps[0] for inst in insts]
        assert [ll for ll, _ in ours] == pytest.approx([ll for ll, _ in theirs], rel=REL)
        assert [g for _, g in ours] == [g for _, g in theirs]
        by_inst = dict(zip(map(id, insts), theirs, strict=True))
        metric = [run.task.process_results(run.docs[d], [by_inst[id(i)] for i in run.instances[d]])[run.metric]
                  for d in run.order]
        assert result.per_item[run.name] == [float(m) for m in metric]


@pytest.mark.parametrize("batch_size", [1, 3])
def test_loglikelihood_edge_requests_equal_hflm(saved: Path, batch_size: int) -> None:
    """Trailing spaces, empty context, BOS already in the text, duplicates, left truncation, shared contexts."""
    from evolve.lm import EvalLM

    model, tok = _load(saved)
    long = "the quick brown fox jumps over the lazy dog " * 2
    args = [("Question: sky?\nAnswer: ", "blue"), ("Question: sky?\nAnswer: ", "green grass"),
            ("Question: sky?\nAnswer:", " blue"), ("", "hello"), (tok.bos_token + "abc", " d"),
            ("abc", " d"), ("abc", " d"), (long, " end"), (long, " and more words"), ("x" * 10, "y" * 20)]
    reqs = _requests("loglikelihood", args)
    ours = EvalLM(model, tok, batch_size=batch_size, max_length=24).loglikelihood(reqs)
    theirs = _hflm(model, tok, batch_size, max_length=24).loglikelihood(reqs, disable_tqdm=True)
    assert [ll for ll, _ in ours] == pytest.approx([ll for ll, _ in theirs], rel=REL)
    assert [g for _, g in ours] == [g for _, g in theirs]


def test_a_shared_prompt_runs_once(saved: Path) -> None:
    """Four multi-token choices of one prompt: one prompt pass plus one pass of the choices' tokens from the cache."""
    from evolve.lm import EvalLM

    model, tok = _load(saved)
    prompt = "Question: which colour is the sky on a clear day?\nAnswer:"
    choices = [" blue", " green", " bright red", " yellow"]
    lm = EvalLM(model, tok, batch_size=8)
    shapes = []
    handle = model.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
    try:
        lm.loglikelihood(_requests("loglikelihood", [(prompt, c) for c in choices]))
    finally:
        handle.remove()
    ctx, _ = lm.encode_pair(prompt, choices[0])
    longest = max(len(lm.encode_pair(prompt, c)[1]) for c in choices)
    assert shapes == [(1, len(ctx)), (4, longest - 1)]


@pytest.mark.parametrize("batch_size", [1, 3])
def test_generation_stops_per_sequence_as_hflm(saved: Path, batch_size: int) -> None:
    """Greedy texts equal HFLM's when rows stop at different steps: multi-token until strings, EOS, max_gen_toks."""
    from evolve.lm import EvalLM

    model, tok = _load(saved)
    with torch.no_grad():  # louder residual branches: the random model's greedy text then changes along the way
        for layer in model.model.layers:
            layer.mlp.down_proj.weight.mul_(30)
            layer.self_attn.o_proj.weight.mul_(30)
    # each row meets a stop string (two tokens long) at its own step, one ends at an EOS ("E"), some run to the end
    gen = {"until": ["$b", "BB", "vv", "dd", "44"], "max_gen_toks": 12, "do_sample": False}
    prompts = ["abc", "0123", "zzzz yy", "The cat", "next 14 3 77 =", "hello world", "Question: 2+2?\nAnswer:"]
    reqs = _requests("generate_until", [(p, dict(gen)) for p in prompts])
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids("E")
    lm = EvalLM(model, tok, batch_size=batch_size)
    ours = lm.generate_until(reqs)
    assert ours == _hflm(model, tok, batch_size).generate_until(reqs, disable_tqdm=True)
    assert len({len(t) for t in ours}) > 3 and any(t.endswith("E") for t in ours) and lm._reference is None


def test_other_generation_settings_go_to_hflm(saved: Path) -> None:
    """Settings the greedy path does not implement (here a repetition penalty) give HFLM's own output."""
    from evolve.lm import EvalLM

    model, tok = _load(saved)
    gen = {"until": ["\n"], "max_gen_toks": 6, "do_sample": False, "repetition_penalty": 1.5}
    reqs = _requests("generate_until", [(p, dict(gen)) for p in ["abc", "hello world"]])
    lm = EvalLM(model, tok, batch_size=2)
    assert lm.generate_until(reqs) == _hflm(model, tok, 2).generate_until(reqs, disable_tqdm=True)
    assert lm._reference is not None


def test_rolling_loglikelihood_equals_hflm(saved: Path) -> None:
    """Texts longer than max_length are scored over HFLM's disjoint windows."""
    from evolve.lm import EvalLM

    model, tok = _load(saved)
    reqs = _requests("loglikelihood_rolling", [("a b c d e f g h i j k l m n o p q r s t",), ("short",)])
    ours = EvalLM(model, tok, batch_size=2, max_length=16).loglikelihood_rolling(reqs)
    theirs = _hflm(model, tok, 2, max_length=16).loglikelihood_rolling(reqs, disable_tqdm=True)
    assert ours == pytest.approx(theirs, rel=REL)


def test_a_layer_path_repeating_one_module_scores_as_its_export(saved: Path) -> None:
    """A live layer path that reuses one decoder module twice (merge_core.path) scores as the exported model would.

    The repeats share one cache slot, so a key/value cache would mix their keys; the exported model has two layers.
    """
    import copy

    from evolve.lm import EvalLM

    model, tok = _load(saved)
    first, second = model.model.layers
    exported = copy.deepcopy(model)
    model.model.layers = torch.nn.ModuleList([first, second, second])  # one module at two positions
    twin = copy.deepcopy(second)
    twin.self_attn.layer_idx = 2
    exported.model.layers = torch.nn.ModuleList([exported.model.layers[0], exported.model.layers[1], twin])
    for m in (model, exported):
        m.config.num_hidden_layers = 3
    lls = _requests("loglikelihood", [("Question: sky?\nAnswer:", " blue"), ("Question: sky?\nAnswer:", " green")])
    gens = _requests("generate_until", [(p, {"until": ["\n"], "max_gen_toks": 6}) for p in ["abc", "hello"]])
    ours, theirs = EvalLM(model, tok, batch_size=2), EvalLM(exported, tok, batch_size=2)
    assert [x for x, _ in ours.loglikelihood(lls)] == pytest.approx([x for x, _ in theirs.loglikelihood(lls)], rel=REL)
    assert ours.generate_until(gens) == theirs.generate_until(gens)
