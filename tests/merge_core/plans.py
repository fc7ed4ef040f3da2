"""The small planning fixture test_plan.py and test_architecture.py share: a 4-layer Llama config and its plans."""

from __future__ import annotations

import yaml

from merge_core.architecture import get_architecture
from merge_core.plan import TensorPlan, plan_tensors
from merge_core.recipe import parse_recipe

LAYERS = 4
CONFIG = {"architectures": ["LlamaForCausalLM"], "num_hidden_layers": LAYERS}
PER_LAYER = 9  # weights per Llama layer without biases


def plans_of(text: str, config: dict = CONFIG, tied: bool = True) -> dict[str, TensorPlan]:
    """Output tensor name -> its TensorPlan, for a recipe given as YAML text."""
    recipe = parse_recipe(yaml.safe_load(text), "r.yaml")
    return {p.out_name: p for p in plan_tensors(recipe, get_architecture(config), config, tied)}
