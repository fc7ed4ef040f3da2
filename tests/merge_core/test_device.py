"""merge_core.device: the one dtype list, dtype names both ways, device resolution with one-line errors."""

from __future__ import annotations

import pytest
import torch

from merge_core.device import DTYPES, dtype_name, resolve_device, resolve_dtype
from merge_core.errors import UserError


def test_dtype_names_round_trip() -> None:
    assert list(DTYPES) == ["float32", "bfloat16", "float16"]
    for name, dtype in DTYPES.items():
        assert dtype_name(dtype) == name
        assert resolve_dtype(name, torch.float64) is dtype
    with pytest.raises(ValueError, match="float64"):
        dtype_name(torch.float64)


def test_resolve_dtype_default_passthrough_and_bad_name() -> None:
    assert resolve_dtype(None, torch.bfloat16) is torch.bfloat16
    assert resolve_dtype(torch.float16, torch.float32) is torch.float16
    with pytest.raises(UserError) as exc:
        resolve_dtype("int8", torch.float32)
    assert str(exc.value) == "dtype: 'int8' is not supported; use one of float32, bfloat16, float16"


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None) == resolve_device("auto")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="is not a device; use auto, cpu or cuda"):
        resolve_device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
def test_cuda_without_a_gpu_is_one_line() -> None:
    with pytest.raises(UserError, match="no CUDA GPU is available; use device=cpu or device=auto"):
        resolve_device("cuda")


def test_recipe_and_synthetic_use_the_same_list(tmp_path) -> None:
    from merge_core.recipe import parse_recipe
    from merge_core.synthetic import llama32_config

    data = {"merge_method": "linear", "models": [{"model": "a", "parameters": {"weight": 1.0}}]}
    for name in DTYPES:
        assert parse_recipe(data | {"dtype": name}).dtype == name
    with pytest.raises(UserError, match="use one of float32, bfloat16, float16"):
        parse_recipe(data | {"dtype": "float64"})
    shape = dict(layers=1, hidden=8, intermediate=16, heads=2, kv_heads=1, vocab=16, tied=True)
    assert llama32_config(**shape, dtype=torch.bfloat16)["dtype"] == "bfloat16"
