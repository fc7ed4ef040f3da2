"""mergekit YAML recipes <-> frozen dataclasses, validated with one UserError per problem.

Model ids are kept exactly as written (HF ids or paths). Resolving them is the loader's job: a relative
path is meant relative to the recipe file's folder, which `Recipe.root` records (None when parsed from data).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from merge_core.device import DTYPES
from merge_core.errors import UserError
from merge_core.files import atomic_write_text, remove_stale_temps
from merge_core.methods import BOOL_PARAMS, METHODS, PARAM_BOUNDS, REQUIRED
from merge_core.textfile import check_yaml_size, read_text
from merge_core.tokenizer import TokenizerBlock, check_chat_template, parse_tokenizer_block, tokenizer_block_to_dict

Scalar = int | float | bool | str


@dataclass(frozen=True)
class Condition:
    """One `{filter, value}` entry: applies when `filter` is None/'*' or a substring of the tensor name."""

    value: Scalar | tuple[float, ...]
    filter: str | None = None


# scalar, gradient (tuple of numbers) or ordered conditions (tuple of Condition)
Setting = Scalar | tuple[float, ...] | tuple[Condition, ...]
Params = dict[str, Setting]


@dataclass(frozen=True)
class ModelEntry:
    """One entry of `models:`."""

    model: str
    parameters: Params = field(default_factory=dict)


@dataclass(frozen=True)
class SliceSource:
    """One source of an output slice: a model's layers [start, end)."""

    model: str
    layer_range: tuple[int, int]
    parameters: Params = field(default_factory=dict)


@dataclass(frozen=True)
class OutputSlice:
    """One entry of `slices:`."""

    sources: tuple[SliceSource, ...]
    base_model: str | None = None
    parameters: Params = field(default_factory=dict)


@dataclass(frozen=True)
class Recipe:
    """A validated merge recipe (exactly one of `models` / `slices` is set)."""

    merge_method: str
    models: tuple[ModelEntry, ...] | None = None
    slices: tuple[OutputSlice, ...] | None = None
    base_model: str | None = None
    parameters: Params = field(default_factory=dict)
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None
    chat_template: str | None = None
    tokenizer: TokenizerBlock | None = None
    seed: int = 0
    provenance: dict[str, Any] = field(default_factory=dict)
    root: Path | None = field(default=None, compare=False)
    where: str = field(default="recipe", compare=False)

    def model_ids(self) -> list[str]:
        """Every model the recipe references (base first), without duplicates."""
        ids = [self.base_model] if self.base_model else []
        for m in self.models or ():
            ids.append(m.model)
        for s in self.slices or ():
            ids += [s.base_model] if s.base_model else []
            ids += [src.model for src in s.sources]
        return list(dict.fromkeys(ids))


TOP_KEYS = (
    "merge_method", "base_model", "models", "slices", "parameters", "dtype",
    "out_dtype", "tokenizer_source", "tokenizer", "chat_template", "evolve_merge",
)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class _Parser:
    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, key: str, problem: str, fix: str) -> UserError:
        return UserError(f"{self.where}: {key or 'top level'}: {problem}; {fix}")

    def mapping(self, value: Any, key: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a mapping, got {type(value).__name__}", f"write it as keys {', '.join(allowed)}")
        for k in value:
            if k not in allowed:
                raise self.fail(f"{key}.{k}" if key else str(k), "unknown key", f"use one of {', '.join(allowed)}")
        return value

    def string(self, value: Any, key: str, optional: bool = True) -> str | None:
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value:
            raise self.fail(key, f"{value!r} is not a non-empty string", "write a model id or path as a string")
        return value

    def value(self, v: Any, key: str, name: str) -> Scalar | tuple[float, ...]:
        if isinstance(v, list):
            if not v or not all(_is_num(e) for e in v):
                raise self.fail(key, f"{v!r} is not a gradient", "a gradient is a non-empty list of numbers")
            for e in v:
                self.check_range(e, key, name)
            return tuple(v)
        if name in BOOL_PARAMS:
            if not isinstance(v, (bool, int, float)):
                raise self.fail(key, f"{v!r} is not a boolean", "write true or false")
            return v
        if not _is_num(v):
            raise self.fail(key, f"{v!r} is not a number", "write a number, a list of numbers or a list of {filter, value}")
        self.check_range(v, key, name)
        return v

    def check_range(self, v: float, key: str, name: str) -> None:
        lo, hi = PARAM_BOUNDS.get(name, (float("-inf"), float("inf")))
        if not math.isfinite(v):
            raise self.fail(key, f"{v} is not a finite number", f"write a finite {name}"
                            + (f" between {lo:g} and {hi:g}" if math.isfinite(lo) and math.isfinite(hi) else ""))
        if not lo <= v <= hi:
            raise self.fail(key, f"{v} is outside [{lo:g}, {hi:g}]", f"choose {name} between {lo:g} and {hi:g}")

    def setting(self, v: Any, key: str, name: str) -> Setting:
        if isinstance(v, list) and v and all(isinstance(e, dict) for e in v):
            conds = []
            for i, c in enumerate(v):
                ck = f"{key}[{i}]"
                self.mapping(c, ck, ("filter", "value"))
                if "value" not in c:
                    raise self.fail(ck, "missing value", "give each condition a value")
                flt = c.get("filter")
                if flt is not None and not isinstance(flt, str):
                    raise self.fail(f"{ck}.filter", f"{flt!r} is not a string", "write a substring of tensor names")
                conds.append(Condition(self.value(c["value"], f"{ck}.value", name), flt))
            return tuple(conds)
        if isinstance(v, dict):
            self.mapping(v, key, ("filter", "value"))
            return self.setting([v], key, name)
        return self.value(v, key, name)

    def params(self, v: Any, key: str, method: str, level: str) -> Params:
        if v is None:
            return {}
        spec = METHODS[method]
        known = spec.tensor_params | spec.global_params if level != "model" else spec.tensor_params
        if not isinstance(v, dict):
            raise self.fail(key, f"expected a mapping, got {type(v).__name__}", "write parameters as name: value")
        out: Params = {}
        for name, setting in v.items():
            if name not in known:
                if level == "model" and name in spec.global_params:
                    raise self.fail(f"{key}.{name}", f"{name} is a global option of {method}", "move it to the top-level (or slice) parameters")
                valid = ", ".join(known) or "none"
                raise self.fail(f"{key}.{name}", f"unknown parameter for {method}", f"valid ones: {valid}")
            out[name] = self.setting(setting, f"{key}.{name}", name)
        return out

    def layer_range(self, v: Any, key: str) -> tuple[int, int]:
        if not (isinstance(v, list) and len(v) == 2 and all(isinstance(e, int) and not isinstance(e, bool) for e in v)):
            raise self.fail(key, f"{v!r} is not [start, end]", "write two integers, e.g. [0, 16]")
        a, b = v
        if a < 0 or b <= a:
            raise self.fail(key, f"[{a}, {b}] is empty or negative", "use 0 <= start < end")
        return (a, b)


def parse_recipe(data: Any, where: str = "recipe", root: Path | None = None) -> Recipe:
    """Validate a recipe mapping (as read from YAML) into a Recipe; `where` names it in errors."""
    p = _Parser(where)
    data = p.mapping(data, "", TOP_KEYS)
    method = data.get("merge_method")
    if not isinstance(method, str) or method not in METHODS:
        raise p.fail("merge_method", f"{method!r} is not a known method", f"use one of {', '.join(METHODS)}")
    spec = METHODS[method]
    base = p.string(data.get("base_model"), "base_model")
    has_models, has_slices = data.get("models") is not None, data.get("slices") is not None
    if has_models == has_slices:
        raise p.fail("models", "give exactly one of models or slices", "use models: for whole-model merges, slices: for layer ranges")
    glob = p.params(data.get("parameters"), "parameters", method, "global")

    models = slices = None
    groups: list[tuple[str, str | None, list[tuple[str, str, Params]], Params]] = []
    if has_models:
        raw = data["models"]
        if not isinstance(raw, list) or not raw:
            raise p.fail("models", "expected a non-empty list", "list entries like {model: ID, parameters: {...}}")
        entries = []
        for i, m in enumerate(raw):
            k = f"models[{i}]"
            m = p.mapping(m, k, ("model", "parameters"))
            entries.append(ModelEntry(p.string(m.get("model"), f"{k}.model", optional=False), p.params(m.get("parameters"), f"{k}.parameters", method, "model")))
        models = tuple(entries)
        groups.append(("models", None, [(f"models[{i}]", e.model, e.parameters) for i, e in enumerate(entries)], {}))
    else:
        raw = data["slices"]
        if not isinstance(raw, list) or not raw:
            raise p.fail("slices", "expected a non-empty list", "list entries like {sources: [{model: ID, layer_range: [0, 16]}]}")
        out_slices = []
        used: dict[str, list[tuple[int, int, str]]] = {}
        for i, s in enumerate(raw):
            k = f"slices[{i}]"
            s = p.mapping(s, k, ("sources", "base_model", "parameters"))
            srcs_raw = s.get("sources")
            if not isinstance(srcs_raw, list) or not srcs_raw:
                raise p.fail(f"{k}.sources", "expected a non-empty list", "list {model, layer_range} entries")
            srcs = []
            for j, src in enumerate(srcs_raw):
                sk = f"{k}.sources[{j}]"
                src = p.mapping(src, sk, ("model", "layer_range", "parameters"))
                if "layer_range" not in src:
                    raise p.fail(f"{sk}.layer_range", "missing", "give [start, end] layers of this model")
                lr = p.layer_range(src["layer_range"], f"{sk}.layer_range")
                model = p.string(src.get("model"), f"{sk}.model", optional=False)
                for a, b, other in used.get(model, []):
                    # passthrough repeats layers on purpose (mergekit's layer stacking); merges use each layer once
                    if lr[0] < b and a < lr[1] and not spec.layer_paths:
                        raise p.fail(f"{sk}.layer_range", f"{list(lr)} overlaps {other} [{a}, {b}] of {model}", "use each source layer once")
                used.setdefault(model, []).append((lr[0], lr[1], f"{sk}"))
                srcs.append(SliceSource(model, lr, p.params(src.get("parameters"), f"{sk}.parameters", method, "model")))
            lengths = {b - a for a, b in (x.layer_range for x in srcs)}
            if len(lengths) != 1:
                raise p.fail(f"{k}.sources", f"layer ranges of different lengths {sorted(lengths)}", "give every source of a slice the same number of layers")
            sl = OutputSlice(tuple(srcs), p.string(s.get("base_model"), f"{k}.base_model"), p.params(s.get("parameters"), f"{k}.parameters", method, "slice"))
            out_slices.append(sl)
            groups.append((k, sl.base_model, [(f"{k}.sources[{j}]", x.model, x.parameters) for j, x in enumerate(srcs)], sl.parameters))
        slices = tuple(out_slices)

    for gk, gbase, members, sparams in groups:
        _check_group(p, method, gk, gbase or base, members, sparams, glob)

    dtypes = {}
    for key in ("dtype", "out_dtype"):
        v = data.get(key)
        if v is not None and v not in DTYPES:
            raise p.fail(key, f"{v!r} is not supported", f"use one of {', '.join(DTYPES)}")
        dtypes[key] = v
    tok = data.get("tokenizer_source")
    if tok is not None and not isinstance(tok, str):
        raise p.fail("tokenizer_source", f"{tok!r} is not a string", "write base, union or a model id")
    block = parse_tokenizer_block(data["tokenizer"], where) if data.get("tokenizer") is not None else None
    chat = data.get("chat_template")
    if chat is not None and not isinstance(chat, str):
        raise p.fail("chat_template", f"{chat!r} is not a string", "write a template name or Jinja text")
    check_chat_template(chat, where)
    extra = data.get("evolve_merge") or {}
    if not isinstance(extra, dict):
        raise p.fail("evolve_merge", "expected a mapping", "write seed: INT plus provenance keys")
    seed = extra.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise p.fail("evolve_merge.seed", f"{seed!r} is not a non-negative integer", "write an integer such as 0")
    return Recipe(
        merge_method=method, models=models, slices=slices, base_model=base, parameters=glob,
        dtype=dtypes["dtype"], out_dtype=dtypes["out_dtype"], tokenizer_source=tok, chat_template=chat,
        tokenizer=block, seed=seed, provenance={k: v for k, v in extra.items() if k != "seed"}, root=root, where=where,
    )


def _check_group(
    p: _Parser, method: str, key: str, base: str | None, members: list[tuple[str, str, Params]], sparams: Params, glob: Params
) -> None:
    spec = METHODS[method]
    ids = [m for _, m, _ in members]
    for mk, m, _ in members:
        if ids.count(m) > 1:
            raise p.fail(f"{mk}.model", f"{m} is listed twice", "list each model once per merge")
    if spec.needs_base and base is None:
        raise p.fail("base_model", f"missing; {method} needs a base model", "set base_model to the model the others were fine-tuned from")
    if key != "models" and spec.needs_base and base not in ids:
        # mergekit adds a missing base only in the models form; a slice must list it as a source
        raise p.fail(f"{key}.sources", f"base model {base} is not a source", "add it with the same layer_range as the others")
    # mergekit adds a missing base to the models form only; a passthrough slice ignores the base
    adds_base = base and base not in ids and not (spec.layer_paths and key != "models")
    inputs = ids + ([base] if adds_base else [])
    if spec.exact_inputs is not None and len(inputs) != spec.exact_inputs:
        fix = "give each slice one source (stack models with several slices)" if spec.layer_paths else "list the base and one other model"
        raise p.fail(key, f"{method} merges exactly {spec.exact_inputs} models (base included), got {len(inputs)}", fix)
    if len([m for m in inputs if m != base]) < spec.min_non_base:
        raise p.fail(key, f"{method} needs at least {spec.min_non_base} models besides the base", "add fine-tuned models")
    for name, default in spec.global_params.items():
        if default is REQUIRED and not (name in sparams or name in glob):
            raise p.fail("parameters", f"{name} is missing; {method} requires it", f"add parameters: {{{name}: ...}}")
    for name, default in spec.tensor_params.items():
        if default is not REQUIRED:
            continue
        for mk, m, mparams in members:
            needed = m != base or name in spec.base_needs
            if needed and not (name in mparams or name in sparams or name in glob):
                raise p.fail(f"{mk}.parameters.{name}", "missing", f"give {m} a {name} (or set a default in the top-level parameters)")
        if base and base not in ids and name in spec.base_needs and not (name in sparams or name in glob):
            raise p.fail(f"parameters.{name}", f"missing for base model {base}", f"list {base} under models with a {name}")


def load_recipe(path: str | os.PathLike[str]) -> Recipe:
    """Read and validate a recipe YAML file."""
    path = Path(path)
    where = str(path)
    text = read_text(path, where)  # regular file, size limit, UTF-8: one line instead of a hang or traceback
    check_yaml_size(text, where)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{where}: invalid YAML{at}; fix the syntax") from None
    return parse_recipe(data, where, path.resolve().parent)


def _setting_out(v: Setting | Condition) -> Any:
    if isinstance(v, Condition):
        return ({"filter": v.filter} if v.filter is not None else {}) | {"value": _setting_out(v.value)}
    if isinstance(v, tuple):
        return [_setting_out(e) for e in v]
    return v


def _params_out(p: Params) -> dict[str, Any]:
    return {k: _setting_out(v) for k, v in p.items()}


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """The mergekit-compatible mapping of a recipe (inverse of parse_recipe)."""
    out: dict[str, Any] = {"merge_method": recipe.merge_method}
    if recipe.base_model:
        out["base_model"] = recipe.base_model
    if recipe.models is not None:
        out["models"] = [{"model": m.model, **({"parameters": _params_out(m.parameters)} if m.parameters else {})} for m in recipe.models]
    if recipe.slices is not None:
        out["slices"] = []
        for s in recipe.slices:
            d: dict[str, Any] = {"sources": [
                {"model": x.model, "layer_range": list(x.layer_range), **({"parameters": _params_out(x.parameters)} if x.parameters else {})}
                for x in s.sources
            ]}
            if s.base_model:
                d["base_model"] = s.base_model
            if s.parameters:
                d["parameters"] = _params_out(s.parameters)
            out["slices"].append(d)
    if recipe.parameters:
        out["parameters"] = _params_out(recipe.parameters)
    for key in ("dtype", "out_dtype", "tokenizer_source", "chat_template"):
        if getattr(recipe, key) is not None:
            out[key] = getattr(recipe, key)
    if recipe.tokenizer is not None:
        out["tokenizer"] = tokenizer_block_to_dict(recipe.tokenizer)
    out["evolve_merge"] = {"seed": recipe.seed, **recipe.provenance}
    return out


class _Dumper(yaml.SafeDumper):
    """Safe dumper writing gradients (lists of numbers) inline, as mergekit does."""


_Dumper.add_representer(
    list,
    lambda d, data: d.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=all(_is_num(e) for e in data) and bool(data)),
)


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def portable_path(model: str, folder: str | os.PathLike[str]) -> str:
    """`model` as written in a recipe stored in `folder`: `./x` when the model lies beside or below that folder
    (so the folder moves as one), else unchanged (absolute).

    Our loader resolves relative paths against the recipe's folder; mergekit resolves them against its working
    directory, so a relative recipe needs `cd <recipe folder> && mergekit-yaml recipe.yaml OUT`. Models elsewhere
    (a run's `.cache`) stay absolute, so `mergekit-yaml runs/<study>/best/recipe.yaml OUT` works from any directory.
    """
    if "+" in model and not Path(model).exists():  # <base>+<LoRA adapter>: each part on its own
        return "+".join(portable_path(part, folder) for part in model.split("+"))
    target = Path(model)
    if not target.is_absolute() or not target.exists():
        return model  # a Hub id, or already relative
    target, folder = target.resolve(), Path(folder).resolve()
    if not _inside(target, folder):
        return model
    # "./" keeps a folder name from reading as a Hub id (`owner/name`) to mergekit
    return f"./{os.path.relpath(target, folder)}"


def portable_dict(data: Any, folder: str | os.PathLike[str]) -> Any:
    """A recipe mapping with every local model path (values and provenance keys) made portable for `folder`."""
    if isinstance(data, dict):
        return {(portable_path(k, folder) if isinstance(k, str) else k): portable_dict(v, folder) for k, v in data.items()}
    if isinstance(data, list):
        return [portable_dict(v, folder) for v in data]
    if isinstance(data, str) and (data.startswith(os.sep) or "+" in data):
        return portable_path(data, folder)
    return data


def save_recipe(recipe: Recipe, path: str | os.PathLike[str]) -> Path:
    """Write a recipe as mergekit YAML atomically (temp file + rename), model paths portable_path'd; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = portable_dict(recipe_to_dict(recipe), path.parent)
    text = yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True)
    remove_stale_temps(path.parent, path.name)
    return atomic_write_text(path, text)
