"""Chat templates, mergekit semantics: the tokenizer source's template is kept; `chat_template:` picks auto (the
most common among the models), a named template (chatml, llama3) or Jinja text; anything else is refused."""

from __future__ import annotations

import shutil

import pytest

from merge_core.errors import UserError
from merge_core.recipe import parse_recipe
from merge_core.sources import Sources
from merge_core.writer import write_model

INSTRUCT = "{% for m in messages %}<<{{ m['role'] }}>>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<<assistant>>{% endif %}"
OTHER = "{% for m in messages %}[{{ m['content'] }}]{% endfor %}"
CHAT = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def chat_models(tiny_models, tmp_path_factory):
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("chat")
    out = {}
    for name, src, template in (("base", "base", INSTRUCT), ("a", "ft_a", OTHER), ("b", "ft_b", OTHER)):
        shutil.copytree(tiny_models[src], root / name)
        tok = AutoTokenizer.from_pretrained(root / name)
        tok.chat_template = template
        tok.save_pretrained(root / name)
        out[name] = root / name
    return out


def _build(models, tmp_path, **extra):
    from transformers import AutoTokenizer

    recipe = parse_recipe({"merge_method": "ties", "base_model": str(models["base"]), **extra,
                           "models": [{"model": str(models[k]), "parameters": {"weight": 0.5, "density": 0.5}} for k in ("a", "b")]})
    out = write_model(recipe, Sources.open(recipe), tmp_path / "out", progress=False)
    return AutoTokenizer.from_pretrained(out)


def test_base_template_kept(chat_models, tmp_path):
    tok = _build(chat_models, tmp_path)
    assert tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True) == "<<user>>hi<<assistant>>"


def test_base_template_kept_with_union_tokenizer(chat_models, tmp_path):
    tok = _build(chat_models, tmp_path, tokenizer_source="union")
    assert tok.chat_template == INSTRUCT


@pytest.mark.parametrize("choice,want", [("auto", "[hi]"), ("chatml", "<|im_start|>user\nhi<|im_end|>\n"), (OTHER, "[hi]")])
def test_recipe_choice(chat_models, tmp_path, choice, want):
    tok = _build(chat_models, tmp_path, chat_template=choice)
    assert tok.apply_chat_template(CHAT, tokenize=False) == want


def test_llama3_template_named(chat_models, tmp_path):
    tok = _build(chat_models, tmp_path, chat_template="llama3")
    text = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert text == "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"


def test_unknown_template_name_refused():
    with pytest.raises(UserError, match="chat_template: 'vicuna' is not a template name or Jinja text; use auto, chatml, llama3"):
        parse_recipe({"merge_method": "linear", "chat_template": "vicuna", "models": [{"model": "x", "parameters": {"weight": 1}}]})
