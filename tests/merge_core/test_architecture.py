"""Architecture data: the weights of each class, the embed/head/final-norm names and filters, the layer count."""

from __future__ import annotations

import pytest

from merge_core.architecture import family, get_architecture, layer_count, supported_architectures
from merge_core.checkpoint import Checkpoint
from merge_core.errors import UserError
from merge_core.synthetic import make_checkpoint
from tests.merge_core.plans import CONFIG, LAYERS, PER_LAYER, plans_of


def test_architectures_as_data() -> None:  # moved from test_plan.py
    assert supported_architectures() == ["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"]
    text = "merge_method: linear\nparameters: {weight: 1}\nmodels: [{model: a}, {model: b}]"
    qwen = plans_of(text, {"architectures": ["Qwen2ForCausalLM"], "num_hidden_layers": 2})
    assert "model.layers.1.self_attn.k_proj.bias" in qwen and "model.layers.1.self_attn.o_proj.bias" not in qwen
    assert len(qwen) == 1 + 2 * (PER_LAYER + 3) + 1
    llama_bias = plans_of(text, {**CONFIG, "attention_bias": True})
    assert "model.layers.3.self_attn.o_proj.bias" in llama_bias and "model.layers.0.mlp.up_proj.bias" not in llama_bias
    mistral = plans_of(text, {**CONFIG, "architectures": ["MistralForCausalLM"]}, tied=False)
    assert len(mistral) == 1 + LAYERS * PER_LAYER + 2
    with pytest.raises(UserError, match="'GPT2LMHeadModel' is not supported; use a model of one of LlamaForCausalLM"):
        get_architecture({"architectures": ["GPT2LMHeadModel"]})


@pytest.mark.parametrize("name", ["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"])
def test_outer_names_and_filters_select_exactly_their_weight(name: str) -> None:
    config = {"architectures": [name], "num_hidden_layers": 3, "attention_bias": True, "mlp_bias": True}
    arch = get_architecture(config)
    assert (arch.embed_name, arch.head_name, arch.final_norm_name) == (
        "model.embed_tokens.weight", "lm_head.weight", "model.norm.weight")
    # the genome's recipes (and so the exported YAML) depend on these exact strings
    assert arch.outer_filters() == ("embed_tokens", "lm_head", "model.norm")
    names = [w.name for w in arch.weights(config)]
    for flt, own in zip(arch.outer_filters(), (arch.embed_name, arch.head_name, arch.final_norm_name)):
        assert [n for n in names if flt in n] == [own]
    (head,) = [w for w in arch.post_weights(config) if w.kind == "head"]
    assert head.name == arch.head_name and head.tied_to == arch.embed_name and head.optional


def test_family_falls_back_for_classes_not_supported() -> None:
    assert family({"architectures": ["Qwen2ForCausalLM"]}).name == "Qwen2ForCausalLM"
    other = family({"architectures": ["GPT2LMHeadModel"]})
    assert other.name in supported_architectures() and other.head_name == "lm_head.weight"
    assert family().embed_name == family({}).embed_name == "model.embed_tokens.weight"


def test_layer_count_reads_the_architecture_key() -> None:
    assert layer_count(CONFIG) == LAYERS
    for bad in (0, "4", True, None):
        with pytest.raises(UserError, match="num_hidden_layers: .* is not a positive integer; fix the model's config.json"):
            layer_count({**CONFIG, "num_hidden_layers": bad})
    with pytest.raises(UserError, match="is not supported"):
        layer_count({"architectures": ["GPT2LMHeadModel"], "num_hidden_layers": 2})


def test_checkpoint_ties_by_the_data_names(tmp_path) -> None:
    tied = Checkpoint(make_checkpoint(tmp_path / "t", tied=True))
    assert (tied.head_name, tied.embed_name) == ("lm_head.weight", "model.embed_tokens.weight")
    assert tied.resolve("lm_head.weight") == "model.embed_tokens.weight" and tied.has("lm_head.weight")
    assert "lm_head.weight" not in tied.names
    untied = Checkpoint(make_checkpoint(tmp_path / "u", tied=False))
    assert untied.resolve("lm_head.weight") == "lm_head.weight" and "lm_head.weight" in untied.names
