"""Faults inside a trial: the trial fails with its reason, the search goes on; a streak stops it (one line, exit 1);
out of memory on a batch is retried at half the batch size, down to 1."""

from __future__ import annotations

import pytest
import torch
from optuna.trial import TrialState

from tests.helpers.fake_cli import main
from tests.reliability import faulty_eval
from tests.reliability.helpers import counted, env_for, make_models, study_of, write_config

ONE_STAGE = ["tasks.stages=[1.0]", "pruner=none"]  # scored by FaultyEvaluator, injected in code


@pytest.fixture
def fake_world(tmp_path, monkeypatch):
    models = make_models(tmp_path / "models")
    for k, v in env_for(models).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(faulty_eval.FaultyEvaluator, "calls", 0)
    # one stage per trial: evaluation call n is trial n-1's
    return write_config(tmp_path, models, export="false", report="false")


def test_failed_trials_keep_their_reason_and_the_search_goes_on(fake_world, monkeypatch, capsys):
    monkeypatch.setenv("FAULTS", "-,oom,-,io,nan")
    assert main(["search", f"conf={fake_world}", "n_trials=6", *ONE_STAGE], faulty_eval.FaultyEvaluator) == 0
    study = study_of(fake_world)
    trials = study.get_trials()
    assert len(counted(study)) == 6 == len(trials)  # failed evaluations count toward n_trials
    reasons = {t.number: t.user_attrs.get("fail_reason", "") for t in trials if t.state == TrialState.FAIL}
    assert sorted(reasons) == [1, 3, 4]
    assert reasons[1].startswith("OutOfMemoryError: CUDA out of memory")
    assert reasons[3].startswith("OSError: toy_succ_dev: data file vanished")
    assert reasons[4].startswith("FloatingPointError: non-finite")
    assert trials[5].state == TrialState.COMPLETE  # the streak counter restarted after trial 2


def test_a_streak_of_failures_stops_with_one_line_and_exit_1(fake_world, monkeypatch, capsys):
    monkeypatch.setenv("FAULTS", "*oom")
    capsys.readouterr()
    assert main(["search", f"conf={fake_world}", "n_trials=6", "max_failures_in_row=3", *ONE_STAGE],
                faulty_eval.FaultyEvaluator) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "3 trials in a row failed" in err[0] and "max_failures_in_row" in err[0]
    trials = study_of(fake_world).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL] * 3
    assert all("out of memory" in t.user_attrs["fail_reason"] for t in trials)


@pytest.fixture(scope="module")
def evaluator(tiny_models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evolve.evaluate import Evaluator

    path = tiny_models["base"]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, trust_remote_code=False)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    return model, lambda: Evaluator(model, tok, ["retention"], limit=8, batch_size=8, device="cpu")


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB"),
                                   RuntimeError("DefaultCPUAllocator: can't allocate memory: out of memory")])
def test_out_of_memory_on_a_batch_is_retried_at_half_size(evaluator, error):
    model, make = evaluator
    clean = make().evaluate()
    ev = make()
    raised = []

    def once(module, args):
        if not raised:
            raised.append(args[0].shape[0])
            raise error

    handle = model.register_forward_pre_hook(once)
    try:
        result = ev.evaluate()
    finally:
        handle.remove()
    assert raised == [8] and ev.oom_retries == 1 and ev.lm.batch_size_per_gpu == 4
    assert result.scores == clean.scores and result.per_item == clean.per_item


def test_out_of_memory_at_batch_size_1_fails(evaluator):
    model, make = evaluator
    ev = make()
    sizes = []

    def always(module, args):
        sizes.append(args[0].shape[0])
        raise torch.cuda.OutOfMemoryError("CUDA out of memory.")

    handle = model.register_forward_pre_hook(always)
    try:
        with pytest.raises(torch.cuda.OutOfMemoryError):
            ev.evaluate()
    finally:
        handle.remove()
    assert sizes == [8, 4, 2, 1] and ev.oom_retries == 3
