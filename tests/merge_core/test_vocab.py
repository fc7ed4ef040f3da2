"""Vocabularies that differ: refused without a tokenizer source; with one, rows follow the output tokenizer in the
written folder and the live model alike (same logits), special ids and vocab_size agree with the tokenizer."""

from __future__ import annotations

import json

import pytest
import torch

from evolve.cli import main
from merge_core.errors import UserError
from merge_core.live import build_live_model, merge_into
from merge_core.recipe import parse_recipe
from merge_core.sources import Sources
from merge_core.synthetic import make_tokenizer
from merge_core.writer import write_model

ADDED = ["<|tool|>", "<|think|>"]


@pytest.fixture(scope="module")
def vocab_models(tmp_path_factory):
    """base (128 tokens), `added` (130: two added tokens), `padded` (192 rows, 128 tokens), `shifted` (its own
    tokenizer with the specials moved to the end, so every id differs from the base's)."""
    from merge_core.synthetic import SPECIAL_TOKENS, make_checkpoint

    root = tmp_path_factory.mktemp("vocab")
    tok = make_tokenizer(128)
    tok.add_tokens(ADDED, special_tokens=True)
    shifted = make_checkpoint(root / "shifted", layers=2, seed=5, vocab=128)
    # rewrite the shifted tokenizer's WordLevel ids: specials last
    data = json.loads((shifted / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    order = [t for t in vocab if t not in SPECIAL_TOKENS] + SPECIAL_TOKENS
    data["model"]["vocab"] = {t: i for i, t in enumerate(order)}
    for entry in data["added_tokens"]:
        entry["id"] = data["model"]["vocab"][entry["content"]]
    data["post_processor"]["special_tokens"][SPECIAL_TOKENS[0]]["ids"] = [data["model"]["vocab"][SPECIAL_TOKENS[0]]]
    (shifted / "tokenizer.json").write_text(json.dumps(data))
    return {
        "base": make_checkpoint(root / "base", layers=2, seed=0),
        "added": make_checkpoint(root / "added", layers=2, seed=1, vocab=130, tokenizer=tok),
        "padded": make_checkpoint(root / "padded", layers=2, seed=2, vocab=192, tokenizer=make_tokenizer(128)),
        "untied": make_checkpoint(root / "untied", layers=2, seed=3, vocab=130, tokenizer=tok, tied=False),
        "shifted": shifted,
    }


def _ties(m, *names, **extra):
    return {"merge_method": "ties", "base_model": str(m["base"]), "dtype": "float32", **extra,
            "models": [{"model": str(m[n]), "parameters": {"weight": 0.5, "density": 0.7}} for n in names]}


def test_mismatch_without_tokenizer_source_is_refused(vocab_models, recipe_file, tmp_path, capsys):
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["merge", f"recipe={recipe_file(_ties(vocab_models, 'added'))}", f"out={out}", "device=cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "vocab_size (128 vs 130)" in err
    assert "tokenizer_source: base" in err and "tokenizer_source: union" in err and not out.exists()


@pytest.mark.parametrize("source,size", [("union", 130), ("base", 128), ("added", 130)])
@pytest.mark.parametrize("with_untied", [False, True])
def test_live_logits_equal_written_folder(vocab_models, tmp_path, source, size, with_untied):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = vocab_models
    names = ("added", "padded", "untied") if with_untied else ("added", "padded")
    recipe = parse_recipe(_ties(m, *names, tokenizer_source=str(m["added"]) if source == "added" else source))
    sources = Sources.open(recipe)
    out = write_model(recipe, sources, tmp_path / "out", progress=False)
    config = json.loads((out / "config.json").read_text())
    tok = AutoTokenizer.from_pretrained(out)
    assert config["vocab_size"] == size == len(tok) and config["tie_word_embeddings"] is (not with_untied)
    assert (config["bos_token_id"], config["eos_token_id"]) == (tok.bos_token_id, tok.eos_token_id)
    if size == 130:
        assert [tok.convert_tokens_to_ids(t) for t in ADDED] == [128, 129]
    written = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    live = build_live_model(sources, "cpu", "float32")
    merge_into(live, recipe, sources)
    merge_into(live, recipe, sources)  # a second candidate reuses the cached aligned rows
    ids = torch.tensor([tok("<|tool|>hi <|think|>x")["input_ids"] if size == 130 else tok("hi x")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(written(ids).logits, live(ids).logits, atol=1e-6, rtol=0)


def test_rows_follow_tokens_by_string(vocab_models):
    m = vocab_models
    recipe = parse_recipe({"merge_method": "linear", "dtype": "float32", "tokenizer_source": "union",
                           "models": [{"model": str(m["shifted"]), "parameters": {"weight": 1.0}}]})
    sources = Sources.open(parse_recipe({**_ties(m, "shifted", tokenizer_source="base"), "merge_method": "ties"}))
    aligned = Sources.open(recipe)
    from merge_core.checkpoint import Checkpoint

    shifted = Checkpoint(m["shifted"]).get("model.embed_tokens.weight")
    vocab = aligned.vocabulary
    plan = type("P", (), {"kind": "embed", "out_name": "model.embed_tokens.weight", "base": None})()
    rows = aligned.align(plan, {str(m["shifted"]): shifted})[str(m["shifted"])]
    # the model's own tokenizer is the output (a single model): unchanged; against the base's ids, permuted
    assert torch.equal(rows, shifted) and vocab.size == 128
    base_rows = sources.vocabulary.align(plan.out_name, {str(m["shifted"]): shifted}, None)[str(m["shifted"])]
    shifted_vocab, base_vocab = sources.vocabulary.vocabs[str(m["shifted"])], sources.vocabulary.vocab
    for text in ("A", "<|begin_of_text|>", "z"):
        assert torch.equal(base_rows[base_vocab[text]], shifted[shifted_vocab[text]])


def test_model_source_translates_special_ids(vocab_models, tmp_path):
    from transformers import AutoTokenizer

    m = vocab_models
    recipe = parse_recipe(_ties(m, "shifted", tokenizer_source=str(m["shifted"])))
    out = write_model(recipe, Sources.open(recipe), tmp_path / "out", progress=False)
    config = json.loads((out / "config.json").read_text())
    gen = json.loads((out / "generation_config.json").read_text())
    tok = AutoTokenizer.from_pretrained(out)
    assert config["bos_token_id"] == gen["bos_token_id"] == tok.bos_token_id == 124
    assert config["eos_token_id"] == gen["eos_token_id"] == tok.eos_token_id == 125


BAD_BLOCKS = {
    "unknown key": ({"source": "union", "pad": 64}, "tokenizer.pad: unknown key"),
    "bad pad": ({"pad_to_multiple_of": 0}, "tokenizer.pad_to_multiple_of: 0 is not a positive integer"),
    "bad source": ({"tokens": {"<x>": {"source": {"kind": "nope"}}}}, "is not a token source"),
    "bad force": ({"tokens": {"<x>": {"force": "yes"}}}, "force: 'yes' is not true or false"),
}


@pytest.mark.parametrize("case", list(BAD_BLOCKS))
def test_bad_tokenizer_block_refused(case, vocab_models):
    block, needle = BAD_BLOCKS[case]
    with pytest.raises(UserError, match=needle.replace("(", r"\(").replace("[", r"\[")):
        parse_recipe(_ties(vocab_models, "added", tokenizer=block))


def test_block_round_trips_and_unknown_token_model_refused(vocab_models, tmp_path):
    from merge_core.recipe import recipe_to_dict

    m = vocab_models
    block = {"source": "union", "pad_to_multiple_of": 64, "tokens": {
        "<|new|>": {"source": {"kind": "zero"}}, "A": {"source": {"kind": "model_token", "model": str(m["added"]), "token": "B"},
                                                     "force": True}, "<|tool|>": {"source": str(m["added"])}}}
    recipe = parse_recipe(_ties(m, "added", tokenizer=block))
    assert recipe_to_dict(recipe)["tokenizer"] == block
    assert parse_recipe(recipe_to_dict(recipe)) == recipe
    bad = parse_recipe(_ties(m, "added", tokenizer={"tokens": {"<|tool|>": {"source": str(m["padded"]), "force": True}}}))
    with pytest.raises(UserError, match=r"tokenizer.tokens\['<\|tool\|>'\].source: model .*padded.* is not one the recipe merges"):
        Sources.open(bad)


def test_passthrough_with_union_live_equals_written(vocab_models, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = vocab_models
    recipe = parse_recipe({"merge_method": "passthrough", "tokenizer_source": "union", "dtype": "float32",
                           "slices": [{"sources": [{"model": str(m["added"]), "layer_range": [0, 2]}]},
                                      {"sources": [{"model": str(m["padded"]), "layer_range": [1, 2]}],
                                       "parameters": {"scale": [{"filter": "o_proj", "value": 0.5}, {"value": 1.0}]}}]})
    sources = Sources.open(recipe)
    out = write_model(recipe, sources, tmp_path / "out", progress=False)
    tok = AutoTokenizer.from_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == len(tok) == 130 and config["num_hidden_layers"] == 3
    written = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    live = build_live_model(sources, "cpu", "float32")
    merge_into(live, recipe, sources)
    merge_into(live, recipe, sources)
    ids = torch.tensor([tok("<|tool|>hi <|think|>x")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(written(ids).logits, live(ids).logits, atol=1e-6, rtol=0)


def test_token_listed_without_source_gets_the_default_rule(vocab_models, tmp_path):
    from transformers import AutoTokenizer

    m = vocab_models
    recipe = parse_recipe(_ties(m, "added", tokenizer={"source": "base", "tokens": {"<|tool|>": {}, "<|fresh|>": {}}}))
    sources = Sources.open(recipe)
    out = write_model(recipe, sources, tmp_path / "out", progress=False)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.convert_tokens_to_ids(["<|tool|>", "<|fresh|>"]) == [128, 129] and sources.vocabulary.size == 130
    from safetensors.torch import load_file

    from merge_core.checkpoint import Checkpoint

    embed = load_file(str(out / "model.safetensors"))["model.embed_tokens.weight"]
    added = Checkpoint(m["added"]).get("model.embed_tokens.weight")
    # <|tool|> only in `added`: its row there (both inputs get it, so ties keeps it); <|fresh|> in no model: zeros
    assert torch.allclose(embed[128], added[128], atol=1e-6) and torch.count_nonzero(embed[129]) == 0
