"""Loss and perplexity of a checkpoint on any data the trainer reads.

    python -m lmfast.eval --checkpoint checkpoints/quickstart/final_model.pt --data shakespeare
    python -m lmfast.eval --checkpoint ck/final_model.pt --data "docs/*.jsonl" --batch-size 16 --json

``--data`` takes what ``val_data_path`` takes: a token file, a ``.txt``, ``.jsonl`` / ``.parquet`` documents, a
directory or glob of them, or a corpus name (its validation split). The text is tokenized with the checkpoint's
tokenizer (and cached, as the trainer does). The data is cut into consecutive windows of the model's
``context_length`` (each token predicted once, the last partial window left out), evaluated in batches with the run's
document masking and its ``dtype`` (``auto``: bf16 autocast on CUDA and on CPUs that multiply bf16 natively), and
the mean loss is over every predicted token. Prints ``loss ... ppl ...`` on stdout (``--json``: one object); bad
input is one ``error: ...`` line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time

import numpy as np
import torch

from lmfast.data import TokenMixture, load_data
from lmfast.data.corpus import resolve_corpus
from lmfast.model.functional import document_ids
from lmfast.model.ops import BACKENDS
from lmfast.model.precision import auto_autocast_dtype
from lmfast.train.config import TrainConfig
from lmfast.train.run_setup import SetupError, resolve_eot
from lmfast.train.run_state import load_model

__all__ = ["main", "evaluate_windows"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2, no usage dump
        raise SetupError(f"{message} (see `{self.prog} --help`)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m lmfast.eval", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a .pt file written by python -m lmfast.train")
    p.add_argument("--data", required=True, help="token file, .txt, .jsonl/.parquet documents, a directory or glob "
                                                 "of them, or a corpus name (its validation split)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")
    p.add_argument("--max-windows", type=int, help="evaluate at most this many windows (default: all)")
    p.add_argument("--text-field", help="the .jsonl field / .parquet column of the text (default: the run's)")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    p.add_argument("--backend", default="auto", choices=BACKENDS, help="ops backend, as in training")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"),
                   help="autocast dtype (default: the run's dtype)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a line")
    return p


def _windows(data, context_length: int, limit: int | None):
    """Consecutive (context_length + 1)-token windows of each source, overlapping by one token."""
    arrays = data.arrays if isinstance(data, TokenMixture) else [data]
    count = 0
    for array in arrays:
        for start in range(0, len(array) - context_length, context_length):
            if limit is not None and count >= limit:
                return
            count += 1
            yield np.asarray(array[start:start + context_length + 1], dtype=np.int64)


@torch.no_grad()
def evaluate_windows(model, data, batch_size: int, eot_id: int | None = None, autocast_dtype=None,
                     max_windows: int | None = None) -> tuple[float, int]:
    """(mean loss over every predicted token, tokens predicted) of ``model`` on ``data``'s consecutive windows.

    ``eot_id`` given: document masking, as a run with ``document_masking: true`` trains.
    """
    device = model.lm_head.weight.device
    ctx = model.context_length
    total, tokens, batch = 0.0, 0, []
    autocast = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    for window in [*_windows(data, ctx, max_windows), None]:
        if window is not None:
            batch.append(window)
        if batch and (window is None or len(batch) == batch_size):
            both = torch.from_numpy(np.stack(batch)).to(device)
            x, y = both[:, :-1], both[:, 1:]
            with autocast:
                loss = model(x, targets=y, doc_ids=document_ids(x, eot_id) if eot_id is not None else None)
            total += float(loss) * y.numel()
            tokens += y.numel()
            batch = []
    if tokens == 0:
        raise ValueError(f"the data holds fewer than context_length + 1 = {ctx + 1} tokens; nothing to evaluate")
    return total / tokens, tokens


def _load(args):
    model, tokenizer, state = load_model(args.checkpoint, args.device, args.backend)
    cfg = TrainConfig(**state["config"])
    tokenizer_for_data = None if type(tokenizer).__name__ == "ByteTokenizer" else tokenizer
    eot = resolve_eot(cfg, tokenizer_for_data)
    corpus = resolve_corpus(args.data)
    spec = corpus[1] if corpus else args.data
    data = load_data(spec, key="--data", tokenizer=tokenizer_for_data, vocab_size=cfg.vocab_size,
                     cache_dir=cfg.cache_dir, context_length=model.context_length,
                     text_field=args.text_field or cfg.text_field, eot_id=eot)
    return model, cfg, data, eot if cfg.document_masking else None


def _autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """The trainer's rule: ``auto`` is bf16 on CUDA and on CPUs that multiply bf16 natively, else fp32 (None)."""
    if name == "auto":
        return auto_autocast_dtype(device)[0]
    if name == "float16" and device.type == "cpu":
        raise SetupError("dtype float16 autocast is not supported on CPU; use --dtype bfloat16 or float32")
    return None if name == "float32" else getattr(torch, name)


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        if args.batch_size < 1 or (args.max_windows is not None and args.max_windows < 1):
            raise SetupError("--batch-size and --max-windows must be >= 1")
        model, cfg, data, eot = _load(args)
        device = model.lm_head.weight.device
        dtype = _autocast_dtype(args.dtype or cfg.dtype, device)
        start = time.perf_counter()
        loss, tokens = evaluate_windows(model, data, args.batch_size, eot, dtype, args.max_windows)
    except (SetupError, ValueError, OSError, ImportError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    ppl = math.exp(min(loss, 700.0))
    result = {"checkpoint": args.checkpoint, "data": args.data, "loss": loss, "ppl": ppl, "tokens": tokens,
              "context_length": model.context_length, "document_masking": eot is not None,
              "device": str(device), "dtype": str(dtype or torch.float32).removeprefix("torch."),
              "seconds": time.perf_counter() - start}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"loss {loss:.4f} ppl {ppl:.2f} over {tokens:,} tokens (windows of {model.context_length}"
              f"{', document masking' if eot is not None else ''}; {result['device']}, {result['dtype']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
