"""Checks of the models that must pass before anything heavy is built: layer count, tokenizer files."""

from __future__ import annotations

import re
from pathlib import Path

from evolve.errors import UserError

MAX_LAYERS = 1024  # the largest Llama has 126 layers; a bigger number is a damaged config (and would hang the genome)
TOKENIZER_ANY = ("tokenizer.json", "tokenizer.model", "vocab.json")
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def layer_count(folder: str | Path, key: str) -> int:
    """The layer count of a model folder (its architecture's config key): present, an int in [1, MAX_LAYERS], and
    what its weights hold."""
    from merge_core.architecture import family
    from merge_core.checkpoint import Checkpoint

    ck = Checkpoint(Path(folder))
    where = Path(folder) / "config.json"
    field = family(ck.config).num_layers_key
    n = ck.config.get(field)
    if n is None:
        raise UserError(f"{key}: {where} has no {field}; restore the model's original config.json")
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_LAYERS:
        raise UserError(f"{key}: {where}: {field} {n!r} is not an integer in [1, {MAX_LAYERS}]; restore "
                        "the model's original config.json")
    held = {int(m.group(1)) for name in ck.names if (m := _LAYER.match(name))}
    if held and max(held) + 1 != n:
        raise UserError(f"{key}: {where} says {field} {n} but the weights hold {max(held) + 1} layers; "
                        "restore the config.json that belongs to these weights")
    return n


def check_tokenizer(folder: str | Path, key: str) -> None:
    """The tokenizer is loaded from the base folder: it must hold the tokenizer's files."""
    if not any((Path(folder) / name).is_file() for name in TOKENIZER_ANY):
        raise UserError(f"{key}: {folder} has no tokenizer files ({', '.join(TOKENIZER_ANY)}); copy them from the "
                        "original model into that folder")
