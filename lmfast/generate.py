"""Sample text from a trained model: temperature, top-k and top-p sampling, with a KV cache that slides.

    python -m lmfast.generate --checkpoint checkpoints/quickstart/final_model.pt --prompt "ROMEO:" \\
        --max-new-tokens 200 --temperature 0.8 --top-p 0.95

Sampling and the sliding window are :mod:`lmfast.model.generation`'s; this module reads the arguments, rebuilds the
model of a training checkpoint (:func:`lmfast.train.run_state.load_model`) and prints.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from lmfast import command_name
from lmfast.model import TransformerLM
from lmfast.model.generation import (
    Sample,
    check_sampling,
    default_stops,
    generate_ids,
    generate_samples,
    generate_text,
    generation_dtype,
    sample_next,
)
from lmfast.model.ops import BACKENDS
from lmfast.tokenizer import EOT
from lmfast.train.run_setup import SetupError
from lmfast.train.run_state import load_model
from lmfast.train.sharded import is_sharded_checkpoint

__all__ = ["main", "sample_next", "generate_ids", "generate_samples", "generate_text", "Sample", "default_stops",
           "load_model", "generation_dtype"]


# -- command line --------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=command_name("generate"), description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a .pt file or .dcp directory written by python -m lmfast.train")
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
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="ops: auto (on CUDA, per op as the fused table says), reference or fused")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout when done, no streaming")
    return p


def _check_args(args: argparse.Namespace) -> None:
    """ValueError naming the first bad argument and its allowed values."""
    check_sampling(args.temperature, args.top_p, args.top_k)
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
    if path.is_dir() and not is_sharded_checkpoint(path):
        found = sorted(p.name for p in path.iterdir() if p.suffix == ".pt" or is_sharded_checkpoint(p))
        name = "final_model.pt" if "final_model.pt" in found or not found else found[-1]
        hint = f"e.g. --checkpoint {path / name}" if found else "it holds no checkpoint"
        raise ValueError(f"--checkpoint {path} is a directory, not a checkpoint; pass a .pt file or .dcp directory "
                         f"in it ({hint})")


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


def _check_memory(model: TransformerLM, rows: int) -> None:
    """Refuse ``--num-samples`` whose KV caches and prefill cannot fit, with the numbers, before anything is
    allocated (a huge count would otherwise run until the kernel kills it)."""
    from lmfast.train.memory import available_memory, format_bytes

    device = model.lm_head.weight.device
    d_model, d_ff = model.layers[0].attn.d_model, model.layers[0].ffn.w1.out_features
    ctx, vocab = model.context_length, model.vocab_size
    per_row = 4 * (2 * len(model.layers) * ctx * d_model + ctx * (6 * d_model + 3 * d_ff) + 3 * vocab)
    have = available_memory(device)
    if have is not None and rows * per_row > have:
        raise ValueError(f"--num-samples {rows} needs about {format_bytes(rows * per_row)} for the KV caches and the "
                         f"prefill of {rows} rows of {ctx} tokens, but {device} has {format_bytes(have)} free; lower "
                         f"--num-samples (about {max(1, have // per_row):,} fit)")


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("\nstopped by Ctrl-C", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    try:
        _check_args(args)
        model, tokenizer, state = load_model(args.checkpoint, args.device, args.backend)
        if args.window_keep is not None and args.window_keep > model.context_length:
            raise ValueError(f"--window-keep must be at most the model's context_length={model.context_length}, "
                             f"got {args.window_keep}")
        _check_memory(model, args.num_samples)
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
