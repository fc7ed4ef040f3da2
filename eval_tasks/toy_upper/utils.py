"""Data of the toy_upper task, read from data/ beside this file."""

from eval_tasks.loader import jsonl_splits


def load(**kwargs):
    """All splits as a DatasetDict (lm-eval's custom_dataset hook)."""
    return jsonl_splits(__file__)
