"""BPE training on a 1 GiB text file: lmfast's disk-streamed ``train_bpe`` against the fastest trainers on PyPI.

    pytest benchmarks/bench_train_bpe_large.py --benchmark-only

Corpus: 50 copies of the mixed corpus (benchmarks/mixed_corpus.py, ~21.7 MB of prose, Python source, German and
French), ~1.08 GB joined by ``<|endoftext|>`` and cached under ~/.cache/lmfast. Copy k shuffles the documents with
seed k, and in every copy after the first one document in four has its letters replaced through a permutation of
a-z and A-Z of that copy's own: new words in the same shapes, so the 1 GB holds many more distinct pre-tokens than
the 21 MB (as a real 1 GB corpus does) instead of the same words 50 times.

Contenders, each in a subprocess of its own (``--child``), so that the child's peak resident memory (ru_maxrss,
from wait4) is its own and nothing is shared or cached between them; 2 threads for all (``num_workers=2``,
RAYON_NUM_THREADS=2):
  - lmfast ``train_bpe(path, vocab, ["<|endoftext|>"], num_workers=2)``: the file path; it reads the file itself.
  - fast-bpe-rs ``BPE(GPT2_PAT, {EOT: vocab - 1}).train(vocab, docs)`` and rustbpe ``train_from_iterator(docs)``:
    they take documents in memory, so their child first reads the file and splits it on ``<|endoftext|>``. The
    ``train seconds`` column is their training call alone (reading and splitting apart, in ``load seconds``);
    lmfast's includes reading the file. Their peak RSS includes the documents, which their API needs.
bpeasy and HF ``BpeTrainer`` are left out: on the 21 MB corpus they take 3-10x fast-bpe-rs's time
(benchmarks/results/tokenizer_cpu.md), which at 1 GB is hours of the shared 2-core host.

Merge order: each child writes the token bytes its merges made, in order; the table says how many of the first
merges equal lmfast's (CS336 order: the most frequent pair, ties to the greater (bytes, bytes) pair).
One round per contender and vocab size (``ROUNDS``): a round of all three takes tens of minutes here.
Results: benchmarks/results/train_bpe_large_cpu.md.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAYON_NUM_THREADS", "2")  # the Rust peers' thread pools (inherited by the children)

import json
import platform
import random
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))
import _machine as machine  # noqa: E402
import mixed_corpus  # noqa: E402

EOT = "<|endoftext|>"
COPIES = 50
VARIED = 4  # one document in VARIED gets the copy's letter permutation
ROUNDS = 1
VOCAB_SIZES = (10_000, 32_000)
CONTENDERS = ("lmfast", "fast-bpe-rs", "rustbpe")
RESULTS = ROOT / "benchmarks" / "results" / "train_bpe_large_cpu.md"
_rows: list[dict] = []


# ----------------------------------------------------------------------------------------------------------------
# The corpus


def large_corpus() -> Path:
    """The ~1.08 GB file (built once, cached beside the mixed corpus)."""
    path = mixed_corpus.cache_dir() / f"mixed-x{COPIES}-v1.txt"
    if path.exists():
        return path
    docs = mixed_corpus.documents()
    letters = string.ascii_lowercase + string.ascii_uppercase
    fd, tmp = tempfile.mkstemp(dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        for k in range(COPIES):
            rng = random.Random(k)
            order = list(range(len(docs)))
            rng.shuffle(order)
            lower = rng.sample(string.ascii_lowercase, 26)
            table = str.maketrans(letters, "".join(lower) + "".join(lower).upper())
            for n, i in enumerate(order):
                doc = docs[i].translate(table) if k and rng.randrange(VARIED) == 0 else docs[i]
                f.write(doc if k == n == 0 else EOT + doc)
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------------------------------------------
# One contender in a child process


def _documents(path: Path) -> list[str]:
    """The file's documents, read 64 MiB at a time and decoded one by one: never the whole text as one str (a str
    holding one emoji takes 4 bytes a character, ~4.3 GB here), so the peers' peak RSS is their documents' and
    their own."""
    docs, tail, sep = [], b"", EOT.encode()
    with open(path, "rb") as f:
        while block := f.read(64 << 20):
            parts = (tail + block).split(sep)
            tail = parts.pop()
            docs += [p.decode("utf-8") for p in parts]
    return docs + [tail.decode("utf-8")]


def _train_lmfast(path: Path, vocab_size: int) -> list[bytes]:
    from lmfast.tokenizer import train_bpe

    vocab, merges = train_bpe(path, vocab_size, [EOT], num_workers=2)
    return [a + b for a, b in merges]


def _train_fast_bpe_rs(docs: list[str], vocab_size: int) -> list[bytes]:
    import fast_bpe_rs
    from _gpt2 import GPT2_PAT

    bpe = fast_bpe_rs.BPE(GPT2_PAT, {EOT: vocab_size - 1})
    bpe.train(vocab_size, docs)
    return [bytes(bpe.decode([i])) for i in range(256, vocab_size - 1)]


def _train_rustbpe(docs: list[str], vocab_size: int) -> list[bytes]:
    import rustbpe
    from _gpt2 import GPT2_PAT

    tok = rustbpe.Tokenizer()
    tok.train_from_iterator(iter(docs), vocab_size, pattern=GPT2_PAT)
    return [bytes(b) for b, rank in sorted(tok.get_mergeable_ranks(), key=lambda r: r[1]) if rank >= 256]


def child(name: str, vocab_size: int, path: Path, out: Path) -> None:
    """Train one contender; write {load, train seconds} and its merged tokens (hex, in order) to ``out``."""
    start = time.perf_counter()
    docs = None if name == "lmfast" else _documents(path)
    load = time.perf_counter() - start
    docs_mib = sum(sys.getsizeof(d) for d in docs) / 2**20 if docs else 0.0
    start = time.perf_counter()
    if name == "lmfast":
        tokens = _train_lmfast(path, vocab_size)
    elif name == "fast-bpe-rs":
        tokens = _train_fast_bpe_rs(docs, vocab_size)
    else:
        tokens = _train_rustbpe(docs, vocab_size)
    train = time.perf_counter() - start
    out.write_text(json.dumps({"load": load, "train": train, "docs_mib": docs_mib,
                               "tokens": [t.hex() for t in tokens]}))


def run_child(name: str, vocab_size: int, path: Path, tmp: Path) -> dict:
    """Run ``child`` in a fresh interpreter; its numbers plus wall seconds and peak RSS (MiB) from wait4."""
    out = tmp / f"{name}-{vocab_size}.json"
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", name, str(vocab_size), str(path), str(out)],
                            cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} at vocab {vocab_size} exited with {proc.returncode}")
    result = json.loads(out.read_text())
    result.update(name=name, vocab_size=vocab_size, wall=wall, rss_mib=usage.ru_maxrss / 1024)
    return result


# ----------------------------------------------------------------------------------------------------------------
# The benchmark


def _available(name: str) -> bool:
    module = {"lmfast": "lmfast.tokenizer", "fast-bpe-rs": "fast_bpe_rs", "rustbpe": "rustbpe"}[name]
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def _same_prefix(a: list[str], b: list[str]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def measure(vocab_size: int, tmp: Path) -> list[dict]:
    path = large_corpus()
    results = {}
    for r in range(ROUNDS):
        names = [n for n in CONTENDERS if _available(n)]
        for name in names[r % len(names):] + names[:r % len(names)]:
            results.setdefault(name, []).append(run_child(name, vocab_size, path, tmp))
    rows = []
    lmfast_tokens = results["lmfast"][0]["tokens"]
    for runs in results.values():
        best = min(runs, key=lambda x: x["train"])
        best["same_merges"] = _same_prefix(best["tokens"], lmfast_tokens)
        best["merges"] = len(best["tokens"])
        best.pop("tokens")
        rows.append(best)
    return rows


@pytest.fixture(scope="module", autouse=True)
def _summary():
    yield
    if _rows:
        RESULTS.write_text(summary_markdown(_rows))


@pytest.mark.parametrize("vocab_size", VOCAB_SIZES)
def test_train_large(benchmark, vocab_size, tmp_path):
    """Wall seconds and peak RSS of each contender's child; pytest-benchmark times lmfast's child once more."""
    benchmark.group = f"train_bpe on 1 GiB, vocab {vocab_size}"
    rows = measure(vocab_size, tmp_path)
    _rows.extend(rows)
    benchmark.extra_info.update({r["name"]: {"train_s": round(r["train"], 2), "rss_mib": round(r["rss_mib"])}
                                 for r in rows})
    lmfast = next(r for r in rows if r["name"] == "lmfast")
    assert lmfast["merges"] == vocab_size - 257
    benchmark.pedantic(run_child, args=("lmfast", vocab_size, large_corpus(), tmp_path), rounds=1)


def _load() -> str:
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def summary_markdown(rows: list[dict], command: str = "pytest benchmarks/bench_train_bpe_large.py --benchmark-only"
                     ) -> str:
    path = large_corpus()
    versions = "; ".join(f"{p} {machine.version(p)}" for p in ("fast-bpe-rs", "rustbpe"))
    lines = [
        "# BPE training on 1 GiB (CPU)",
        "",
        f"CPU: {machine.cpu_name()}, {os.cpu_count()} logical cores; Python {platform.python_version()}; lmfast "
        f"commit {machine.commit()}; {versions}.",
        f"Corpus: {path} ({path.stat().st_size / 1e6:.1f} MB): {COPIES} copies of the mixed corpus, shuffled per "
        f"copy, one document in {VARIED} of each later copy with its letters permuted "
        "(benchmarks/bench_train_bpe_large.py). Special token `<|endoftext|>`; GPT-2's pre-tokenizer.",
        f"2 threads for every contender (RAYON_NUM_THREADS=2); each in its own child process; {ROUNDS} round. "
        f"Load average (1, 5, 15 min) at the end: {_load()}.",
        "train s: the training call (lmfast: from the file path, reading included; the peers: from documents "
        "already in memory); load s: the peers' reading and splitting of the file (64 MiB at a time, each "
        "document decoded alone); wall s: the whole child, interpreter start and imports included; peak RSS: the "
        "child's ru_maxrss; documents MiB: what the peers' list of documents takes (sys.getsizeof), part of their "
        "peak.",
        f"Command: `{command}`",
        "",
        "| vocab | contender | train s | load s | wall s | peak RSS MiB | documents MiB | merges | "
        "first merges equal to lmfast's |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['vocab_size']} | {r['name']} | {r['train']:.1f} | {r['load']:.1f} | {r['wall']:.1f} | "
                     f"{r['rss_mib']:.0f} | {r['docs_mib']:.0f} | {r['merges']} | {r['same_merges']} |")
    lines += ["", "| speedup (peer train s / lmfast train s) | x |", "|---|---:|"]
    for vocab_size in sorted({r["vocab_size"] for r in rows}):
        mine = next(r for r in rows if r["vocab_size"] == vocab_size and r["name"] == "lmfast")
        for r in rows:
            if r["vocab_size"] == vocab_size and r["name"] != "lmfast":
                lines.append(f"| vocab {vocab_size}: lmfast / {r['name']} | {r['train'] / mine['train']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    """``--child NAME VOCAB PATH OUT`` (one contender), ``--build`` (the corpus only), or no argument: every
    contender at every vocab size, printing the summary and writing the results file."""
    if argv[:1] == ["--child"]:
        child(argv[1], int(argv[2]), Path(argv[3]), Path(argv[4]))
        return
    path = large_corpus()
    print(f"{path}: {path.stat().st_size / 1e6:.1f} MB", flush=True)
    if argv[:1] == ["--build"]:
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for vocab_size in VOCAB_SIZES:
            rows += measure(vocab_size, Path(tmp))
            print(json.dumps(rows[-3:]), flush=True)
    text = summary_markdown(rows, "python benchmarks/bench_train_bpe_large.py")
    RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
