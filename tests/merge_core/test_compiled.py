"""The compiled-kernel wrapper: our recompile limit holds during a call only, and inductor settings reach the compile."""

from __future__ import annotations

import torch

from merge_core.methods import compiled


def test_the_recompile_limit_is_raised_for_a_call_and_put_back(monkeypatch) -> None:
    seen: dict[str, object] = {}

    def fake_compile(fn, **kwargs):
        seen["options"] = kwargs.get("options")
        return lambda *a, **k: seen.setdefault("limit", torch._dynamo.config.recompile_limit) and fn(*a, **k)

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 8)
    kernel = compiled.compile_kernel(lambda x: x + 1, inductor={"cpp.enable_floating_point_contract_flag": "fast"})
    assert kernel(1) == 2
    assert seen["limit"] == compiled.RECOMPILE_LIMIT  # raised inside the call
    assert torch._dynamo.config.recompile_limit == 8  # and put back after it
    assert seen["options"] == {"cpp.enable_floating_point_contract_flag": "fast"}


def test_a_higher_limit_set_by_the_user_is_left_alone(monkeypatch) -> None:
    seen: list[int] = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: lambda *a: seen.append(torch._dynamo.config.recompile_limit))
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 500)
    compiled.compile_kernel(lambda: None)()
    assert seen == [500] and torch._dynamo.config.recompile_limit == 500
