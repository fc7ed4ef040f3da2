"""Safe loading, checked over the source: no remote code, safe YAML only, pickles only with weights_only=True.

Behaviour: pickles are refused without allow_pickle=true (tests/evolve/test_merge_cli.py), a model folder asking
for its own code is refused by `evolve eval` (test_bad_input.py)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SOURCES = sorted(p for pkg in ("evolve", "merge_core", "eval_tasks") for p in (REPO / pkg).rglob("*.py"))


def _calls(name: str):
    """(file, Call node) of every call whose function is `<anything>.name` or `name`."""
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                fn = node.func
                if (fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", None)) == name:
                    yield path.relative_to(REPO), node


def _kw(node: ast.Call, key: str):
    return next((k.value for k in node.keywords if k.arg == key), None)


def test_every_from_pretrained_refuses_remote_code():
    calls = list(_calls("from_pretrained"))
    assert len(calls) >= 5
    for where, node in calls:
        value = _kw(node, "trust_remote_code")
        assert isinstance(value, ast.Constant) and value.value is False, f"{where}:{node.lineno}"


def test_yaml_is_read_with_safe_loaders_only():
    for bad in ("unsafe_load", "full_load", "unsafe_load_all", "full_load_all"):
        assert not list(_calls(bad)), bad
    for where, node in _calls("load"):
        if isinstance(node.func, ast.Attribute) and getattr(node.func.value, "id", None) == "yaml":
            loader = _kw(node, "Loader")
            assert isinstance(loader, ast.Name), f"{where}:{node.lineno}: yaml.load without a Loader"
            module = importlib.import_module(str(where.with_suffix("")).replace("/", "."))
            assert issubclass(getattr(module, loader.id), yaml.SafeLoader), f"{where}:{node.lineno}"


def test_torch_load_only_with_weights_only():
    calls = [(w, n) for w, n in _calls("load") if isinstance(n.func, ast.Attribute)
             and getattr(n.func.value, "id", None) == "torch"]
    assert calls  # the opt-in .bin reader
    for where, node in calls:
        value = _kw(node, "weights_only")
        assert isinstance(value, ast.Constant) and value.value is True, f"{where}:{node.lineno}"


def test_checkpoint_refuses_pickles_unless_asked(tiny_models, tmp_path):
    import torch
    from safetensors.torch import load_file

    from merge_core.checkpoint import Checkpoint
    from merge_core.errors import UserError

    dst = tmp_path / "pickled"
    dst.mkdir()
    (dst / "config.json").write_text((tiny_models["base"] / "config.json").read_text())
    torch.save(load_file(str(tiny_models["base"] / "model.safetensors")), dst / "pytorch_model.bin")
    with pytest.raises(UserError, match="pickled checkpoint refused"):
        Checkpoint(dst)
    assert Checkpoint(dst, allow_pickle=True).names
