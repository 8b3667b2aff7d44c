"""Tokenizer throughput: lmfast's C++ engine against the fastest tokenizers and BPE trainers on PyPI.

    pytest benchmarks/bench_tokenizer.py --benchmark-only

Corpus: the mixed corpus of benchmarks/mixed_corpus.py (~21 MB, ~36,000 documents: the King James Bible, fortunes,
the Jargon File, CPython's standard library source, German and French manual pages, from Debian packages and this
interpreter), GPT-2's own ranks for every encoder. Before any time is reported, every contender's ids are checked
against tiktoken's (``ids identical to tiktoken`` in the table); a contender that differs is reported, not hidden.

Groups (each labelled by its output):
  - encode -> lists, 1 thread: documents -> one Python list of ids per document (lmfast ``encode_batch``, tiktoken
    and riptoken ``encode_ordinary_batch``, gigatoken ``encode_batch_list``, tokie ``encode_batch``).
  - encode -> array, 1 thread: the whole text (with ``<|endoftext|>`` between documents) -> one id array (lmfast
    ``encode_to_numpy``, gigatoken ``encode``, tokie ``encode_batch_flat`` of the one text).
  - encode -> array, 2 threads: the documents -> one flat id array (lmfast ``encode_to_numpy``, gigatoken
    ``encode_batch`` flattened, tokie ``encode_batch_flat``).
  - text file -> token file: read, encode and write a .npy (lmfast ``encode_file``; gigatoken: read, ``encode``,
    ``np.save``), 1 and 2 threads.
  - train vocab 10,000 and 32,000 on the corpus file: lmfast ``train_bpe`` vs fast-bpe-rs, rustbpe, bpeasy and HF
    ``BpeTrainer`` (each given the documents the way its API takes them).

Rounds are interleaved: each group runs round 1 of every contender, then round 2 of every contender, ... (5 rounds
for encoding, or ``LMFAST_BENCH_ROUNDS``; 2 for training), so a slow minute on a shared machine hits all of them;
the headline ratio of two contenders is the median of their per-round ratios. 1-thread groups time CPU seconds of
the process (``time.process_time``; a contender that started threads anyway would show it), 2-thread groups wall
seconds. ``cold``: a fresh tokenizer before each round (built untimed), so no per-tokenizer cache holds the text;
``warm``: one tokenizer for all rounds, after a warm-up round. The headline ratios are the cold ones.
pytest-benchmark then times one more round of each contender on its own (its usual table). Results:
benchmarks/results/tokenizer_cpu.md. A contender that is not installed is skipped.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAYON_NUM_THREADS", "2")  # the Rust peers' thread pools; read once, at their first use
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

import functools
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import _machine as machine
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
import mixed_corpus  # noqa: E402
from _gpt2 import EOT_ID, GPT2_PAT, _byte_decoder, gpt2_vocab_merges  # noqa: E402

_bpe = pytest.importorskip("lmfast.tokenizer._bpe", reason="the C++ extension is not built: pip install -e .")

EOT = "<|endoftext|>"
ROUNDS = int(os.environ.get("LMFAST_BENCH_ROUNDS", 5))  # more on a noisy host: LMFAST_BENCH_ROUNDS=15
TRAIN_ROUNDS = 2
RESULTS = ROOT / "benchmarks" / "results" / "tokenizer_cpu.md"
_rows: dict[str, dict] = {}
_ratios: list[tuple[str, float]] = []


# ----------------------------------------------------------------------------------------------------------------
# The corpus and the contenders


@functools.cache
def corpus() -> tuple[Path, str, list[str]]:
    path = mixed_corpus.build()
    text = path.read_text(encoding="utf-8")
    return path, text, text.split(EOT)


@functools.cache
def _hf_json() -> str:
    """GPT-2 as a tokenizer.json (BPE + ByteLevel, <|endoftext|> added), for the peers that load one."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import AddedToken, models, pre_tokenizers

    to_unicode = {b: ch for ch, b in _byte_decoder().items()}
    as_str = lambda b: "".join(to_unicode[x] for x in b)
    vocab, merges = gpt2_vocab_merges()
    tok = tokenizers.Tokenizer(models.BPE({as_str(b): i for i, b in vocab.items() if i != EOT_ID},
                                          [(as_str(a), as_str(b)) for a, b in merges]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.add_special_tokens([AddedToken(EOT, special=True, normalized=False)])
    return tok.to_str()


def _ranks() -> dict[bytes, int]:
    vocab, _ = gpt2_vocab_merges()
    return {b: i for i, b in vocab.items() if i != EOT_ID}


def new_lmfast():
    vocab, merges = gpt2_vocab_merges()
    return _bpe.Engine(vocab, merges, {EOT: EOT_ID})


def new_tiktoken():
    tiktoken = pytest.importorskip("tiktoken")
    return tiktoken.Encoding(name="gpt2-local", pat_str=GPT2_PAT, mergeable_ranks=_ranks(),
                             special_tokens={EOT: EOT_ID})


def new_riptoken():
    riptoken = pytest.importorskip("riptoken")
    return riptoken.CoreBPE(_ranks(), {EOT: EOT_ID}, GPT2_PAT)


def new_gigatoken():
    gigatoken = pytest.importorskip("gigatoken")
    return gigatoken.Tokenizer.from_json(_hf_json())


def new_tokie():
    tokie = pytest.importorskip("tokie")
    path = Path(tempfile.gettempdir()) / "lmfast-bench-gpt2-tokenizer.json"
    path.write_text(_hf_json(), encoding="utf-8")
    return tokie.Tokenizer.from_json(str(path))


NEW = {"lmfast": new_lmfast, "tiktoken": new_tiktoken, "riptoken": new_riptoken, "gigatoken": new_gigatoken,
       "tokie": new_tokie}


def _flat(lists) -> np.ndarray:
    return np.fromiter((i for ids in lists for i in ids), dtype=np.int64)


def _gigatoken_batch(t, docs, parallel: bool) -> np.ndarray:
    import awkward as ak

    return np.asarray(ak.flatten(t.encode_batch(docs, parallel=parallel)))


# What one timed call is, per group and contender: f(tokenizer, docs, text) -> ids (list of lists, or array).
LISTS = {
    "lmfast": lambda t, docs, text: t.encode_batch(docs, set(), 1),
    "tiktoken": lambda t, docs, text: t.encode_ordinary_batch(docs, num_threads=1),
    "riptoken": lambda t, docs, text: [t.encode_ordinary(d) for d in docs],
    "gigatoken": lambda t, docs, text: t.encode_batch_list(docs, parallel=False),
    "tokie": lambda t, docs, text: [e.ids for e in t.encode_batch(docs, add_special_tokens=False)],
}
ARRAY_1 = {
    "lmfast": lambda t, docs, text: t.encode_to_numpy(text, {EOT}, -1, 1, 2),
    "gigatoken": lambda t, docs, text: t.encode(text),
    "tiktoken": lambda t, docs, text: np.asarray(t.encode(text, allowed_special="all"), dtype=np.uint32),
}
ARRAY_2 = {
    "lmfast": lambda t, docs, text: t.encode_to_numpy(docs, set(), -1, 2, 2),
    "gigatoken": lambda t, docs, text: _gigatoken_batch(t, docs, True),
    "tokie": lambda t, docs, text: t.encode_batch_flat(docs, add_special_tokens=False)[0],
}


@functools.cache
def reference_ids(kind: str):
    """tiktoken's ids: per document (lists), or of the whole text with <|endoftext|> (array)."""
    enc = new_tiktoken()
    _, text, docs = corpus()
    if kind == "lists":
        return enc.encode_ordinary_batch(docs, num_threads=2)
    if kind == "docs":
        return np.asarray([i for ids in enc.encode_ordinary_batch(docs, num_threads=2) for i in ids], np.int64)
    return np.asarray(enc.encode(text, allowed_special="all"), dtype=np.int64)


def _same(got, kind: str) -> bool:
    want = reference_ids(kind)
    if kind == "lists":
        return len(got) == len(want) and all(list(a) == b for a, b in zip(got, want, strict=True))
    got = np.asarray(got, dtype=np.int64)
    return got.shape == want.shape and bool((got == want).all())


def _wrong_documents(got) -> int:
    return sum(list(a) != b for a, b in zip(got, reference_ids("lists"), strict=True))


# ----------------------------------------------------------------------------------------------------------------
# Interleaved rounds


def interleave(calls: dict, rounds: int, clock, cold: bool) -> dict[str, list[float]]:
    """``calls``: name -> (new, run(tok)). Round r runs every contender once (order rotated each round); returns
    name -> seconds per round. cold: a fresh tokenizer before each call (untimed); warm: one, after a warm-up."""
    toks = {} if cold else {name: new() for name, (new, _) in calls.items()}
    if not cold:
        for name, (_, run) in calls.items():
            run(toks[name])
    times: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            new, run = calls[name]
            tok = new() if cold else toks[name]
            start = clock()
            run(tok)
            times[name].append(clock() - start)
    return times


def _record(group: str, times: dict[str, list[float]], megabytes: float, ids: dict[str, bool]):
    for name, secs in times.items():
        median = statistics.median(secs)
        _rows[f"{group}[{name}]"] = {"seconds": median, "mb_per_s": megabytes / median, "ids": ids.get(name)}
    if "lmfast" in times:
        for name, secs in times.items():
            if name != "lmfast":
                ratio = statistics.median(o / m for m, o in zip(times["lmfast"], secs, strict=True))
                _ratios.append((f"{group}: lmfast / {name}", ratio))


def _run_group(benchmark, group, calls: dict, kind: str, clock, cold: bool, rounds: int = ROUNDS):
    """Check ids, interleave, record; then one pytest-benchmark round of lmfast for its own table."""
    path, text, docs = corpus()
    available = {}
    for name, run in calls.items():
        try:
            tok = NEW[name]()
        except pytest.skip.Exception:
            continue
        available[name] = (NEW[name], lambda t, run=run: run(t, docs, text))
        out = run(tok, docs, text)
        ids_ok = _same(out, kind)
        if not ids_ok:
            ids_ok = f"NO ({_wrong_documents(out)} of {len(docs)} documents differ)" if kind == "lists" else "NO"
        available[name] += (ids_ok,)
    ids = {name: v[2] for name, v in available.items()}
    times = interleave({n: v[:2] for n, v in available.items()}, rounds, clock, cold)
    _record(group, times, len(text.encode("utf-8")) / 1e6, ids)
    benchmark.extra_info["MB/s"] = {n: round(len(text.encode()) / 1e6 / statistics.median(t), 1)
                                    for n, t in times.items()}
    new, run = available["lmfast"][:2]
    benchmark.pedantic(run, setup=lambda: ((new(),), {}), rounds=1, warmup_rounds=0)


@pytest.fixture(scope="module", autouse=True)
def _summary():
    yield
    if _rows:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(_summary_markdown())


def _load() -> str:
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def _summary_markdown() -> str:
    path, text, docs = corpus()
    versions = "; ".join(f"{p} {machine.version(p)}" for p in ("tiktoken", "gigatoken", "riptoken", "tokie",
                                                               "tokenizers", "fast-bpe-rs", "rustbpe", "bpeasy"))
    lines = [
        "# Tokenizer benchmark (CPU)",
        "",
        f"CPU: {machine.cpu_name()}, {os.cpu_count()} logical cores; Python {platform.python_version()}; lmfast "
        f"commit {machine.commit()}; {versions}.",
        f"Corpus: {mixed_corpus.describe(path)}: benchmarks/mixed_corpus.py; vocab: GPT-2's own ranks for every "
        f"encoder; ids checked against tiktoken's before timing. Load average (1, 5, 15 min) at the end: {_load()}.",
        f"Rounds interleaved ({ROUNDS} for encoding, {TRAIN_ROUNDS} for training), medians; ratios are medians of "
        "per-round ratios. 1-thread groups: CPU seconds of the process; 2-thread groups: wall seconds.",
        "cold: a fresh tokenizer for each round (built outside the timing); warm: one tokenizer for every round, "
        "after a warm-up round. The headline ratios are the cold ones.",
        "Command: `" + ("" if ROUNDS == 5 else f"LMFAST_BENCH_ROUNDS={ROUNDS} ")
        + "pytest benchmarks/bench_tokenizer.py --benchmark-only`",
        "",
        "| benchmark | seconds | MB/s | ids identical to tiktoken |",
        "|---|---:|---:|---|",
    ]
    for name, r in _rows.items():
        ids = "" if r["ids"] is None else ("yes" if r["ids"] is True else str(r["ids"]))
        lines.append(f"| {name} | {r['seconds']:.3f} | {r['mb_per_s']:.1f} | {ids} |")
    lines += ["", "| speedup (median of per-round ratios) | x |", "|---|---:|"]
    lines += [f"| {label} | {ratio:.2f} |" for label, ratio in _ratios]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# Encoding


@pytest.mark.parametrize("cache", ["cold", "warm"])
def test_encode_to_lists_1thread(benchmark, cache):
    benchmark.group = f"encode -> lists, 1 thread, {cache}"
    _run_group(benchmark, f"lists_1thread_{cache}", LISTS, "lists", time.process_time, cache == "cold")


@pytest.mark.parametrize("cache", ["cold", "warm"])
def test_encode_to_array_1thread(benchmark, cache):
    benchmark.group = f"encode -> array, 1 thread, {cache}"
    _run_group(benchmark, f"array_1thread_{cache}", ARRAY_1, "text", time.process_time, cache == "cold")


@pytest.mark.parametrize("cache", ["cold", "warm"])
def test_encode_to_array_2threads(benchmark, cache):
    benchmark.group = f"encode -> array, 2 threads, {cache}"
    _run_group(benchmark, f"array_2threads_{cache}", ARRAY_2, "docs", time.perf_counter, cache == "cold")


@pytest.mark.parametrize("threads", [1, 2])
def test_text_file_to_token_file(benchmark, threads, tmp_path):
    """Read + encode + write a .npy, cold, in this process. gigatoken has no file-to-file call: it reads the text,
    encodes it (``encode`` on 1 thread; on 2, ``encode_batch`` of the documents, with the separators put back)."""
    from lmfast.tokenizer import Tokenizer

    benchmark.group = f"text file -> token file, {threads} thread(s), cold"
    path, text, docs = corpus()
    vocab, merges = gpt2_vocab_merges()

    def lmfast_run(tok):
        tok.encode_file(path, tmp_path / "lmfast.npy", num_threads=threads, progress=False)

    def gigatoken_run(tok):
        t = path.read_text(encoding="utf-8")
        if threads == 1:
            ids = tok.encode(t)
        else:
            import awkward as ak

            parts = tok.encode_batch(t.split(EOT), parallel=True)
            ids = np.asarray(ak.flatten(ak.concatenate([parts, ak.Array([[EOT_ID]] * len(parts))], axis=1)))[:-1]
        np.save(tmp_path / "gigatoken.npy", ids)

    calls = {"lmfast": (lambda: Tokenizer(vocab, merges, [EOT]), lmfast_run)}
    try:
        new_gigatoken()
        calls["gigatoken"] = (new_gigatoken, gigatoken_run)
    except pytest.skip.Exception:
        pass
    ids = {}
    for name, (new, run) in calls.items():
        run(new())
        ids[name] = _same(np.load(tmp_path / f"{name}.npy"), "text")
    clock = time.process_time if threads == 1 else time.perf_counter
    times = interleave(calls, ROUNDS, clock, cold=True)
    _record(f"file_{threads}thread{'s' if threads > 1 else ''}", times, path.stat().st_size / 1e6, ids)
    benchmark.pedantic(lmfast_run, setup=lambda: ((calls["lmfast"][0](),), {}), rounds=1)


# ----------------------------------------------------------------------------------------------------------------
# Training


def _train_calls(vocab_size: int) -> dict:
    path, text, docs = corpus()
    calls = {"lmfast": lambda: _bpe.train_bpe(str(path), vocab_size, [EOT], 2)}
    try:
        import fast_bpe_rs

        def fast_bpe():
            b = fast_bpe_rs.BPE(GPT2_PAT, {EOT: vocab_size - 1})
            b.train(vocab_size, docs)

        calls["fast-bpe-rs"] = fast_bpe
    except ImportError:
        pass
    try:
        import rustbpe

        calls["rustbpe"] = lambda: rustbpe.Tokenizer().train_from_iterator(iter(docs), vocab_size, pattern=GPT2_PAT)
    except ImportError:
        pass
    try:
        import bpeasy

        calls["bpeasy"] = lambda: bpeasy.train_bpe(iter(docs), GPT2_PAT, 128, vocab_size)
    except ImportError:
        pass
    try:
        import tokenizers
        from tokenizers import models, pre_tokenizers, trainers

        def hf():
            tok = tokenizers.Tokenizer(models.BPE())
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
            trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
            tok.train([str(path)], trainer)

        calls["hf"] = hf
    except ImportError:
        pass
    return calls


@pytest.mark.parametrize("vocab_size", [10_000, 32_000])
def test_train(benchmark, vocab_size):
    """Wall seconds with 2 threads for everyone (their default pools, RAYON_NUM_THREADS=2)."""
    benchmark.group = f"train_bpe vocab {vocab_size}"
    path, _, _ = corpus()
    calls = _train_calls(vocab_size)
    times = interleave({n: ((lambda: None), (lambda _, f=f: f())) for n, f in calls.items()}, TRAIN_ROUNDS,
                       time.perf_counter, cold=True)
    _record(f"train_{vocab_size // 1000}k", times, path.stat().st_size / 1e6, {})
    benchmark.pedantic(calls["lmfast"], rounds=1)
