"""The recipe's tokenizer settings (`tokenizer:` block) and the output folder's tokenizer files."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from merge_core.compat import strip_remote_code
from merge_core.errors import UserError

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json",
    "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
)


CHAT_TEMPLATE_NAMES = ("chatml", "llama3")


def check_chat_template(value: str | None, where: str) -> None:
    """Refuse a `chat_template` that is neither auto, a known name, nor Jinja text (mergekit's rule)."""
    if value is None or value == "auto" or value in CHAT_TEMPLATE_NAMES:
        return
    if len(value) < 20 or "{" not in value:
        raise UserError(f"{where}: chat_template: {value!r} is not a template name or Jinja text; "
                        f"use auto, {', '.join(CHAT_TEMPLATE_NAMES)}, or paste the template's Jinja text")


def chat_template_text(value: str | None, folders: list[Path]) -> str | None:
    """The Jinja text for a recipe's `chat_template`: None keeps the tokenizer source's; auto is the most common
    template among the models' tokenizers (mergekit); a name reads merge_core/_data/chat_templates/NAME.jinja."""
    from collections import Counter
    from importlib import resources

    if value is None:
        return None
    if value == "auto":
        found = []
        for folder in folders:
            template = _folder_template(folder)
            if template:
                found.append(template.strip())
        return Counter(found).most_common(1)[0][0] if found else None
    if value in CHAT_TEMPLATE_NAMES:
        return resources.files("merge_core").joinpath(f"_data/chat_templates/{value}.jinja").read_text(encoding="utf-8")
    return value


def _folder_template(folder: Path) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    try:
        data = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    template = data.get("chat_template") if isinstance(data, dict) else None
    if isinstance(template, list):  # named templates: the default one
        template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"), None)
    return template if isinstance(template, str) else None


def write_tokenizer_files(dst: Path, folder: Path, built: Any = None, chat_template: str | None = None) -> None:
    """The output's tokenizer: `built` (a union or extended tokenizer) saved, else `folder`'s files copied;
    `chat_template` (Jinja text) replaces the template. tokenizer_config.json never keeps auto_map."""
    if built is None and chat_template is None:
        copy_tokenizer_files(folder, dst)
        return
    if built is None:
        from transformers import AutoTokenizer

        built = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    if chat_template is not None:
        built.chat_template = chat_template
    built.save_pretrained(str(dst))
    cfg = dst / "tokenizer_config.json"
    if cfg.is_file():
        data = json.loads(cfg.read_text(encoding="utf-8"))
        cfg.write_text(json.dumps(strip_remote_code(data), indent=2) + "\n", encoding="utf-8")


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


# --- the recipe's `tokenizer:` block (mergekit 0.1.5's TokenizerConfig) ---------------------------------------------
@dataclass(frozen=True)
class TokenSource:
    """Where a token's embedding row comes from: a model's row for it, a model's row for another token, or zeros."""

    kind: str  # "model" (that model's row for this token), "model_token" or "zero"
    model: str | None = None
    token_id: int | None = None
    token: str | None = None


@dataclass(frozen=True)
class TokenSetting:
    """One entry of `tokenizer.tokens`: its source (None: mergekit's default rule) and `force`."""

    source: TokenSource | None = None
    force: bool = False


@dataclass(frozen=True)
class TokenizerBlock:
    """`tokenizer: {source, tokens, pad_to_multiple_of}`; source defaults to union, as in mergekit."""

    source: str = "union"
    tokens: tuple[tuple[str, TokenSetting], ...] = ()
    pad_to_multiple_of: int | None = None


def parse_tokenizer_block(value: Any, where: str) -> TokenizerBlock:
    """Validate a recipe's `tokenizer:` mapping."""
    def fail(key: str, problem: str, fix: str) -> UserError:
        return UserError(f"{where}: {key}: {problem}; {fix}")

    if not isinstance(value, dict):
        raise fail("tokenizer", f"expected a mapping, got {type(value).__name__}", "write source:, tokens:, pad_to_multiple_of:")
    for k in value:
        if k not in ("source", "tokens", "pad_to_multiple_of"):
            raise fail(f"tokenizer.{k}", "unknown key", "use source, tokens or pad_to_multiple_of")
    source = value.get("source", "union")
    if not isinstance(source, str) or not source:
        raise fail("tokenizer.source", f"{source!r} is not a string", "write base, union or a model id")
    pad = value.get("pad_to_multiple_of")
    if pad is not None and (not isinstance(pad, int) or isinstance(pad, bool) or pad < 1):
        raise fail("tokenizer.pad_to_multiple_of", f"{pad!r} is not a positive integer", "write e.g. 64")
    tokens = value.get("tokens") or {}
    if not isinstance(tokens, dict):
        raise fail("tokenizer.tokens", "expected a mapping of token -> {source, force}", "write tokens: {'<tok>': {source: MODEL}}")
    out = []
    for tok, setting in tokens.items():
        key = f"tokenizer.tokens[{tok!r}]"
        setting = {} if setting is None else setting
        if not isinstance(tok, str) or not isinstance(setting, dict) or set(setting) - {"source", "force"}:
            raise fail(key, f"{setting!r} is not {{source, force}}", "give each token a source and optionally force: true")
        force = setting.get("force", False)
        if not isinstance(force, bool):
            raise fail(f"{key}.force", f"{force!r} is not true or false", "write force: true or force: false")
        out.append((tok, TokenSetting(_token_source(setting.get("source"), key, fail), force)))
    return TokenizerBlock(source, tuple(out), pad)


def _token_source(src: Any, key: str, fail) -> TokenSource | None:
    if src is None:
        return None
    if isinstance(src, str) and src:
        return TokenSource("model", model=src)
    if isinstance(src, dict) and src.get("kind") == "zero" and set(src) == {"kind"}:
        return TokenSource("zero")
    if isinstance(src, dict) and src.get("kind") == "model_token" and set(src) <= {"kind", "model", "token_id", "token"}:
        model, tid, tok = src.get("model"), src.get("token_id"), src.get("token")
        ok_id = tid is None or (isinstance(tid, int) and not isinstance(tid, bool) and tid >= 0)
        if isinstance(model, str) and model and (tid is None) != (tok is None) and ok_id and (tok is None or isinstance(tok, str)):
            return TokenSource("model_token", model=model, token_id=tid, token=tok)
    raise fail(f"{key}.source", f"{src!r} is not a token source",
               "write a model id, {kind: zero} or {kind: model_token, model: ID, token: STR (or token_id: INT)}")


def tokenizer_block_to_dict(block: TokenizerBlock) -> dict[str, Any]:
    """The mergekit mapping of a TokenizerBlock (inverse of parse_tokenizer_block)."""
    out: dict[str, Any] = {"source": block.source}
    if block.tokens:
        out["tokens"] = {}
        for tok, s in block.tokens:
            entry: dict[str, Any] = {}
            if s.source is not None:
                src = s.source
                entry["source"] = src.model if src.kind == "model" else {"kind": src.kind, **{
                    k: v for k, v in (("model", src.model), ("token_id", src.token_id), ("token", src.token)) if v is not None}}
            if s.force:
                entry["force"] = True
            out["tokens"][tok] = entry
    if block.pad_to_multiple_of is not None:
        out["pad_to_multiple_of"] = block.pad_to_multiple_of
    return out
