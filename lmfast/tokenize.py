"""Command line for the BPE tokenizer: train one on a text file, or encode a text file into a ``.npy`` of ids.

    python -m lmfast.tokenize train --input X.txt --vocab-size 10000 --special-token "<|endoftext|>" --out DIR
    python -m lmfast.tokenize encode --tokenizer DIR|gpt2 --input X.txt --out X.npy [--threads N]

Errors (a missing file, a bad vocab size, a malformed vocab) print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
import time

from lmfast.tokenizer import PATTERNS, Tokenizer, train_bpe

__all__ = ["main"]


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump, same exit code as argparse
        raise _UsageError(f"{message} (see `{self.prog} --help`)")


def _build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m lmfast.tokenize", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    t = sub.add_parser("train", help="train a byte-level BPE and save vocab.json + merges.txt")
    t.add_argument("--input", required=True, help="UTF-8 training text")
    t.add_argument("--vocab-size", type=int, required=True, help="final vocab size, >= 256 + number of specials")
    t.add_argument("--special-token", action="append", default=[], help="a special token; repeat for several")
    t.add_argument("--out", required=True, help="directory to write the tokenizer into")
    t.add_argument("--workers", type=int, default=None, help="pre-tokenization workers (native backend)")
    t.add_argument("--backend", choices=["auto", "native", "python"], default="auto")
    t.add_argument("--pattern", choices=PATTERNS, default="gpt2",
                   help="the pre-tokenizer that splits the text (default gpt2; cl100k, llama3, qwen2, o200k)")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    e = sub.add_parser("encode", help="encode a text file into a .npy of token ids")
    e.add_argument("--tokenizer", required=True, help="a directory written by `train`, or `gpt2`")
    e.add_argument("--input", required=True, help="UTF-8 text to encode")
    e.add_argument("--out", required=True, help="output .npy path")
    e.add_argument("--threads", type=int, default=None, help="encoding threads (default: all cores)")
    e.add_argument("--backend", choices=["auto", "native", "python"], default="auto")
    e.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def _train(args) -> None:
    t0 = time.perf_counter()
    vocab, merges = train_bpe(args.input, args.vocab_size, args.special_token, args.workers, backend=args.backend,
                              progress=not args.no_progress, pattern=args.pattern)
    seconds = time.perf_counter() - t0
    out = Tokenizer(vocab, merges, args.special_token, backend=args.backend, pattern=args.pattern).save(args.out)
    print(f"trained {len(vocab)} tokens ({len(merges)} merges) on {args.input} in {seconds:.2f} s -> {out}")


def _encode(args) -> None:
    if args.tokenizer == "gpt2":
        tok = Tokenizer.gpt2(backend=args.backend)
    else:
        tok = Tokenizer.load(args.tokenizer, backend=args.backend)
    t0 = time.perf_counter()
    out = tok.encode_file(args.input, args.out, num_threads=args.threads, progress=not args.no_progress)
    print(f"encoded {args.input} -> {out} in {time.perf_counter() - t0:.2f} s")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 on a usage or input error)."""
    try:
        args = _build_parser().parse_args(argv)
        (_train if args.command == "train" else _encode)(args)
    except (_UsageError, ValueError, FileNotFoundError, RuntimeError, OSError) as e:
        msg = " ".join(str(e).split())
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return 130  # 128 + SIGINT, as a shell reports it
    return 0


if __name__ == "__main__":
    sys.exit(main())
