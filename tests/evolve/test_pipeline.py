"""evolve.pipeline is the one module that knows every stage: the stages import the context and the objective, never
the search loop or each other's callers (counting imports inside functions)."""

import ast
from pathlib import Path

import evolve

EVOLVE = Path(evolve.__file__).parent


def _imports(module: str) -> set[str]:
    """Every evolve module a module of evolve/ imports, at the top or inside functions."""
    tree = ast.parse((EVOLVE / f"{module}.py").read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            out |= {n.split(".")[1] for n in names if n.startswith("evolve.") and n.count(".") >= 1}
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("evolve.")}
    return out


def test_the_search_loop_imports_neither_export_nor_report():
    assert not _imports("search") & {"export", "report", "select", "pipeline"}


def test_export_report_select_take_the_context_never_the_loop():
    for module in ("export", "report", "select", "context", "objective", "score_cache", "ps_dfs"):
        assert not _imports(module) & {"search", "pipeline"}, module
    assert "context" in _imports("export") and "context" in _imports("report") and "objective" in _imports("select")


def test_only_the_pipeline_runs_search_then_export_then_report():
    users = {p.stem for p in EVOLVE.glob("*.py") if {"search", "export", "report"} <= _imports(p.stem)}
    assert users == {"pipeline"}


def test_private_optuna_apis_live_in_optuna_compat_only():
    for path in [*EVOLVE.glob("*.py"), *EVOLVE.glob("commands/*.py")]:
        if path.stem == "optuna_compat":
            continue
        text = path.read_text()
        assert "._storage" not in text and "storages._heartbeat" not in text and "journal._file" not in text, path
        assert "._trial_id" not in text, path
