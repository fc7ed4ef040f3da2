"""evolve-merge: evolutionary search over per-layer merge parameters, scored with lm-eval."""

__version__ = "0.1.0"
