"""The fake evaluator of tests/evolve with scheduled faults: FAULTS names, per evaluation call, what to raise."""

from __future__ import annotations

import os

import torch

from tests.helpers.fake_eval import FakeEvaluator

# FAULTS="-,oom,-,io" -> call 1 fine, call 2 out of memory, call 3 fine, call 4 OSError, later calls fine;
# FAULTS="*oom" -> every call runs out of memory
_ERRORS = {
    "oom": lambda: torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    "nan": lambda: FloatingPointError("non-finite loglikelihood"),
    "io": lambda: OSError("toy_succ_dev: data file vanished during the evaluation"),
}


class FaultyEvaluator(FakeEvaluator):
    """FakeEvaluator whose evaluate() raises what FAULTS schedules for its n-th call."""

    calls = 0

    def evaluate(self):
        """Raise the scheduled fault of this call, else score as the fake evaluator does."""
        type(self).calls += 1
        faults = os.environ.get("FAULTS", "")
        if faults.startswith("*"):
            raise _ERRORS[faults[1:]]()
        plan = faults.split(",")
        if type(self).calls <= len(plan) and plan[type(self).calls - 1] in _ERRORS:
            raise _ERRORS[plan[type(self).calls - 1]]()
        return super().evaluate()
