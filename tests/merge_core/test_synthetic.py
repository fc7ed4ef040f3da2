"""merge_core.synthetic: the char-level tokenizer and Llama-3.2-shaped configs of the tiny test models."""

from __future__ import annotations

import torch

from merge_core.synthetic import LLAMA32_SHAPES, llama32_config, llama_weight_shapes, make_tokenizer


def test_tokenizer_roundtrip_and_size():  # from test_checkpoint.py
    tok = make_tokenizer(100)
    assert len(tok) == 100
    ids = tok("Hi there!")["input_ids"]
    assert ids[0] == tok.bos_token_id and max(ids) < 100
    assert tok.decode(ids, skip_special_tokens=True) == "Hi there!"


def test_weight_shapes_follow_the_config_and_the_tie() -> None:
    shape = dict(LLAMA32_SHAPES["1B"], layers=2)
    tied = dict(llama_weight_shapes(llama32_config(**shape, tied=True, dtype=torch.bfloat16)))
    untied = dict(llama_weight_shapes(llama32_config(**shape, tied=False, dtype=torch.bfloat16)))
    assert tied["model.embed_tokens.weight"] == (128256, 2048) and "lm_head.weight" not in tied
    assert untied["lm_head.weight"] == (128256, 2048) and untied.keys() - tied.keys() == {"lm_head.weight"}
    assert tied["model.layers.1.self_attn.k_proj.weight"] == (8 * 64, 2048)
    assert tied["model.layers.1.mlp.down_proj.weight"] == (2048, 8192) and tied["model.norm.weight"] == (2048,)
    assert len(tied) == 1 + 2 * 9 + 1
