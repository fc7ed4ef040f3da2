"""The only place that reaches into lm-eval beyond its documented API (checked against lm-eval 0.4.13).

Everything here is either a private attribute or a helper of `lm_eval.models` that is not part of the documented
`lm_eval.api` surface, so an lm-eval upgrade may move it; keeping them in one module makes that a one-file fix.
`tests/evolve/test_evaluate.py` compares `evolve.lm.EvalLM` with HFLM item by item, which catches a drift here.
"""

from __future__ import annotations

from typing import Any

LM_EVAL_VERSION_CHECKED = "0.4.13"


def task_filters(task: Any) -> list[Any]:
    """The task's filter ensembles: `Task.apply_filters` applies them to *all* instances, we need a subset.

    Why private: lm-eval has no public way to filter only some instances (the Evaluator scores a stage's new
    documents only), so the ensembles are read from `task._filters`.
    """
    return list(getattr(task, "_filters", None) or [])


def normalize_gen_kwargs(gen_kwargs: dict, default_max_gen_toks: int = 256) -> dict:
    """lm-eval's own normalisation of a request's generation kwargs (max_gen_toks aliases, do_sample/temperature)."""
    from lm_eval.models.utils import normalize_gen_kwargs as normalize

    return dict(normalize(gen_kwargs, default_max_gen_toks))


def stop_sequences(until: Any, eos: str | None) -> list[str]:
    """The stop strings HFLM uses: `until` as a list plus the EOS token's text (lm_eval.models.utils)."""
    from lm_eval.models.utils import handle_stop_sequences

    return handle_stop_sequences(list(until) if isinstance(until, (list, tuple)) else until, eos=eos)


def cut_at_stop(text: str, stop: list[str]) -> str:
    """Text before the first stop string, exactly as HFLM post-processes a generation (no thinking tokens)."""
    from lm_eval.models.utils import postprocess_generated_text

    return postprocess_generated_text(generation=text, stop=stop, think_end_token=None)


def has_bos_prefix(text: str, bos: str | None) -> bool:
    """Whether `text` already starts with the BOS text (HFLM then encodes it without special tokens)."""
    from lm_eval.models.utils import has_bos_prefix as check

    return check(text, bos)


def resolve_max_length(config: Any, tokenizer: Any) -> int:
    """HFLM's default context length for a model (config's positions, else the tokenizer's, else 2048)."""
    from lm_eval.models.utils import DEFAULT_MAX_LENGTH
    from lm_eval.models.utils import resolve_max_length as resolve

    return resolve(config, tokenizer, default=DEFAULT_MAX_LENGTH)


def rolling_windows(tokens: list[int], prefix_token: int, max_length: int) -> list[tuple[list[int], list[int]]]:
    """(context, continuation) windows of a rolling loglikelihood, as HFLM.loglikelihood_rolling builds them."""
    from lm_eval import utils

    windows = utils.get_rolling_token_windows(token_list=tokens, prefix_token=prefix_token, max_seq_len=max_length,
                                              context_len=1)
    return [utils.make_disjoint_window(w) for w in windows]


def reference_lm(model: Any, tokenizer: Any, batch_size: int, max_length: int | None) -> Any:
    """lm-eval's HFLM around the same live model: the exact fallback for generation settings our fast path lacks.

    HFLM gives the model a pad token when it has none (`configure_pad_token`), so it gets a copy of the tokenizer:
    the caller's tokenizer object stays as it was.
    """
    import copy

    from lm_eval.models.huggingface import HFLM

    kwargs = {"max_length": max_length} if max_length else {}
    return HFLM(pretrained=model, tokenizer=copy.deepcopy(tokenizer), device=str(next(model.parameters()).device),
                batch_size=batch_size, **kwargs)
