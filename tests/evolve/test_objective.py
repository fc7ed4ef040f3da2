"""evolve.objective: weights, task scores, the combined value and single/multi-objective values and names."""

import pytest
from omegaconf import OmegaConf

from evolve.objective import (
    combined,
    is_multi,
    metric_names,
    n_objectives,
    objective_values,
    rank_value,
    task_score,
    task_weights,
)


def _cfg(names=("a", "b"), weights=None, multi=False):
    return OmegaConf.create({"tasks": {"names": list(names), "weights": weights},
                             "optimizer": {"multi_objective": multi}})


def test_weights_are_normalized_and_equal_when_null():
    assert task_weights(_cfg()) == [0.5, 0.5]
    assert task_weights(_cfg(weights=[3, 1])) == [0.75, 0.25]
    assert task_weights(_cfg(names=("a", "b", "c"), weights=[1, 1, 2])) == [0.25, 0.25, 0.5]


def test_task_score_by_base_name_or_split_key():
    assert task_score({"a_dev": 0.25}, "a") == 0.25
    assert task_score({"a_test": 0.5, "a_dev": 0.25}, "a", "test") == 0.5
    assert task_score({"a": 0.75, "a_dev": 0.25}, "a") == 0.75  # a task named as lm-eval names it wins
    with pytest.raises(KeyError, match="no score for task 'b'"):
        task_score({"a_dev": 0.25}, "b")


def test_single_objective_is_the_weighted_mean_multi_is_one_value_per_task():
    scores = {"a_dev": 0.2, "b_dev": 0.6, "a_test": 1.0, "b_test": 0.0}
    single = _cfg(weights=[3, 1])
    assert objective_values(single, scores) == [pytest.approx(0.75 * 0.2 + 0.25 * 0.6)]
    assert combined(scores, single, "test") == pytest.approx(0.75)
    assert objective_values(single, scores) == [combined(scores, single, "dev")]  # the very same number
    multi = _cfg(multi=True)
    assert objective_values(multi, scores) == [0.2, 0.6]
    assert (is_multi(single), is_multi(multi)) == (False, True)
    assert (n_objectives(single), n_objectives(multi)) == (1, 2)


def test_metric_names_label_each_objective():
    assert metric_names(_cfg()) == ["combined_dev"]
    assert metric_names(_cfg(names=("arith", "units_dev"), multi=True)) == ["arith_dev", "units_dev"]


def test_rank_value_is_the_value_itself_or_the_mean():
    assert rank_value([0.3]) == 0.3
    assert rank_value([0.2, 0.6]) == pytest.approx(0.4)
