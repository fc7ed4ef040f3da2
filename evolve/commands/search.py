"""`evolve search conf=NAME [k=v ...] [-m]`: Hydra composes the config (a sweep with -m), evolve.pipeline runs it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from evolve.config import ConfArgs, compose_config, hydra_overrides, parse_args, sweep_combinations
from evolve.errors import UserError

# Hydra's own outputs stay inside out_dir (sweeps: out_dir/job<N>/) and it neither logs to files nor chdirs.
HYDRA_SETTINGS = [
    "hydra.output_subdir=null",
    "hydra/job_logging=none",
    "hydra/hydra_logging=none",
    "hydra.run.dir=${out_dir}",
    "hydra.sweep.dir=${out_dir}",
    "hydra.sweep.subdir=job${hydra.job.num}",
    "hydra.job.chdir=false",
]


def run(args: list[str], evaluator_factory: Any = None) -> int:
    """Compose and validate every config of the run (or sweep) first, then hand the run to hydra.main, whose jobs
    run those configs (Hydra's launcher makes the run/sweep folders and numbers the jobs)."""
    cargs = parse_args(args)
    combos = sweep_combinations(cargs.overrides) if cargs.multirun else [cargs.overrides]
    configs = {tuple(combo): compose_config(cargs, combo) for combo in combos}
    new_dirs = {Path(cfg.out_dir) for cfg in configs.values() if not Path(cfg.out_dir).exists()}
    try:
        return _run_hydra(cargs, configs, evaluator_factory)
    except UserError:
        for out in new_dirs:  # Hydra made them before our checks failed: bad input leaves nothing behind
            _remove_empty_tree(out)
        raise


def _remove_empty_tree(root: Path) -> None:
    """Remove `root` and its subfolders if they hold no file."""
    if not root.is_dir() or any(p.is_file() or p.is_symlink() for p in root.rglob("*")):
        return
    for d in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        d.rmdir()
    root.rmdir()


def _job_config(cfg, multirun: bool):
    """Each sweep job gets its own study and out_dir (out_dir/job<N>, study_name_job<N>)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    if multirun:
        hc = HydraConfig.get()
        cfg.out_dir = hc.runtime.output_dir
        cfg.study_name = f"{cfg.study_name}_job{hc.job.num}"
        overrides = list(hc.overrides.task)
        # a person reading a sweep sees which job is which, on the console and in the job's own folder
        print(f"== sweep job {hc.job.num}: {' '.join(overrides) or '(no overrides)'} -> {cfg.out_dir}", flush=True)
        out = Path(cfg.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        from merge_core.files import atomic_write_text

        atomic_write_text(out / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create({"job": int(hc.job.num),
                                                                                       "overrides": overrides})))
    return cfg


def _study_args(cargs: ConfArgs, cfg) -> list[str]:
    """The arguments that name this run's study again (for the `export` line printed at the end)."""
    import conf as conf_pkg

    name = cargs.config_name if cargs.config_dir == conf_pkg.PATH else str(cargs.config_dir / f"{cargs.config_name}.yaml")
    if not cargs.multirun:
        return [f"conf={name}", *cargs.overrides]
    from hydra.core.hydra_config import HydraConfig

    job = [o for o in HydraConfig.get().overrides.task if not o.startswith(("out_dir=", "study_name="))]
    return [f"conf={name}", *job, f"out_dir={cfg.out_dir}", f"study_name={cfg.study_name}"]


def _composed(cargs: ConfArgs, configs: dict[tuple[str, ...], Any]) -> Any:
    """The config composed and validated up front for the job Hydra runs now (its overrides name it)."""
    if not cargs.multirun:
        return configs[tuple(cargs.overrides)]
    from hydra.core.hydra_config import HydraConfig

    job = tuple(HydraConfig.get().overrides.task)
    if job not in configs:  # a job Hydra found beyond the command line (a sweep in the YAML's hydra section)
        configs[job] = compose_config(cargs, list(job))
    return configs[job]


def _run_hydra(cargs: ConfArgs, configs: dict[tuple[str, ...], Any], evaluator_factory: Any = None) -> int:
    import hydra

    from evolve import schema
    from evolve.pipeline import run_search
    from evolve.summary import closing_lines

    schema.register()
    errors: list[BaseException] = []

    def task(_hydra_cfg) -> None:
        try:
            cfg = _job_config(_composed(cargs, configs), cargs.multirun)
            run_search(cfg, evaluator_factory)
            print(closing_lines(cfg, _study_args(cargs, cfg)), flush=True)
        except Exception as exc:  # noqa: BLE001 - Hydra would print its own traceback and exit 1
            # re-raised after Hydra returns, so the CLI maps it like any command's error (one line for bad input,
            # a full disk or permissions; a real traceback for our bugs). Ctrl-C/SIGTERM pass straight through.
            errors.append(exc)

    main = hydra.main(version_base="1.3", config_path=str(cargs.config_dir), config_name=cargs.config_name)(task)
    argv = ["evolve search", *cargs.overrides, *hydra_overrides(cargs.config_dir), *HYDRA_SETTINGS]
    if cargs.multirun:
        argv.append("--multirun")
    saved = sys.argv
    sys.argv = argv
    try:
        main()
    finally:
        sys.argv = saved
    if errors:
        raise errors[0]
    return 0
