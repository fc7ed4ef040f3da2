"""Hydra composition of a search config (`conf=NAME k=v ...`), schema and range checks, turned into UserErrors."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

import conf as conf_pkg
from evolve import schema
from evolve.errors import UserError

OPTIMIZERS = tuple(schema.OPTIONS["optimizer"])
PRUNERS = tuple(schema.OPTIONS["pruner"])


@dataclass
class ConfArgs:
    """A search command line split into its parts."""

    config_dir: Path
    config_name: str
    overrides: list[str]
    multirun: bool

    @property
    def label(self) -> str:
        """How the config is named in messages."""
        return str(self.config_dir / f"{self.config_name}.yaml")


def parse_args(args: list[str]) -> ConfArgs:
    """Split `conf=NAME [k=v ...] [-m]` into the primary config file, Hydra overrides and the multirun flag."""
    multirun = any(a in ("-m", "--multirun") for a in args)
    rest = [a for a in args if a not in ("-m", "--multirun")]
    names = [a.split("=", 1)[1] for a in rest if a.startswith("conf=")]
    overrides = [a for a in rest if not a.startswith("conf=")]
    for a in overrides:
        if a.startswith("-"):
            raise UserError(f"argument {a!r}: flags are not supported; use key=value overrides (and -m for a sweep)")
        key, _, value = a.partition("=")
        if key.lstrip("+~") in PATH_KEYS:
            check_path_chars(key.lstrip("+~"), value, "")
    if len(names) != 1 or not names[0]:
        available = ", ".join(sorted(p.stem for p in conf_pkg.PATH.glob("*.yaml")))
        raise UserError(f"conf=NAME is required exactly once; choose one of {available} or a path to a YAML file")
    config_dir, config_name = resolve_conf(names[0])
    return ConfArgs(config_dir, config_name, overrides, multirun)


def resolve_conf(name: str) -> tuple[Path, str]:
    """Map `tiny` to conf/tiny.yaml, or a path to a YAML file to its folder and stem."""
    if name.endswith((".yaml", ".yml")) or os.sep in name or "/" in name:
        path = Path(name).expanduser().resolve()
        if not path.exists():
            raise UserError(f"conf={name}: no such file; give conf=NAME (a file in {conf_pkg.PATH}) or a YAML path")
        _check_file(path)
        return path.parent, path.stem
    path = conf_pkg.PATH / f"{name}.yaml"
    if not path.is_file():
        available = ", ".join(sorted(p.stem for p in conf_pkg.PATH.glob("*.yaml")))
        raise UserError(f"conf={name}: no such config; choose one of {available} or give a path to a YAML file")
    return conf_pkg.PATH, name


def _check_file(path: Path) -> None:
    """Before Hydra reads it: a regular UTF-8 file of sane size whose YAML aliases do not explode."""
    from merge_core.textfile import check_yaml_size, read_text

    check_yaml_size(read_text(path, f"conf={path}"), f"conf={path}")


def hydra_overrides(config_dir: Path) -> list[str]:
    """Overrides that let a YAML outside conf/ still use conf/'s groups."""
    if config_dir.resolve() == conf_pkg.PATH:
        return []
    return [f"hydra.searchpath=[file://{conf_pkg.PATH}]"]


def _one_line(exc: BaseException) -> str:
    text = str(exc).split("Config search path")[0]
    cause = exc.__cause__
    if cause is not None and str(cause):
        # Hydra wraps the OmegaConf error that says what was wrong; keep its first line only
        text += ": " + str(cause).splitlines()[0]
    text = " ".join(text.split())
    return text[:400] if text else type(exc).__name__


@contextlib.contextmanager
def _hydra(config_dir: Path) -> Iterator[None]:
    """Hydra initialized on `config_dir` for compose(); inside a running hydra.main (a search's report composes the
    baselines' methods) the app's own Hydra is put back afterwards."""
    schema.register()
    outer = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            yield
    finally:
        GlobalHydra.instance().clear()
        if outer is not None:
            GlobalHydra.instance().initialize(outer)


def _compose(config_dir: Path, name: str, overrides: list[str], label: str) -> DictConfig:
    """Hydra's compose, every key checked against its schema; any Hydra/OmegaConf error is a one-line UserError."""
    try:
        with _hydra(config_dir):
            cfg = compose(name, overrides=overrides + hydra_overrides(config_dir))
        cfg = _typed_options(cfg, label)
        check_keys(cfg, label)
        OmegaConf.resolve(cfg)
    except UserError:
        raise
    except Exception as exc:  # Hydra and OmegaConf raise many types; all mean bad input here
        raise UserError(f"{label}: {_unused_key(exc) or _one_line(exc) + '; fix the key/value (see conf/ for groups and keys)'}") from None
    return cfg


def compose_config(cargs: ConfArgs, overrides: list[str] | None = None) -> DictConfig:
    """Compose and validate one config (no sweep values); any Hydra/OmegaConf error becomes a one-line UserError."""
    overrides = cargs.overrides if overrides is None else overrides
    cfg = _compose(cargs.config_dir, cargs.config_name, overrides, cargs.label)
    try:
        validate(cfg, cargs.label)
    except OmegaConfBaseException as exc:  # a key deleted by a `~key` override, or left ??? (mandatory)
        raise UserError(f"{cargs.label}: {_one_line(exc)}; keep the key (a `~key` override removes it) or set it") from None
    return cfg


def compose_method(name: str) -> DictConfig:
    """conf/method/NAME.yaml composed and checked as a search's `method` is (the report's untuned baselines)."""
    label = str(conf_pkg.PATH / "method" / f"{name}.yaml")
    cfg = _compose(conf_pkg.PATH, "search_schema", [f"+method={name}"], label)
    check_method(cfg.method, label)
    return cfg.method


def sweep_combinations(overrides: list[str]) -> list[list[str]]:
    """One override list per job of a sweep (`optimizer=cmaes,tpe seed=0,1`): the jobs Hydra's basic sweeper runs,
    each written as Hydra writes it (so a job's overrides name its already-composed config)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        return BasicSweeper.split_arguments(parsed, None)[0]
    except Exception as exc:
        raise UserError(f"overrides: {_one_line(exc)}; write key=value or key=a,b for a sweep") from None


def _typed_options(cfg: DictConfig, where: str) -> DictConfig:
    """Each optimizer/pruner node typed as its option's schema: a config whose defaults list names no option gets
    the schema of the node's name (as before per-option schemas); a name that is not its option's is refused."""
    for group, options in schema.OPTIONS.items():
        node = cfg[group]
        name = node.name
        _check(name in options, where, f"{group}.name", f"= {name}; choose {', '.join(options)}")
        kind = OmegaConf.get_type(node)
        if kind is options[name]:
            continue
        option = next((n for n, c in options.items() if c is kind), None)
        _check(option is None, where, f"{group}.name", f"= {name} under {group}={option}; choose the option with "
               f"{group}={name} (its schema and keys come with it), not {group}.name")
        with open_dict(cfg):
            cfg[group] = OmegaConf.merge(OmegaConf.structured(options[name]), OmegaConf.to_container(node))
    return cfg


def _schema_owner(kind: type | None) -> str:
    """How a schema is named in messages: `optimizer=cmaes`, or the dataclass for the other nodes."""
    for group, options in schema.OPTIONS.items():
        for name, node in options.items():
            if node is kind:
                return f"{group}={name}"
    return "the search config" if kind is schema.SearchConfig else (kind.__name__ if kind else "its node")


def _alternatives(kind: type | None, key: str) -> str:
    """`; or choose an optimizer that has it (tpe, gp)` when another option of the group has the key."""
    for group, options in schema.OPTIONS.items():
        if kind in options.values():
            have = [n for n, c in options.items() if key in {f.name for f in dataclasses.fields(c)}]
            if have:
                return f", or choose an option that has it ({group}={' / '.join(have)})"
    return ""


def _key_message(full_key: str, kind: type | None) -> str:
    """One line for a key its schema does not have."""
    fields = [f.name for f in dataclasses.fields(kind)] if dataclasses.is_dataclass(kind) else []
    key = full_key.rsplit(".", 1)[-1]
    keys = f" (its keys: {', '.join(fields)})" if 0 < len(fields) <= 8 else ""
    return f"{full_key}: not a key of {_schema_owner(kind)}{keys}; remove it{_alternatives(kind, key)}"


def _unused_key(exc: BaseException) -> str | None:
    """The one-line message for a Hydra/OmegaConf error that is a key the schema of its node does not have."""
    for err in (exc, exc.__cause__):
        if isinstance(err, (ConfigAttributeError, ConfigKeyError)) and "not in" in str(err):
            kind = getattr(err, "object_type", None)
            full_key = getattr(err, "full_key", None)
            if full_key and dataclasses.is_dataclass(kind):
                return _key_message(str(full_key), kind)
    return None


def check_keys(cfg: DictConfig, where: str, prefix: str = "") -> None:
    """UserError for a key a schema does not have: `+optimizer.multi_objective=true` (Hydra's `+` adds keys past
    the schema) reaches here, a plain override or YAML key already fails in Hydra's merge."""
    kind = OmegaConf.get_type(cfg)
    if dataclasses.is_dataclass(kind):
        fields = {f.name for f in dataclasses.fields(kind)}
        extra = [k for k in cfg.keys() if k not in fields]
        if extra:
            raise UserError(f"{where}: {_key_message(prefix + str(extra[0]), kind)}")
    for key in cfg.keys():
        if OmegaConf.is_missing(cfg, key) or OmegaConf.is_interpolation(cfg, key):
            continue
        node = cfg[key]
        if isinstance(node, DictConfig):
            check_keys(node, where, f"{prefix}{key}.")


def load_config(args: list[str]) -> tuple[DictConfig, ConfArgs]:
    """Compose and validate the config of a non-sweep command (export, report, a single search)."""
    cargs = parse_args(args)
    if cargs.multirun:
        raise UserError("-m: this command takes no sweep; pick one value per key")
    return compose_config(cargs), cargs


PATH_KEYS = ("out_dir", "storage")
_INTERPOLATION = re.compile(r"\$\{[^{}]*\}")


def check_path_chars(key: str, value: str, where: str) -> None:
    """UserError when an out_dir or storage *path* holds { } ? %: Hydra's grammar, or the SQLite URL made from it,
    would read them (`?` starts URL options, so two out_dirs could share one study); ${...} interpolations are fine."""
    if key == "storage" and "://" in value:  # a URL: its own syntax (query options, escapes) is the user's to write
        return
    bad = sorted({c for c in _INTERPOLATION.sub("", value) if c in "{}?%"})
    if bad:
        raise UserError(f"{where + ': ' if where else ''}{key}: {value!r} holds {' '.join(bad)}; these characters "
                        "are read by Hydra's override grammar or the SQLite URL built from the path; choose a path "
                        "without { } ? % (interpolations such as ${optimizer.name} are fine)")


MAX_THREADS = max(256, 4 * (os.cpu_count() or 1))


def _check(cond: bool, where: str, key: str, what: str) -> None:
    if not cond:
        raise UserError(f"{where}: {key} {what}")


def validate(cfg: DictConfig, where: str) -> None:
    """Range and consistency checks the dataclass types cannot express; run before any model loads."""
    _check(cfg.n_trials >= 1, where, "n_trials", f"= {cfg.n_trials} must be >= 1; set n_trials=16")
    _check(cfg.max_failures_in_row >= 1, where, "max_failures_in_row", "must be >= 1")
    _check(cfg.heartbeat_interval >= 1 and cfg.grace_period > cfg.heartbeat_interval, where,
           "heartbeat_interval/grace_period", "must be >= 1 and grace_period > heartbeat_interval")
    _check(bool(cfg.study_name) and "/" not in cfg.study_name, where, "study_name", "must be a non-empty name without '/'")
    _check(str(cfg.out_dir).strip() != "", where, "out_dir", "is empty; give a folder path, e.g. out_dir=runs/x")
    check_path_chars("out_dir", str(cfg.out_dir), where)
    if cfg.storage:
        check_path_chars("storage", str(cfg.storage), where)
    out = Path(cfg.out_dir)
    _check(not out.exists() or out.is_dir(), where, "out_dir", f"= {out} is a file; give a folder path")
    _probe_writable(out)
    _check(cfg.device in ("auto", "cpu", "cuda") or str(cfg.device).startswith("cuda:"), where, "device",
           f"= {cfg.device} must be auto, cpu, cuda or cuda:N")
    _check(0 <= cfg.threads <= MAX_THREADS, where, "threads",
           f"= {cfg.threads} must be in [0, {MAX_THREADS}] (0 = torch's default; more threads than this crash torch)")
    from merge_core.device import DTYPES  # the one list of dtype names (imports torch: after composition only)

    names = list(DTYPES)
    for key in ("dtype", "out_dtype"):
        _check(cfg[key] in names, where, key, f"must be {', '.join(names[:-1])} or {names[-1]}")
    _check(cfg.genome.layer_group_size >= 1, where, "genome.layer_group_size", "must be >= 1")
    _check_genome(cfg.genome, where)
    models = cfg.models
    _check(len(models.sources) >= 1, where, "models.sources", "must name at least one source model")
    _check(len(set(models.sources)) == len(models.sources), where, "models.sources", "names a model twice")
    tasks = cfg.tasks
    _check(len(tasks.names) >= 1, where, "tasks.names", "must name at least one task")
    if tasks.weights is not None:
        _check(len(tasks.weights) == len(tasks.names) and all(w >= 0 for w in tasks.weights) and sum(tasks.weights) > 0,
               where, "tasks.weights", "must be one non-negative weight per task (or null for equal)")
    _check(tasks.batch_size >= 1, where, "tasks.batch_size", "must be >= 1")
    _check(tasks.limit is None or tasks.limit >= 1, where, "tasks.limit", "must be >= 1 or null")
    _check(tasks.test_limit is None or tasks.test_limit >= 1, where, "tasks.test_limit", "must be >= 1 or null")
    _check(tasks.split.dev_size >= 1, where, "tasks.split.dev_size", "must be >= 1; e.g. tasks.split.dev_size=500")
    _check(0 < tasks.split.dev_fraction < 1, where, "tasks.split.dev_fraction", "must be in (0, 1); e.g. 0.5")
    for folder in tasks.include_path:
        _check(Path(str(folder)).expanduser().is_dir(), where, "tasks.include_path",
               f"= {folder} is not a folder; give folders of lm-eval task YAMLs")
    _check(cfg.select.top_k >= 1, where, "select.top_k", f"= {cfg.select.top_k} must be >= 1 (1 = no re-scoring)")
    stages = list(tasks.stages)
    _check(len(stages) >= 1 and all(0 < s <= 1 for s in stages) and stages == sorted(set(stages)) and stages[-1] == 1.0,
           where, "tasks.stages", f"= {stages} must increase strictly within (0, 1] and end at 1.0")
    check_method(cfg.method, where, n_sources=len(models.sources))
    if schema.multi_objective(cfg):
        _check(len(tasks.names) >= 2, where, "optimizer", f"{cfg.optimizer.name} is multi-objective and needs >= 2 tasks")
    _check_optuna_options(cfg, where)


def _check_optuna_options(cfg: DictConfig, where: str) -> None:
    """optimizer.options / pruner.options as their Optuna classes take them, before any model loads (the search
    builds its sampler only after the world): both are built once here and dropped (cheap: no study, no trial)."""
    from evolve.study import make_pruner, make_sampler

    for group, make in (("optimizer", make_sampler), ("pruner", make_pruner)):
        try:
            make(cfg)
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None
        except (TypeError, ValueError) as exc:  # Optuna's own range checks (population_size >= 2, ...)
            raise UserError(f"{where}: {group}.options: {exc}; fix the value (see the Optuna docs of "
                            f"{group}={cfg[group].name})") from None


def check_method(method: DictConfig, where: str, n_sources: int | None = None) -> None:
    """The method's keys against merge_core's registry: searched bounds, baseline values and options must be
    parameters the method has (a baseline only for a searched one), with as many sources as it merges."""
    _check(len(method.search) >= 1, where, "method.search", "must search at least one parameter")
    for name, b in method.search.items():
        _check(math.isfinite(b.low) and math.isfinite(b.high), where, f"method.search.{name}",
               f"bounds [{b.low}, {b.high}] must be finite numbers")
        _check(b.low <= b.high, where, f"method.search.{name}", f"low {b.low} > high {b.high}")
        lo, hi = _param_bounds(name)
        _check(lo <= b.low and b.high <= hi, where, f"method.search.{name}",
               f"bounds [{b.low}, {b.high}] leave [{lo:g}, {hi:g}], the range of {name}; narrow them")
    spec = _method_spec(method.name)
    if spec is None:  # merge_core unavailable: its recipe check still refuses what is wrong, later
        return
    _check(spec is not False, where, "method.name", f"= {method.name} is not a known merge method")
    known = set(spec.tensor_params) | set(spec.global_params)
    for name in method.search:
        _check(name in known, where, f"method.search.{name}", f"is not a parameter of {method.name} ({', '.join(sorted(known))})")
        _check(not method.search[name].per_source or name in spec.tensor_params, where,
               f"method.search.{name}.per_source", f"is true, but {name} is one value for all models in "
               f"{method.name}; set per_source: false")
    for name in method.baseline:
        _check(name in method.search, where, f"method.baseline.{name}", f"is not used: {name} is not searched by "
               f"method={method.name} (searched: {', '.join(method.search)}); remove it or add method.search.{name}")
    for name in method.options:
        _check(name in known, where, f"method.options.{name}",
               f"is not a parameter of {method.name} ({', '.join(sorted(known))}); remove it")
    if n_sources is not None and spec.exact_inputs is not None:  # slerp: 2 inputs, the base and one source
        want = spec.exact_inputs - (1 if spec.needs_base else 0)
        what = "one source" if want == 1 else f"{want} sources"
        what = f"the base with exactly {what}" if spec.needs_base else f"exactly {what}"
        _check(n_sources == want, where, "models.sources", f"{method.name} merges {what}")
    if n_sources is not None:
        _check(n_sources >= spec.min_non_base, where, "models.sources",
               f"{method.name} needs at least {spec.min_non_base} source models besides the base")


GENOMES = ("ps", "dfs", "ps_dfs")
_DFS_KEYS = ("repeats", "layer_range", "fixed_first", "fixed_last", "max_depth", "scale_low", "scale_high")


def _check_genome(g: DictConfig, where: str) -> None:
    """genome.kind and the keys of its option: dfs keys under ps (or ps_trials outside ps_dfs) are errors."""
    _check(g.kind in GENOMES, where, "genome.kind", f"= {g.kind}; choose genome=ps, genome=dfs or genome=ps_dfs")
    unused = [k for k in _DFS_KEYS if g.kind == "ps" and g.get(k) is not None]
    unused += ["ps_trials"] if g.kind != "ps_dfs" and g.get("ps_trials") is not None else []
    _check(not unused, where, f"genome.{unused[0] if unused else ''}",
           f"is not used by genome={g.kind}; remove it or choose genome=dfs / genome=ps_dfs")
    if g.kind == "ps":
        return
    for key in ("repeats", "fixed_first", "fixed_last"):
        _check(g.get(key) is not None and g[key] >= (1 if key == "repeats" else 0), where, f"genome.{key}",
               f"= {g.get(key)} must be an integer >= {1 if key == 'repeats' else 0}")
    _check(g.max_depth is None or g.max_depth >= 1, where, "genome.max_depth", "must be >= 1 or null (= 2x the base's depth)")
    lr = g.layer_range
    _check(lr is None or (len(lr) == 2 and 0 <= lr[0] < lr[1]), where, "genome.layer_range",
           f"= {lr} must be [start, end] with 0 <= start < end (or null = all layers)")
    _check(g.scale_low is not None and g.scale_high is not None and 0 < g.scale_low <= g.scale_high, where,
           "genome.scale_low/scale_high", "must satisfy 0 < scale_low <= scale_high (equal = no scale genes)")
    if g.kind == "ps_dfs":
        _check(g.ps_trials is not None and g.ps_trials >= 1, where, "genome.ps_trials", "must be >= 1 under genome=ps_dfs")


def _probe_writable(out: Path) -> None:
    """UserError now if out_dir cannot be created (read-only disk, no permission); leaves no folder behind."""
    missing = [p for p in (out, *out.parents) if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"out_dir: cannot create {out} ({exc.strerror}); choose a writable folder") from None
    finally:
        for p in missing:  # deepest first
            with contextlib.suppress(OSError):
                p.rmdir()


def _param_bounds(name: str) -> tuple[float, float]:
    """The valid range of a merge parameter (merge_core's registry), unbounded when it has none."""
    try:
        from merge_core.methods import PARAM_BOUNDS
    except ImportError:
        return float("-inf"), float("inf")
    return PARAM_BOUNDS.get(name, (float("-inf"), float("inf")))


def _method_spec(name: str) -> Any:
    """The MethodSpec of a merge method from merge_core's registry (False if unknown, None if unavailable)."""
    try:
        from merge_core.methods import METHODS
    except ImportError:
        return None
    return METHODS.get(name, False)
