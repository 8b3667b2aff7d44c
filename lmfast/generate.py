"""Sample text from a trained model: temperature, top-k and top-p sampling, with a KV cache that slides.

    python -m lmfast.generate --checkpoint checkpoints/quickstart/final_model.pt --prompt "ROMEO:" \\
        --max-new-tokens 200 --temperature 0.8 --top-p 0.95

The window. Every token is predicted from at most ``context_length`` tokens. The window starts as the last
``context_length`` tokens of the prompt; when the next token would overflow it, the window keeps its last
``window_keep`` tokens (``context_length`` by default), prefills them again into an emptied cache, and decoding
goes on. So generation never stops at the context limit, and with the default every token past it sees a full
window, exactly as a model fed its last ``context_length`` tokens without a cache would (``tests/test_generate.py``
holds the two equal, token for token). A smaller ``window_keep`` re-prefills once every
``context_length - window_keep + 1`` tokens instead of at every token, with less context.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lmfast._text_stream import TextStream
from lmfast.checkpoint import load_model_state, read_checkpoint
from lmfast.config import ConfigError, TrainConfig
from lmfast.model import TransformerLM
from lmfast.ops import BACKENDS
from lmfast.precision import auto_autocast_dtype

__all__ = ["sample_next", "generate_ids", "generate_samples", "generate_text", "Sample", "default_stops",
           "load_model", "generation_dtype", "main"]

EOT = "<|endoftext|>"


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
    _check_sampling(temperature, top_p, top_k)
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


def _check_sampling(temperature: float, top_p: float, top_k: int) -> None:
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


def _steps(model: TransformerLM, prompt_ids: Sequence[int], rows: int, temperature: float, top_p: float,
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
def generate_ids(model: TransformerLM, prompt_ids: list[int], max_new_tokens: int, temperature: float = 0.8,
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
    """``[<|endoftext|>]`` when the tokenizer has that special token, else none."""
    return [EOT] if getattr(tokenizer, "eot_id", None) is not None else []


def generate_samples(model: TransformerLM, tokenizer, prompt: str, max_new_tokens: int, temperature: float = 0.8,
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


def generate_text(model: TransformerLM, tokenizer, prompt: str, max_new_tokens: int, temperature: float = 0.8,
                  top_p: float = 0.95, seed: int | None = None, **kwargs) -> str:
    """Prompt text in, one generated continuation out; ``kwargs`` as in :func:`generate_samples`."""
    return generate_samples(model, tokenizer, prompt, max_new_tokens, temperature, top_p, seed=seed,
                            **kwargs)[0].text


# -- loading -------------------------------------------------------------------------------------------------


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu", backend: str = "auto"
               ) -> tuple[TransformerLM, object, dict]:
    """Rebuild the model of a training checkpoint (its saved config) with its tokenizer; returns (model, tok, state).

    ``device`` takes ``auto`` (cuda, then mps, then cpu); ``backend`` as in training (``auto`` = the fused
    Triton ops on CUDA). A device or backend this machine lacks raises :class:`~lmfast._run_setup.SetupError`.
    """
    from lmfast._run_setup import SetupError, load_run_tokenizer, resolve_device  # the trainer owns these rules
    from lmfast.ops import resolve_backend

    try:
        device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    except RuntimeError as e:  # torch's "Invalid device string"
        raise SetupError(f"--device {device}: {e}; use auto, cpu, cuda, cuda:N or mps") from None
    try:
        backend = resolve_backend(backend, device)
    except RuntimeError as e:  # backend 'fused' where it cannot run
        raise SetupError(str(e)) from None
    state = read_checkpoint(checkpoint, map_location=device)
    if not isinstance(state.get("config"), dict):
        raise ValueError(f"{checkpoint} holds no training config; it was not written by lmfast.train")
    try:
        cfg = TrainConfig(**state["config"])
    except (ConfigError, TypeError) as e:
        raise ValueError(f"{checkpoint} holds a config this lmfast cannot read: {e}") from None
    model = TransformerLM(cfg.vocab_size, cfg.context_length, cfg.d_model, cfg.num_layers, cfg.num_heads, cfg.d_ff,
                          cfg.rope_theta, backend=backend, device=device)
    load_model_state(model, state["model"], checkpoint)
    model.eval()
    tokenizer = load_run_tokenizer(state.get("meta", {}).get("tokenizer"), Path(checkpoint).parent)
    return model, tokenizer, state


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


# -- command line --------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lmfast.generate", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a .pt file written by python -m lmfast.train")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate per sample")
    p.add_argument("--temperature", type=float, default=0.8, help="softmax temperature >= 0; 0 = greedy")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus mass in (0, 1]; 1 = no cut")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens; 0 = no cut")
    p.add_argument("--num-samples", type=int, default=1, help="independent samples, decoded as one batch")
    p.add_argument("--stop", action="append", metavar="TEXT",
                   help=f"end a sample at this text (repeatable); default {EOT} when the tokenizer has it")
    p.add_argument("--no-stop", action="store_true", help="no stop strings, not even the default")
    p.add_argument("--window-keep", type=int, metavar="N",
                   help="tokens kept when the window slides past context_length (default: context_length)")
    p.add_argument("--seed", type=int, help="sampling seed in [0, 2**64); default: a random one, printed")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    p.add_argument("--backend", default="auto", choices=BACKENDS, help="ops: auto (fused Triton on CUDA), "
                   "reference or fused")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout when done, no streaming")
    return p


def _check_args(args: argparse.Namespace) -> None:
    """ValueError naming the first bad argument and its allowed values."""
    _check_sampling(args.temperature, args.top_p, args.top_k)
    for flag, value in (("--max-new-tokens", args.max_new_tokens), ("--num-samples", args.num_samples),
                        ("--window-keep", args.window_keep)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if args.seed is not None and not 0 <= args.seed < 2**64:
        raise ValueError(f"--seed must be in [0, 2**64), got {args.seed}")
    if args.stop and args.no_stop:
        raise ValueError("--stop and --no-stop contradict each other; give one of them")
    if args.stop and "" in args.stop:
        raise ValueError("--stop '' is empty; give the text a sample should end at, or --no-stop for none")
    _check_prompt(args.prompt)
    path = Path(args.checkpoint)
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.pt"))
        name = "final_model.pt" if "final_model.pt" in found or not found else found[0]
        hint = f"e.g. --checkpoint {path / name}" if found else "it holds no .pt file"
        raise ValueError(f"--checkpoint {path} is a directory; pass a checkpoint file in it ({hint})")


def _check_prompt(prompt: str) -> None:
    if not prompt:
        raise ValueError("--prompt is empty; give some text to continue (the default is a newline)")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as e:
        code = ord(prompt[e.start])
        # Python hands a command-line byte that is not UTF-8 over as a surrogate U+DC80..U+DCFF (PEP 383)
        what = f"the byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"a lone surrogate U+{code:04X}"
        raise ValueError(f"--prompt holds {what} at character {e.start}, which is not UTF-8 text; "
                         "pass the prompt as UTF-8") from None


def _summary(samples: list[Sample], seconds: float, device: torch.device, model: TransformerLM,
             dtype: torch.dtype | None, seed: int) -> str:
    total = sum(s.new_tokens for s in samples)
    line = (f"{total} new tokens in {seconds:.2f} s ({total / max(seconds, 1e-9):.1f} tokens/s) on {device}, "
            f"{model.ops.name} ops, {_dtype_name(dtype)}, seed {seed}")
    stopped = [f"sample {i + 1} ended at {s.stop!r} after {s.new_tokens} tokens"
               for i, s in enumerate(samples) if s.finish_reason == "stop"]
    return "; ".join([line, *stopped])


def _dtype_name(dtype: torch.dtype | None) -> str:
    return str(dtype or torch.float32).removeprefix("torch.")


def main(argv: list[str] | None = None) -> int:
    from lmfast._run_setup import SetupError

    args = _parser().parse_args(argv)
    try:
        _check_args(args)
        model, tokenizer, state = load_model(args.checkpoint, args.device, args.backend)
        if args.window_keep is not None and args.window_keep > model.context_length:
            raise ValueError(f"--window-keep must be at most the model's context_length={model.context_length}, "
                             f"got {args.window_keep}")
    except (SetupError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        return _generate_and_print(args, model, tokenizer, state)
    except BrokenPipeError:
        # The reader closed the pipe (`generate ... | head`): it has what it wanted, so stop generating and exit 0.
        # Point stdout at /dev/null so that Python's flush at exit does not raise the same error again.
        _silence_stdout()
        return 0


def _silence_stdout() -> None:
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a real file (replaced in-process): nothing will flush to the pipe
        pass


def _generate_and_print(args: argparse.Namespace, model: TransformerLM, tokenizer, state: dict) -> int:
    device = model.lm_head.weight.device
    dtype = generation_dtype(state["config"].get("dtype", "auto"), device)
    seed = args.seed if args.seed is not None else secrets.randbits(63)  # printed below, so a run can be repeated
    stream = args.num_samples == 1 and not args.json
    if stream:
        sys.stdout.write(args.prompt)
    start = time.perf_counter()
    try:
        samples = generate_samples(
            model, tokenizer, args.prompt, args.max_new_tokens, args.temperature, args.top_p, top_k=args.top_k,
            num_samples=args.num_samples, stop=[] if args.no_stop else args.stop, seed=seed,
            window_keep=args.window_keep, autocast_dtype=dtype, on_text=_write if stream else None)
    except ValueError as e:  # non-finite logits: a diverged or corrupt checkpoint
        print(f"\nerror: {e}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    if args.json:
        print(json.dumps({"prompt": args.prompt, "samples": [asdict(s) for s in samples],
                          "checkpoint": args.checkpoint, "device": str(device), "backend": model.ops.name,
                          "dtype": _dtype_name(dtype), "seed": seed, "seconds": round(seconds, 4)}))
    elif stream:
        print()
    else:
        print(("\n" + "-" * 40 + "\n").join(args.prompt + s.text for s in samples))
    print(_summary(samples, seconds, device, model, dtype, seed), file=sys.stderr)
    return 0


def _write(_: int, text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
