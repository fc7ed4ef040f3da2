"""EvalLM: lm-eval's documented model interface (`lm_eval.api.model.LM`) over a live Hugging Face causal LM.

It answers the three request types the way lm-eval's HFLM does (checked against lm-eval 0.4.13), without its waste:
- `loglikelihood`: tokenized exactly as HFLM (trailing context spaces moved into the continuation, the pair encoded
  whole and split at the context's length, BOS only where the tokenizer adds it, an empty context replaced by the
  BOS/EOS prefix token, left truncation to `max_length + 1` tokens); then each distinct context runs once and every
  continuation is scored from its key/value cache (`evolve.kv_batch.score_continuations`).
- `generate_until`: greedy decoding where each sequence leaves the batch at its first `until` string, at an EOS of
  the model's generation config, or after `max_gen_toks`; the text is cut at the stop strings like HFLM's. Sampling,
  beam settings or a generation config with logits processors go to HFLM itself (exact, slower).
- `loglikelihood_rolling`: HFLM's disjoint windows, scored like loglikelihood.
The model is used as it is at each call (weights changed in place change the next result); nothing is copied.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from lm_eval.api.model import LM

from evolve import lm_eval_adapter as adapter
from evolve.kv_batch import greedy_generate, score_continuations

DEFAULT_MAX_GEN_TOKS = 256  # HFLM.max_gen_toks
# generation-config keys that leave greedy decoding (with lm-eval's explicit max_length) exactly plain argmax
_PLAIN_GENERATION_KEYS = {
    "bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "transformers_version",
    "_from_model_config", "use_cache", "output_attentions", "output_hidden_states", "return_dict_in_generate",
    "output_scores", "output_logits", "max_length", "do_sample", "temperature", "top_k", "top_p", "min_p",
    "typical_p",
}


class EvalLM(LM):
    """lm-eval LM over a live causal LM; `batch_size_per_gpu` is the rows per forward pass (may be lowered)."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, batch_size: int = 1,
                 max_length: int | None = None) -> None:
        """Wrap `model` (already on its device, in eval mode) and its tokenizer; no model call yet."""
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        self._device = next(model.parameters()).device
        self.batch_size_per_gpu = batch_size
        self._max_length = max_length
        self._reference: Any = None  # HFLM, built only for generation settings the fast path does not cover
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (tokenizer.eos_token_id or 0)

    @property
    def max_length(self) -> int:
        """The context length HFLM would use: the explicit one, else the model config's."""
        return self._max_length or adapter.resolve_max_length(self.model.config, self.tokenizer)

    @property
    def eot_token_id(self) -> int:
        """End-of-text id (the tokenizer's EOS), as HFLM."""
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """The token that stands for an empty context: BOS, else EOS (HFLM's rule)."""
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    def tok_encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        """Token ids as HFLM.tok_encode: the tokenizer's special tokens unless the text already starts with BOS."""
        kwargs = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        if add_special_tokens is None and adapter.has_bos_prefix(text, self.tokenizer.decode(self.prefix_token_id)):
            kwargs["add_special_tokens"] = False
        return self.tokenizer.encode(text, **kwargs)

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context ids, continuation ids) of a loglikelihood request, as TemplateLM.loglikelihood tokenizes them."""
        if context == "":
            cont = self.tok_encode(continuation, add_special_tokens=False)
            prefix = self.prefix_token_id
            return ([prefix], cont) if prefix != cont[0] else (cont[:1], cont[1:])
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        whole = self.tok_encode(context + continuation)
        ctx = self.tok_encode(context)
        return ctx, whole[len(ctx) :]

    def score_tokens(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[tuple[float, bool]]:
        """(loglikelihood, is_greedy) of tokenized (context, continuation) pairs, truncated on the left as HFLM."""
        limit = self.max_length
        trimmed = []
        for i, (ctx, cont) in enumerate(pairs):
            if not ctx or not cont or len(cont) > limit:
                raise ValueError(f"loglikelihood request {i}: context {len(ctx)} and continuation {len(cont)} tokens; "
                                 f"both must be non-empty and the continuation at most max_length={limit}")
            # HFLM feeds (ctx + cont)[-(max_length + 1):][:-1]: the same as a context cut to fit before `cont`
            whole = (list(ctx) + list(cont))[-(limit + 1) :]
            trimmed.append((whole[: len(whole) - len(cont)], list(cont)))
        return score_continuations(self.model, trimmed, self.batch_size_per_gpu, self.pad_id)

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """lm-eval API: log p(continuation | context) and greedy-ness for each Instance's (context, continuation)."""
        return self.score_tokens([self.encode_pair(*req.args) for req in requests])

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """lm-eval API: log p(text) over HFLM's rolling windows of `max_length` tokens."""
        windows, owner = [], []
        for i, req in enumerate(requests):
            for ctx, cont in adapter.rolling_windows(self.tok_encode(req.args[0]), self.prefix_token_id,
                                                     self.max_length):
                windows.append((ctx, cont))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (ll, _) in zip(owner, self.score_tokens(windows), strict=True):
            totals[i] += ll
        return totals

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """lm-eval API: the continuation of each Instance's context, cut at its `until` strings."""
        out: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(repr(sorted(req.args[1].items())), []).append(i)
        eos_text = self.tokenizer.decode(self.eot_token_id, skip_special_tokens=False)
        for idx in groups.values():
            kwargs = adapter.normalize_gen_kwargs(requests[idx[0]].args[1], DEFAULT_MAX_GEN_TOKS)
            stop = adapter.stop_sequences(kwargs.pop("until", None), eos_text)
            max_new = int(kwargs.pop("max_gen_toks"))
            if not self._plain_greedy(kwargs):
                texts = self._reference_lm().generate_until([requests[i] for i in idx], disable_tqdm=True)
            else:
                texts = self._greedy([requests[i].args[0] for i in idx], stop, max_new)
            for i, text in zip(idx, texts, strict=True):
                out[i] = text
        return out  # type: ignore[return-value]

    def _greedy(self, contexts: list[str], stop: list[str], max_new: int) -> list[str]:
        """Greedy generations of `contexts`, in length-sorted batches, each row stopping at its first stop string."""
        max_ctx = self.max_length - max_new
        if max_ctx <= 0:
            raise ValueError(f"max_gen_toks={max_new} must be less than the model's max_length={self.max_length}")
        bos = self.tokenizer.bos_token
        # HFLM.tok_batch_encode: no special tokens when the text already starts with BOS; left-truncated to fit
        encoded = [self.tokenizer(c, add_special_tokens=not adapter.has_bos_prefix(c, bos))["input_ids"][-max_ctx:]
                   for c in contexts]
        order = sorted(range(len(contexts)), key=lambda i: (-len(encoded[i]), contexts[i]))
        eos = self.model.generation_config.eos_token_id if getattr(self.model, "generation_config", None) else None
        eos_ids = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
        terms = [s for s in stop if s]
        texts = [""] * len(contexts)
        size = self.batch_size_per_gpu
        for a in range(0, len(order), size):
            batch = order[a : a + size]

            def finished(row: int, tokens: list[int]) -> bool:
                text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                return any(t in text for t in terms)

            gens = greedy_generate(self.model, [encoded[i] for i in batch], max_new_tokens=max_new, pad_id=self.pad_id,
                                   eos_ids=eos_ids, finished=finished)
            for i, tokens in zip(batch, gens, strict=True):
                texts[i] = adapter.cut_at_stop(self.tokenizer.decode(tokens, skip_special_tokens=True), stop)
        return texts

    def _plain_greedy(self, kwargs: dict) -> bool:
        """Whether HF generate would do plain argmax decoding for these normalized kwargs and the model's config."""
        if kwargs.get("do_sample") or float(kwargs.get("temperature", 0.0)) != 0.0:
            return False
        if set(kwargs) - {"do_sample", "temperature"}:
            return False
        config = getattr(self.model, "generation_config", None)
        if config is not None and set(config.to_diff_dict()) - _PLAIN_GENERATION_KEYS:
            return False
        pad = self.tokenizer.pad_token_id
        # generate() writes pad tokens after a row's EOS; HFLM's text keeps them unless they are special tokens
        return pad is None or pad in self.tokenizer.all_special_ids

    def _reference_lm(self) -> Any:
        """HFLM around the same model (built once, on first need)."""
        if self._reference is None:
            self._reference = adapter.reference_lm(self.model, self.tokenizer, self.batch_size_per_gpu,
                                                   self._max_length)
        self._reference.batch_size_per_gpu = self.batch_size_per_gpu
        return self._reference
