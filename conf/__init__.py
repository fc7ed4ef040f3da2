"""Hydra configs shipped with the package; PATH is the config directory."""
from pathlib import Path

PATH = Path(__file__).resolve().parent
