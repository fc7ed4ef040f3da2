"""Progress output a person can read: our own labelled bars stay, libraries' unlabeled or internal bars go quiet."""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
from collections.abc import Iterator

# one frame of a tqdm bar: "' 28%|██▊       | 33/120 [00:00<00:00, 327.01it/s]"
_BAR_FRAME = re.compile(r"\d+%\|.*\|\s*\d+/\d+\s*\[")


def quiet_library_bars() -> None:
    """Silence transformers' "Loading weights" / "Writing model shards" bars (HF_HUB_DISABLE_PROGRESS_BARS=0 keeps them)."""
    if "HF_HUB_DISABLE_PROGRESS_BARS" in os.environ:
        return  # the user's explicit choice
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read by transformers when it is imported
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


@contextlib.contextmanager
def quiet_bars() -> Iterator[None]:
    """Drop the tqdm bars a library writes to sys.stderr inside the block; anything else it writes passes through.

    lm-eval's request building shows an unlabeled `0/250` bar per task and has no switch for it.
    """
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stderr(buffer):
            yield
    finally:
        kept = [line for line in re.split(r"[\r\n]+", buffer.getvalue()) if line.strip() and not _BAR_FRAME.search(line)]
        if kept:
            sys.stderr.write("\n".join(kept) + "\n")
