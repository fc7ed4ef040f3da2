"""Loads this task's JSONL splits from data/ beside this file."""

from eval_tasks.loader import jsonl_splits


def load(**kwargs):
    """Return the task's DatasetDict (kwargs from lm-eval's metadata are ignored)."""
    return jsonl_splits(__file__)
