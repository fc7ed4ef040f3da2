"""Apply a recipe into a Hugging Face model folder, streaming tensor by tensor into shards, renamed into place at the end."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path

import torch
import yaml
from safetensors import SafetensorError

from merge_core.device import resolve_device, resolve_dtype
from merge_core.errors import UserError
from merge_core.files import atomic_write_text, glob_escape, remove_stale_temps, temp_tag  # noqa: F401 (re-exported)
from merge_core.overlap import refuse_overlap
from merge_core.plan import merge_tensor, output_layers, plan_tensors
from merge_core.recipe import Recipe, portable_dict, recipe_to_dict
from merge_core.shards import ShardWriter
from merge_core.sources import Sources, has_nonfinite
from merge_core.tokenizer import TOKENIZER_FILES, chat_template_text, write_tokenizer_files  # noqa: F401  (re-export)

CARD_MARKER = "<!-- written by evolve-merge -->"
DEFAULT_SHARD_SIZE = 2 * 1000**3
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS)


def check_out_dir(out_dir: str | os.PathLike) -> Path:
    """Refuse an output path we must not overwrite: a file, or a non-empty folder that is not an earlier output of ours."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"out: {out} is a file; give a folder path (it is created)")
    if out.is_dir() and any(out.iterdir()) and CARD_MARKER not in _read(out / "README.md"):
        raise UserError(f"out: {out} is a non-empty folder not written by evolve-merge; choose a new or empty folder")
    return out


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""


def write_model(
    recipe: Recipe,
    sources: Sources,
    out_dir: str | os.PathLike,
    *,
    shard_size: int = DEFAULT_SHARD_SIZE,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    card_extra: str = "",
    check_finite: bool = True,
) -> Path:
    """Merge `recipe` into a HF folder at `out_dir` (atomic: built in a temp folder beside it, then renamed).

    An existing `out_dir` is replaced only if it is empty or an earlier output of ours (its README carries our
    marker). dtype: None -> the recipe's out_dtype or dtype, else the base model's. `card_extra` is appended
    to the README model card (e.g. scores). check_finite: refuse a merged tensor holding NaN or inf.
    """
    out = check_out_dir(out_dir)
    read = [(f"model {m!r}", ck.path) for m, ck in sources.models.items()]
    read += [(f"model {m!r}", ck.base.path) for m, ck in sources.models.items() if hasattr(ck, "base")]  # LoRA
    refuse_overlap("out", [out], [*read, ("the tokenizer source", sources.tokenizer_path)])
    if not isinstance(shard_size, int) or isinstance(shard_size, bool) or shard_size <= 0:
        raise UserError(f"shard_size: {shard_size!r} is not a positive number of bytes; use e.g. 2GB or 500MB")
    dev = resolve_device(device)
    out_dtype = output_dtype(recipe, sources, dtype)
    plans = plan_tensors(recipe, sources.architecture, sources.base_config, sources.output_tied_for(recipe))
    template = chat_template_text(recipe.chat_template, [ck.tokenizer_dir for ck in sources.models.values()])

    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out.parent, out.name)
    tmp = out.parent / f".{out.name}.partial-{temp_tag()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _write_tensors(plans, recipe, sources, tmp, shard_size, out_dtype, dev, progress, check_finite)
        _write_metadata(recipe, sources, tmp, out_dtype, card_extra, template)
        _swap_into_place(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = write_failure(exc)
        if reason is not None:
            raise UserError(f"out: cannot write {out} ({reason}); free disk space or choose a writable "
                            "folder (nothing was left behind)") from None
        raise
    return out


def output_dtype(recipe: Recipe, sources: Sources, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """The dtype a folder is written in: `dtype`, else the recipe's out_dtype or dtype, else the base model's."""
    return resolve_dtype(dtype or recipe.out_dtype or recipe.dtype, sources.models[sources.base_id].dtype)


def write_failure(exc: BaseException) -> str | None:
    """The reason text when `exc` is the disk or the permissions refusing a write (OSError or safetensors' own)."""
    if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:
        return exc.strerror or os.strerror(exc.errno)
    if isinstance(exc, SafetensorError):
        # safetensors reports the OS error only inside its text: "I/O error: No space left on device (os error 28)"
        m = re.search(r"(?:os error |code: )(\d+)", str(exc))
        if m and int(m.group(1)) in _WRITE_ERRNOS:
            return os.strerror(int(m.group(1)))
    return None


def _write_tensors(plans, recipe, sources, tmp, shard_size, dtype, device, progress, check_finite=True) -> None:
    from tqdm.auto import tqdm

    shards = ShardWriter(tmp, shard_size)
    for plan in tqdm(plans, desc="merging", unit="tensor", disable=not progress):
        # merged straight into the output dtype: streaming methods never hold the whole tensor in float32
        out = torch.empty(sources.output_shape(plan), dtype=dtype, device=device)
        tensor = merge_tensor(plan, sources.get, recipe.seed, device, out=out, align=sources.align).cpu().contiguous()
        if check_finite and has_nonfinite(tensor):
            # e.g. a huge weight overflowing the output dtype: a model of inf/NaN would load and score garbage
            raise UserError(f"{recipe.where}: merged tensor {plan.out_name} has NaN or inf values "
                            f"(in {str(dtype).removeprefix('torch.')}); use smaller/finite merge parameters or "
                            "intact sources (nothing was written)")
        shards.add(plan.out_name, tensor)
    shards.close()


def _write_metadata(
    recipe: Recipe, sources: Sources, tmp: Path, dtype: torch.dtype, card_extra: str, template: str | None = None
) -> None:
    config = sources.output_config(dtype, output_layers(recipe, sources.num_layers), sources.output_tied_for(recipe))
    _write_json(tmp / "config.json", config)
    base_dir = sources.models[sources.base_id].path
    gen = base_dir / "generation_config.json"
    if gen.is_file() and sources.vocabulary is not None:  # special ids follow the output tokenizer
        data = json.loads(gen.read_text(encoding="utf-8"))
        base_vocab = sources.vocabulary.vocabs[sources.base_id]
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if data.get(key) is not None:
                data[key] = sources.vocabulary.translate_ids(data[key], base_vocab)
        _write_json(tmp / "generation_config.json", data)
    elif gen.is_file():
        shutil.copyfile(gen, tmp / "generation_config.json")
    else:
        derived = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if config.get(k) is not None}
        _write_json(tmp / "generation_config.json", derived)
    built = sources.vocabulary.tokenizer if sources.vocabulary is not None else None
    write_tokenizer_files(tmp, sources.tokenizer_path, built, template)
    # paths relative to tmp equal those relative to the final folder: both sit in the same parent
    (tmp / "README.md").write_text(model_card(recipe, sources, card_extra, folder=tmp), encoding="utf-8")
    # mergekit writes its config beside the weights under this name; the Hub's merge tooling looks for it
    (tmp / "mergekit_config.yml").write_text(_recipe_yaml(recipe, tmp), encoding="utf-8")


def _recipe_yaml(recipe: Recipe, folder: Path | None = None) -> str:
    data = recipe_to_dict(recipe)
    return yaml.safe_dump(data if folder is None else portable_dict(data, folder), sort_keys=False, allow_unicode=True)


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def is_hub_id(model_id: str) -> bool:
    """Whether a model id names a Hugging Face Hub repository (`owner/name`) rather than a local folder."""
    return bool(_HUB_ID.fullmatch(model_id)) and not Path(model_id).expanduser().exists()


def _base_license(sources: Sources) -> str | None:
    """The `license:` of the base model's own card front matter, when its folder has one."""
    card = sources.models[sources.base_id].path / "README.md"
    text = _read(card)
    if not text.startswith("---"):
        return None
    try:
        front = yaml.safe_load(text.split("---", 2)[1])
    except (yaml.YAMLError, IndexError):
        return None
    value = front.get("license") if isinstance(front, dict) else None
    return str(value) if isinstance(value, (str, int)) and str(value) else None


def model_card(recipe: Recipe, sources: Sources, extra: str = "", folder: Path | None = None) -> str:
    """README.md: front matter, what was merged, the recipe YAML (paths portable for `folder`) and `extra`, e.g. scores."""
    recipe_yaml = _recipe_yaml(recipe, folder)
    ids = list(recipe.model_ids())
    hub = [m for m in ids if is_hub_id(m)]
    # Hugging Face conventions for merges: base_model lists Hub ids only (a local path means nothing on the Hub)
    front: dict = {"base_model": hub} if hub else {}
    license_ = _base_license(sources)
    if license_:
        front["license"] = license_
    front.update({"library_name": "transformers", "tags": ["merge", "mergekit", "evolve-merge"]})
    local = [m for m in ids if m not in hub]
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        CARD_MARKER,
        "# Merged model",
        "",
        f"Built by evolve-merge with the `{recipe.merge_method}` method from {len(sources.models)} model(s); "
        f"word embeddings {'tied' if sources.output_tied_for(recipe) else 'untied'}.",
        "",
        *(["Models merged: " + ", ".join(f"`{m}`" + (" (local folder)" if m in local and hub else "") for m in ids)
           + ".", ""]),
        "## Recipe (mergekit-compatible)",
        "",
        "```yaml",
        recipe_yaml.rstrip(),
        "```",
        "",
    ]
    if extra:
        lines += [extra.rstrip(), ""]
    return "\n".join(lines)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _swap_into_place(tmp: Path, out: Path) -> None:
    # Re-check: another process may have created out meanwhile; never replace something that is not ours.
    check_out_dir(out)
    for attempt in range(5):
        try:
            if out.exists():
                old = out.parent / f".{out.name}.old-{temp_tag()}"
                out.rename(old)
                shutil.rmtree(old, ignore_errors=True)
            tmp.rename(out)
            return
        except OSError:
            # two workers exporting at once: the other one swapped between our check and our rename
            if attempt == 4:
                raise
            check_out_dir(out)
