"""Merge methods: one per-tensor function each, all in the METHODS registry."""

from merge_core.methods import basic, passthrough, task_arithmetic  # noqa: F401  (importing registers them)
from merge_core.methods.registry import BOOL_PARAMS, METHODS, PARAM_BOUNDS, REQUIRED, MethodFn, MethodSpec, register

__all__ = ["BOOL_PARAMS", "METHODS", "PARAM_BOUNDS", "REQUIRED", "MethodFn", "MethodSpec", "register"]
