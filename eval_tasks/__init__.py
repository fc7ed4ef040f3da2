"""lm-eval task YAMLs and their local data; PATH is the folder to pass as --include_path."""

from eval_tasks.loader import PATH

__all__ = ["PATH"]
