"""The first minute: before models are prepared, one line says what will be made and roughly how long."""

from __future__ import annotations

import json

from evolve.prepare import DEFAULTS, announce


def test_demo_line_names_what_is_missing_and_a_time(tmp_path):
    hyper = {**DEFAULTS, "limit": None}
    line = announce(tmp_path, ("arith", "units"), hyper, {"units": {"steps": 60}}, 0, "cpu")
    assert "\n" not in line and "SmolLM2-135M-Instruct base" in line
    assert "specialist arith (100 fine-tuning steps)" in line and "specialist units (60 fine-tuning steps)" in line
    assert "min on this machine's" in line and str(tmp_path) in line


def test_demo_line_is_empty_when_everything_is_cached(tmp_path):
    hyper = {**DEFAULTS, "limit": None}
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "manifest.json").write_text(json.dumps({"kind": "smollm2_base"}))
    (tmp_path / "arith").mkdir()
    (tmp_path / "arith" / "manifest.json").write_text(json.dumps({"hyper": hyper, "seed": 0}))
    assert announce(tmp_path, ("arith",), hyper, {}, 0, "cpu") == ""
    line = announce(tmp_path, ("arith",), hyper, {}, 1, "cpu")  # another seed: the specialist is made again
    assert "base" not in line.split(":", 1)[1] and "specialist arith" in line


def test_toy_preparer_says_what_it_makes_first(tmp_path, capsys):
    from evolve.toy import prepare

    prepare(tmp_path / "c", progress=True, base_steps=2, steps=2)
    out = capsys.readouterr().out
    assert out.startswith("preparing the toy models into") and "half a minute" in out.splitlines()[0]
    prepare(tmp_path / "c", progress=True, base_steps=2, steps=2)
    assert "preparing" not in capsys.readouterr().out  # cached: nothing to announce
