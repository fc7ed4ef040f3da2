"""Sources whose vocabularies differ, with mergekit 0.1.5's semantics (`tokenizer_source`, the `tokenizer:` block).

The output tokenizer is the base's, a model's, or the union (base first, then every other model's tokens it
lacks, added tokens keeping their settings); tokens in `tokenizer.tokens` are added when missing. Embedding and
head rows are matched by token string: each source's rows are re-indexed to the output tokenizer before merging,
and a token a source lacks gets mergekit's default row: the one model that has it, else the base's row, else the
mean of the models that have it, else zeros (or what `tokenizer.tokens` says; `force` uses it for every model).
Rows padded by `pad_to_multiple_of` are the mean of the real rows.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import torch

from merge_core.errors import UserError
from merge_core.tokenizer import TokenizerBlock, TokenSetting

log = logging.getLogger(__name__)


def vocab_source(recipe: Any) -> tuple[str | None, TokenizerBlock | None]:
    """(tokenizer source, tokenizer block) of a recipe; the block wins over tokenizer_source, as in mergekit."""
    if recipe.tokenizer is not None:
        return recipe.tokenizer.source, recipe.tokenizer
    return recipe.tokenizer_source, None


def _load(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), use_fast=True, trust_remote_code=False)


def _union(base_tok, tokenizers: dict[str, Any], sizes: dict[str, int]):
    """mergekit's build_union_tokenizer: a copy of the base's tokenizer plus every other token inside vocab_size."""
    extra: dict[str, None] = {}
    added: dict[str, Any] = {}
    for model_id, tok in tokenizers.items():
        for text, idx in tok.get_vocab().items():
            if idx < sizes[model_id]:
                extra.setdefault(text)
        for idx, info in tok.added_tokens_decoder.items():
            if idx < sizes[model_id]:
                added.setdefault(info.content, info)
    with tempfile.TemporaryDirectory() as tmp:  # a copy: the base's tokenizer object stays untouched
        base_tok.save_pretrained(tmp)
        out = _load(Path(tmp))
    base_vocab = base_tok.get_vocab()
    plain = [t for t in extra if t not in added and t not in base_vocab]
    if plain:
        out.add_tokens(plain)
    for info in added.values():
        out.add_tokens(info)  # an AddedToken keeps its special/strip settings
    return out


class Vocabulary:
    """The output tokenizer and, per model, which source row feeds each output row (-1: the model lacks it)."""

    def __init__(self, tokenizer: Any, rows: dict[str, torch.Tensor], vocabs: dict[str, dict[str, int]],
                 block: TokenizerBlock | None, base_id: str, where: str) -> None:
        self.tokenizer = tokenizer
        self.vocab: dict[str, int] = tokenizer.get_vocab()
        self.n_tokens = len(self.vocab)
        pad = block.pad_to_multiple_of if block else None
        self.size = -(-self.n_tokens // pad) * pad if pad else self.n_tokens
        self.rows = rows
        self.vocabs = vocabs
        self.settings: dict[str, TokenSetting] = dict(block.tokens) if block else {}
        self.base_id, self.where = base_id, where
        self.tokens_by_id = [""] * self.n_tokens
        for text, idx in self.vocab.items():
            self.tokens_by_id[idx] = text

    @classmethod
    def build(cls, source: str, block: TokenizerBlock | None, models: dict[str, Any], base_id: str,
              source_dir: Path | None, where: str) -> Vocabulary:
        """Load every model's tokenizer, build the output one and the row maps (mergekit's build_tokenizer)."""
        for text, setting in (block.tokens if block else ()):
            if setting.source is not None and setting.source.kind != "zero" and setting.source.model not in models:
                raise UserError(f"{where}: tokenizer.tokens[{text!r}].source: model {setting.source.model!r} is not "
                                "one the recipe merges; name one of its models")
        sizes = {m: int(ck.config.get("vocab_size") or ck.shape(ck.embed_name)[0]) for m, ck in models.items()}
        try:
            base_tok = _load(models[base_id].tokenizer_dir)
        except Exception as exc:  # transformers raises many kinds for a folder without a usable tokenizer
            raise UserError(f"{where}: tokenizer_source: the base model {base_id!r} has no loadable tokenizer ({exc}); "
                            "add the base's tokenizer files to its folder") from None
        if len(base_tok.get_vocab()) > sizes[base_id]:
            raise UserError(f"{where}: tokenizer_source: the base {base_id!r}'s tokenizer has {len(base_tok.get_vocab())} "
                            f"tokens but vocab_size {sizes[base_id]}; use a base whose tokenizer fits its embedding")
        tokenizers = {base_id: base_tok}
        for model_id, ck in models.items():
            if model_id != base_id:
                try:
                    tokenizers[model_id] = _load(ck.tokenizer_dir)
                except Exception:  # mergekit: a model without a tokenizer is assumed to share the base's
                    log.warning("%s: no tokenizer for %s; assuming the base's", where, model_id)
        if source == "base":
            out = base_tok
        elif source == "union":
            out = _union(base_tok, tokenizers, sizes)
        else:
            out = tokenizers[source] if source in tokenizers else _load(source_dir)
        if block and block.tokens:
            out.add_tokens([t for t, _ in block.tokens if t not in out.get_vocab()])
        vocab = out.get_vocab()
        if max(vocab.values()) >= len(vocab):
            raise UserError(f"{where}: tokenizer_source: the output tokenizer's ids have gaps (max id {max(vocab.values())} "
                            f"for {len(vocab)} tokens); use a tokenizer with contiguous ids")
        rows: dict[str, torch.Tensor] = {}
        vocabs = {m: tokenizers.get(m, base_tok).get_vocab() for m in models}
        for model_id in models:
            own = vocabs[model_id]
            rows[model_id] = torch.tensor(
                [own[t] if own.get(t, sizes[model_id]) < sizes[model_id] else -1 for t in sorted(vocab, key=vocab.get)],
                dtype=torch.long)
        return cls(out, rows, vocabs, block, base_id, where)

    def align(self, name: str, tensors: dict[str, torch.Tensor], base: str | None) -> dict[str, torch.Tensor]:
        """Every model's `name` rows re-indexed to the output tokenizer (mergekit's PermutedVocabulary)."""
        models = list(tensors)
        shape = tensors[models[0]].shape[1:]
        if any(t.shape[1:] != shape for t in tensors.values()):
            listed = ", ".join(f"{m} {list(t.shape)}" for m, t in tensors.items())
            raise UserError(f"{self.where}: {name}: embedding widths differ ({listed}); merge models of the same size")
        dtype = tensors[models[0]].dtype
        for t in tensors.values():
            dtype = torch.promote_types(dtype, t.dtype)
        present = torch.stack([self.rows[m] >= 0 for m in models])  # (models, tokens)
        forced = torch.zeros(self.n_tokens, dtype=torch.bool)
        for text, setting in self.settings.items():
            if setting.force:
                forced[self.vocab[text]] = True
        defaults = {int(i): self._default(int(i), models, tensors, present[:, i], base)
                    for i in torch.nonzero(~present.all(0) | forced).flatten()}
        out = {}
        for m in models:
            src, row = tensors[m], self.rows[m]
            new = torch.zeros((self.size, *shape), dtype=dtype, device=src.device)
            keep = (row >= 0) & ~forced
            idx = torch.nonzero(keep).flatten()
            new[idx.to(src.device)] = src[row[keep].to(src.device)].to(dtype)
            for i, embed in defaults.items():
                if embed is not None and not keep[i]:
                    new[i] = embed.to(dtype)
            if self.size > self.n_tokens:  # padding rows: the mean of the real ones (mergekit, after Hewitt)
                new[self.n_tokens:] = new[: self.n_tokens].mean(dim=0)
            out[m] = new
        return out

    def _default(self, i: int, models: list[str], tensors: dict[str, torch.Tensor], has: torch.Tensor,
                 base: str | None) -> torch.Tensor | None:
        text = self.tokens_by_id[i]
        setting = self.settings.get(text)
        if setting is not None and setting.source is not None:
            return self._from_setting(text, i, setting, tensors)
        count = int(has.sum())
        if count == 1:
            donor = models[int(torch.nonzero(has)[0])]
            return tensors[donor][int(self.rows[donor][i])]
        if count == 0:
            log.warning("%s: token %r is in no model; its row is zero", self.where, text)
            return None
        if base in models and self.rows[base][i] >= 0:
            return tensors[base][int(self.rows[base][i])]
        total = None
        for m, ok in zip(models, has.tolist()):
            if ok:
                row = tensors[m][int(self.rows[m][i])].to(torch.float32)
                total = row if total is None else total + row
        return total / count

    def _from_setting(self, text: str, i: int, setting: TokenSetting, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        src = setting.source
        key = f"{self.where}: tokenizer.tokens[{text!r}].source"
        if src.kind == "zero":
            return torch.zeros(next(iter(tensors.values())).shape[1:])
        if src.model not in tensors:
            raise UserError(f"{key}: model {src.model!r} is not an input of this tensor; name a model the recipe merges")
        if src.kind == "model":
            row = int(self.rows[src.model][i])
            if row < 0:
                raise UserError(f"{key}: model {src.model!r} has no token {text!r}; choose a model that has it")
            return tensors[src.model][row]
        row = src.token_id if src.token is None else self.vocabs[src.model].get(src.token, -1)
        if not 0 <= row < tensors[src.model].shape[0]:
            raise UserError(f"{key}: token {src.token or src.token_id!r} is not in model {src.model!r}; "
                            "name a token (or id) of that model")
        return tensors[src.model][row]

    def translate_ids(self, value: Any, old_vocab: dict[str, int]) -> Any:
        """A special-token id (or list of ids) of the base's tokenizer, as the output tokenizer's id."""
        inverse = {i: t for t, i in old_vocab.items()}
        if isinstance(value, list):
            return [self.translate_ids(v, old_vocab) for v in value]
        if isinstance(value, int) and not isinstance(value, bool) and value in inverse:
            return self.vocab.get(inverse[value], value)
        return value
