"""Fixtures of the merge_core tests: a few recipes over the session's tiny models."""

from __future__ import annotations

import pytest


@pytest.fixture
def sample_recipes(tiny_models) -> dict[str, dict]:
    """Recipe mappings by name: TIES with gradients, a filter and a mixed tie; seeded DARE; SLERP over a sharded source."""
    return _recipes(tiny_models)


def _recipes(m):
    return {
        "ties_gradient_filter_mixed_tie": {
            "merge_method": "ties", "base_model": m["base"],
            "models": [
                {"model": m["ft_a"], "parameters": {"weight": [0.2, 0.9], "density": 0.6}},
                {"model": m["untied"], "parameters": {
                    "weight": [{"filter": "mlp", "value": [1.0, 0.1]}, {"value": 0.5}], "density": 0.8}},
            ],
        },
        "dare_ties_seeded": {
            "merge_method": "dare_ties", "base_model": m["base"], "evolve_merge": {"seed": 7},
            "models": [{"model": m["ft_a"], "parameters": {"weight": 0.7, "density": 0.5}},
                       {"model": m["ft_b"], "parameters": {"weight": 0.6, "density": 0.4}}],
        },
        "slerp_sharded_source": {
            "merge_method": "slerp", "base_model": m["base"], "parameters": {"t": [0.0, 0.3, 1.0]},
            "models": [{"model": m["base"]}, {"model": m["sharded"]}],
        },
    }
