"""Generation: temperature, top-k and top-p sampling, with a KV cache that slides past the context window.

``python -m lmfast.generate`` (the command line) and the trainer's end-of-run sample both run this.

The window. Every token is predicted from at most ``context_length`` tokens. The window starts as the last
``context_length`` tokens of the prompt; when the next token would overflow it, the window keeps its last
``window_keep`` tokens (``context_length`` by default), prefills them again into an emptied cache, and decoding
goes on. So generation never stops at the context limit, and with the default every token past it sees a full
window, exactly as a model fed its last ``context_length`` tokens without a cache would (``tests/cli/test_generate.py``
holds the two equal, token for token). A smaller ``window_keep`` re-prefills once every
``context_length - window_keep + 1`` tokens instead of at every token, with less context.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from lmfast.model.precision import auto_autocast_dtype
from lmfast.model.text_stream import TextStream

__all__ = ["sample_next", "check_sampling", "generate_ids", "generate_samples", "generate_text", "Sample",
           "default_stops", "generation_dtype"]


# -- sampling ------------------------------------------------------------------------------------------------


def sample_next(logits: torch.Tensor, temperature: float, top_p: float = 1.0,
                generator: torch.Generator | None = None, top_k: int = 0) -> torch.Tensor:
    """One token id per row of ``logits`` (batch, vocab) → (batch,) int64.

    ``temperature`` 0 is greedy (argmax). Otherwise the distribution is ``softmax(logits / temperature)``, cut to
    the ``top_k`` most likely tokens (0 = no cut; tokens tied with the k-th are kept, as in Hugging Face), then to
    the smallest set of most likely tokens whose mass reaches ``top_p`` (the top token always stays),
    renormalised, and sampled with ``generator``. NaN or +inf logits raise ValueError instead of reaching
    ``torch.multinomial``.
    """
    check_sampling(temperature, top_p, top_k)
    _check_logits(logits)
    if temperature == 0:
        return logits.argmax(dim=-1)
    # subtract the max before dividing: a tiny temperature then gives -inf for the rest, never inf - inf = NaN
    x = logits.float()
    x = (x - x.amax(dim=-1, keepdim=True)) / temperature
    if 0 < top_k < x.shape[-1]:
        kth = x.topk(top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, -math.inf)
    probs = torch.softmax(x, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # drop a token when the mass before it already reaches top_p (the top token always stays)
        drop = (sorted_p.cumsum(dim=-1) - sorted_p) >= top_p
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p.masked_fill(drop, 0.0))
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def check_sampling(temperature: float, top_p: float, top_k: int) -> None:
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature}")
    if not 0 < top_p <= 1:  # NaN fails this too
        raise ValueError(f"top_p must be in (0, 1] (1 = no nucleus cut), got {top_p}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an int >= 0 (0 = no top-k cut), got {top_k!r}")


def _check_logits(logits: torch.Tensor) -> None:
    top = logits.amax(dim=-1)  # NaN anywhere in a row makes its max NaN; +inf makes it inf; all -inf gives -inf
    if not bool(torch.isfinite(top).all()):
        raise ValueError(f"the model produced non-finite logits (NaN or inf) for {int((~torch.isfinite(top)).sum())} "
                         f"of {top.numel()} rows: its weights are diverged or corrupt (check the run's loss), or "
                         "float16 overflowed (train or generate with dtype bfloat16 or float32)")


# -- tokens --------------------------------------------------------------------------------------------------


def _steps(model: torch.nn.Module, prompt_ids: Sequence[int], rows: int, temperature: float, top_p: float,
           top_k: int, generator: torch.Generator | None, window_keep: int | None, vocab_limit: int | None
           ) -> Iterator[torch.Tensor]:
    """Yield the next token of each of ``rows`` samples, (rows,) int64, step after step, without end.

    The caller runs this under ``torch.no_grad()`` (and autocast, if any) and stops when it has enough. Logits
    past ``vocab_limit`` (ids the tokenizer cannot decode) are never sampled.
    """
    ctx = model.context_length
    keep = ctx if window_keep is None else window_keep
    if not 1 <= keep <= ctx:
        raise ValueError(f"window_keep must be in [1, context_length={ctx}], got {keep}")
    if not prompt_ids:
        raise ValueError("the prompt is empty; give at least one token (e.g. a word, or the <|endoftext|> token)")
    device = model.lm_head.weight.device
    window = torch.tensor(list(prompt_ids[-ctx:]), dtype=torch.long, device=device).expand(rows, -1)
    caches = model.new_kv_caches(rows, ctx)
    # Every row starts from the same prompt: prefill it once; the caches broadcast its keys and values to all rows.
    logits = model(window[:1], caches=caches, last_only=True)[:, -1].repeat(rows, 1)
    while True:
        nxt = sample_next(logits[:, :vocab_limit], temperature, top_p, generator, top_k)
        yield nxt
        window = torch.cat([window, nxt[:, None]], dim=1)
        if window.shape[1] <= ctx:
            logits = model(nxt[:, None], caches=caches, last_only=True)[:, -1]
        else:  # the window is full: keep its tail and prefill that again from position 0
            window = window[:, -keep:]
            for cache in caches:
                cache.reset()
            logits = model(window, caches=caches, last_only=True)[:, -1]


@torch.no_grad()
def generate_ids(model: torch.nn.Module, prompt_ids: list[int], max_new_tokens: int, temperature: float = 0.8,
                 top_p: float = 0.95, eos_id: int | None = None, generator: torch.Generator | None = None, *,
                 top_k: int = 0, window_keep: int | None = None) -> list[int]:
    """Continue ``prompt_ids`` by ``max_new_tokens`` tokens, or fewer when ``eos_id`` comes (it is included).

    Past ``context_length`` the window slides (see the module docstring); ``window_keep`` defaults to
    ``context_length``.
    """
    out: list[int] = []
    steps = _steps(model, prompt_ids, 1, temperature, top_p, top_k, generator, window_keep, None)
    while len(out) < max_new_tokens and (eos_id is None or not out or out[-1] != eos_id):
        out.append(int(next(steps)))
    return out


# -- text ----------------------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One generated continuation: ``finish_reason`` is ``stop`` (ended at the string ``stop``) or ``length``."""

    text: str
    new_tokens: int
    finish_reason: str
    stop: str | None = None


def default_stops(tokenizer) -> list[str]:
    """The end-of-text special token's text (``<|endoftext|>``) when the tokenizer has one, else no stops."""
    eot = getattr(tokenizer, "eot_id", None)
    return [] if eot is None else [tokenizer.decode([eot])]


def generate_samples(model: torch.nn.Module, tokenizer, prompt: str, max_new_tokens: int, temperature: float = 0.8,
                     top_p: float = 0.95, *, top_k: int = 0, num_samples: int = 1, stop: Sequence[str] | None = None,
                     seed: int | None = None, window_keep: int | None = None,
                     autocast_dtype: torch.dtype | None = None,
                     on_text: Callable[[int, str], None] | None = None) -> list[Sample]:
    """``num_samples`` continuations of ``prompt``, decoded together as one batch.

    Each sample ends at the first of ``stop`` (default :func:`default_stops`; the stop string is not part of the
    text) or after ``max_new_tokens`` tokens. ``on_text(i, text)`` receives sample i's text as it becomes final,
    for streaming. ``autocast_dtype`` (e.g. bf16 on CUDA) runs the model under autocast, KV caches in that dtype.
    """
    if num_samples < 1 or max_new_tokens < 1:
        raise ValueError(f"need num_samples >= 1 and max_new_tokens >= 1, got {num_samples} and {max_new_tokens}")
    stops = default_stops(tokenizer) if stop is None else list(stop)
    if "" in stops:
        raise ValueError("a stop string is empty; give non-empty text (an empty one would stop at once)")
    device = model.lm_head.weight.device
    generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
    limit = min(model.vocab_size, tokenizer.vocab_size)
    streams = [TextStream(tokenizer, stops) for _ in range(num_samples)]
    emit = on_text or (lambda i, text: None)
    autocast = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    with torch.no_grad(), autocast:
        steps = _steps(model, tokenizer.encode(prompt), num_samples, temperature, top_p, top_k, generator,
                       window_keep, limit)
        for _ in range(max_new_tokens):
            for i, token in enumerate(next(steps).tolist()):
                if not streams[i].stopped:
                    emit(i, streams[i].push(token))
            if all(s.stopped for s in streams):
                break
    for i, s in enumerate(streams):
        emit(i, s.finish())
    return [Sample(s.text, s.tokens, "stop" if s.stopped else "length", s.stop) for s in streams]


def generate_text(model: torch.nn.Module, tokenizer, prompt: str, max_new_tokens: int, temperature: float = 0.8,
                  top_p: float = 0.95, seed: int | None = None, **kwargs) -> str:
    """Prompt text in, one generated continuation out; ``kwargs`` as in :func:`generate_samples`."""
    return generate_samples(model, tokenizer, prompt, max_new_tokens, temperature, top_p, seed=seed,
                            **kwargs)[0].text


def generation_dtype(run_dtype: str, device: str | torch.device) -> torch.dtype | None:
    """The autocast dtype to generate in: the run's ``dtype`` (config key) on CUDA; None (fp32) elsewhere.

    On CUDA ``auto`` means bf16 where supported, as in training. On CPU and MPS decoding stays in fp32, the
    trainer's own default there, whose small matmuls bf16 does not speed up.
    """
    if torch.device(device).type != "cuda" or run_dtype == "float32":
        return None
    if run_dtype == "auto":
        return auto_autocast_dtype(device)[0]  # the trainer's rule, on CUDA
    return getattr(torch, run_dtype)
