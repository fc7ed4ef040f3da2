"""lm-eval task YAMLs and their local data; PATH is the folder to pass as --include_path."""

from pathlib import Path

PATH = Path(__file__).resolve().parent
