"""The output folder's tokenizer files: copied from the tokenizer source, without remote-code entries."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from merge_core.compat import strip_remote_code

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json",
    "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
)


def copy_tokenizer_files(src: Path, dst: Path) -> None:
    """Copy the tokenizer files of folder `src` into `dst`; tokenizer_config.json loses auto_map (remote code)."""
    for name in TOKENIZER_FILES:
        path = src / name
        if not path.is_file():
            continue
        if name == "tokenizer_config.json":
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                data = None
            if isinstance(data, dict):
                (dst / name).write_text(json.dumps(strip_remote_code(data), indent=2) + "\n", encoding="utf-8")
                continue
        shutil.copyfile(path, dst / name)
