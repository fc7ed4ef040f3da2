"""Batched forward passes that reuse a key/value cache: shared-prompt scoring and greedy decoding (torch only).

Both work on token ids and a Hugging Face causal LM; lm-eval's request semantics live in `evolve.lm`.
- `score_continuations`: each distinct prompt runs once (right-padded, no mask, like HFLM's loglikelihood batches);
  its cache is kept and every continuation of it runs on top of that cache, so a 4-choice item with multi-token
  choices costs one prompt plus four short continuations instead of four prompt+continuation sequences.
- `greedy_generate`: left-padded prefill with attention mask and position ids as `generate` builds them, then one
  token per step; a row leaves the batch (and its cache) as soon as it is finished.
Batches are formed from length-sorted inputs so rows in one batch need little padding.
A model whose decoder layers do not own one cache slot each (a layer path that repeats one module, merge_core.path)
would mix the repeats' keys in a cache, so for it both run without one (`cache_slots_unique` false): full sequences.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from transformers import DynamicCache

Tokens = Sequence[int]


def _device(model: torch.nn.Module) -> torch.device:
    """The device of the model's parameters."""
    return next(model.parameters()).device


def cache_slots_unique(model: torch.nn.Module) -> bool:
    """Whether every decoder layer has its own key/value cache slot (0..n-1, each once), so a cache is exact."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        return True
    slots = [getattr(getattr(layer, "self_attn", None), "layer_idx", None) for layer in layers]
    return sorted(s for s in slots if s is not None) == list(range(len(layers)))


def score_continuations(model: torch.nn.Module, pairs: Sequence[tuple[Tokens, Tokens]], batch_size: int,
                        pad_id: int) -> list[tuple[float, bool]]:
    """(sum of log p(continuation | prompt), whether greedy decoding gives the continuation) for each (prompt, cont).

    Prompts must be non-empty and already truncated by the caller. Equal prompts share one pass; equal pairs one
    result. Prompts are processed longest first in batches of `batch_size`, their continuations in batches of at most
    `batch_size` rows sorted by length.
    """
    by_prompt: dict[tuple[int, ...], dict[tuple[int, ...], list[int]]] = {}
    for i, (prompt, cont) in enumerate(pairs):
        if not prompt or not cont:
            raise ValueError(f"request {i}: empty prompt or continuation ({len(prompt)}, {len(cont)} tokens)")
        by_prompt.setdefault(tuple(prompt), {}).setdefault(tuple(cont), []).append(i)
    prompts = sorted(by_prompt, key=lambda p: (-len(p), p))  # longest first: an out-of-memory shows at once
    out: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
    if not cache_slots_unique(model):
        keys = sorted({(p, c) for p in by_prompt for c in by_prompt[p]}, key=lambda k: -len(k[0]) - len(k[1]))
        for a in range(0, len(keys), batch_size):
            chunk = keys[a : a + batch_size]
            for (p, c), result in zip(chunk, _score_whole(model, chunk, pad_id), strict=True):
                for i in by_prompt[p][c]:
                    out[i] = result
        return out
    for a in range(0, len(prompts), batch_size):
        chunk = prompts[a : a + batch_size]
        conts = [(b, cont) for b, p in enumerate(chunk) for cont in by_prompt[p]]
        for (b, cont), result in zip(conts, _score_chunk(model, chunk, conts, batch_size, pad_id), strict=True):
            for i in by_prompt[chunk[b]][cont]:
                out[i] = result
    return out


def _score_chunk(model: torch.nn.Module, prompts: list[tuple[int, ...]], conts: list[tuple[int, tuple[int, ...]]],
                 batch_size: int, pad_id: int) -> list[tuple[float, bool]]:
    """One prompt pass over `prompts`, then the continuations (prompt index, tokens) from its cache."""
    dev = _device(model)
    lens = torch.tensor([len(p) for p in prompts], device=dev)
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, : len(p)] = torch.tensor(p)
    with torch.no_grad():
        # right padding needs no mask (causal): the rows' real positions never see it; only each row's last real
        # position's logits are projected onto the vocabulary
        out = model(ids.to(dev), use_cache=True, logits_to_keep=(lens - 1).view(-1, 1))
    first = F.log_softmax(out.logits[:, 0], dim=-1)  # [prompts, vocab], the logits' dtype as in HFLM
    first_greedy = first.argmax(dim=-1)
    layers = [(k, v) for k, v, *_ in out.cache]
    rest: dict[int, tuple[torch.Tensor, bool]] = {}
    multi = sorted((k for k, (_, c) in enumerate(conts) if len(c) > 1), key=lambda k: -len(conts[k][1]))
    for a in range(0, len(multi), batch_size):
        rows = multi[a : a + batch_size]
        rest.update(zip(rows, _continue(model, layers, lens, width, [conts[k] for k in rows], pad_id), strict=True))
    results = []
    for k, (b, cont) in enumerate(conts):
        values = first[b, cont[0] : cont[0] + 1]
        greedy = bool(first_greedy[b] == cont[0])
        if k in rest:
            tail, tail_greedy = rest[k]
            values, greedy = torch.cat([values, tail]), greedy and tail_greedy
        results.append((float(values.sum()), greedy))
    return results


def _score_whole(model: torch.nn.Module, pairs: list[tuple[tuple[int, ...], tuple[int, ...]]],
                 pad_id: int) -> list[tuple[float, bool]]:
    """(prompt, cont) pairs as whole right-padded sequences, no cache (HFLM's computation, for cache-unsafe models)."""
    dev = _device(model)
    width = max(len(p) + len(c) for p, c in pairs) - 1
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    for r, (p, c) in enumerate(pairs):
        ids[r, : len(p) + len(c) - 1] = torch.tensor((p + c)[:-1])
    with torch.no_grad():
        logp = F.log_softmax(model(ids.to(dev), use_cache=False).logits, dim=-1)
    out = []
    for r, (p, c) in enumerate(pairs):
        rows = logp[r, len(p) - 1 : len(p) + len(c) - 1]
        target = torch.tensor(c, device=dev)
        out.append((float(rows.gather(-1, target[:, None]).sum()), bool((rows.argmax(-1) == target).all())))
    return out


def _continue(model: torch.nn.Module, layers: list[tuple[torch.Tensor, torch.Tensor]], lens: torch.Tensor, width: int,
              rows: list[tuple[int, tuple[int, ...]]], pad_id: int) -> list[tuple[torch.Tensor, bool]]:
    """Log-probs of continuation tokens 2.. of `rows` (prompt index, tokens), run on the prompts' cached keys/values."""
    dev = _device(model)
    index = torch.tensor([b for b, _ in rows], device=dev)
    n = max(len(c) for _, c in rows) - 1
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    for r, (_, cont) in enumerate(rows):
        ids[r, : len(cont) - 1] = torch.tensor(cont[:-1])
    row_lens = lens[index]
    # the prompt pass was right-padded: its padding positions hold keys of pad tokens, masked out here
    mask = torch.cat([torch.arange(width, device=dev)[None, :] < row_lens[:, None],
                      torch.ones(len(rows), n, dtype=torch.bool, device=dev)], dim=1).long()
    positions = row_lens[:, None] + torch.arange(n, device=dev)[None, :]
    past = DynamicCache(ddp_cache_data=[(k.index_select(0, index), v.index_select(0, index)) for k, v in layers],
                        config=model.config)
    with torch.no_grad():
        logits = model(ids.to(dev), attention_mask=mask, position_ids=positions, cache=past,
                       use_cache=True).logits
    logp = F.log_softmax(logits, dim=-1)
    greedy = logp.argmax(dim=-1)
    out = []
    for r, (_, cont) in enumerate(rows):
        target = torch.tensor(cont[1:], device=dev)
        m = len(target)
        out.append((logp[r, :m].gather(-1, target[:, None]).squeeze(-1), bool((greedy[r, :m] == target).all())))
    return out


def greedy_generate(model: torch.nn.Module, prompts: Sequence[Tokens], *, max_new_tokens: int, pad_id: int,
                    eos_ids: set[int], finished: Callable[[int, list[int]], bool]) -> list[list[int]]:
    """Greedy continuation tokens of one batch of prompts.

    A row stops after emitting a token of `eos_ids`, after `max_new_tokens`, or once `finished(row, tokens)` is true
    (the caller's stop strings); it then leaves the batch, so finished rows cost nothing more.
    """
    dev = _device(model)
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, width - len(p) :] = torch.tensor(p)
        mask[b, width - len(p) :] = 1
    ids, mask = ids.to(dev), mask.to(dev)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)  # as generate() derives them from the mask
    if not cache_slots_unique(model):
        return _greedy_uncached(model, ids, mask, positions, max_new_tokens, eos_ids, finished)
    cache = DynamicCache(config=model.config)
    generated: list[list[int]] = [[] for _ in prompts]
    rows = list(range(len(prompts)))
    with torch.no_grad():
        logits = model(ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                       logits_to_keep=1).logits[:, -1]
        next_pos = positions[:, -1] + 1
        for _ in range(max_new_tokens):
            tokens = logits.argmax(dim=-1)
            keep = _step(rows, tokens, generated, max_new_tokens, eos_ids, finished)
            if not keep:
                break
            if len(keep) < len(rows):
                select = torch.tensor(keep, device=dev)
                cache.batch_select_indices(select)
                mask, tokens, next_pos = mask[select], tokens[select], next_pos[select]
                rows = [rows[r] for r in keep]
            mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
            logits = model(tokens[:, None], attention_mask=mask, position_ids=next_pos[:, None], cache=cache,
                           use_cache=True).logits[:, -1]
            next_pos = next_pos + 1
    return generated


def _step(rows: list[int], tokens: torch.Tensor, generated: list[list[int]], max_new_tokens: int, eos_ids: set[int],
          finished: Callable[[int, list[int]], bool]) -> list[int]:
    """Append each running row's next token; the batch positions of the rows that go on (no EOS, stop or limit)."""
    keep = []
    for r, (row, tok) in enumerate(zip(rows, tokens.tolist(), strict=True)):
        generated[row].append(tok)
        if tok not in eos_ids and len(generated[row]) < max_new_tokens and not finished(row, generated[row]):
            keep.append(r)
    return keep


def _greedy_uncached(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                     max_new_tokens: int, eos_ids: set[int], finished: Callable[[int, list[int]], bool]) -> list[list[int]]:
    """greedy_generate without a cache: the whole sequence runs again at every step (cache-unsafe models)."""
    generated: list[list[int]] = [[] for _ in range(ids.shape[0])]
    rows = list(range(ids.shape[0]))
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(ids, attention_mask=mask, position_ids=positions, use_cache=False, logits_to_keep=1).logits
            tokens = logits[:, -1].argmax(dim=-1)
            keep = _step(rows, tokens, generated, max_new_tokens, eos_ids, finished)
            if not keep:
                break
            select = torch.tensor(keep, device=ids.device)
            rows = [rows[r] for r in keep]
            ids = torch.cat([ids[select], tokens[select, None]], dim=1)
            mask = torch.cat([mask[select], mask.new_ones((len(rows), 1))], dim=1)
            positions = torch.cat([positions[select], positions[select, -1:] + 1], dim=1)
    return generated
