"""The C++ BPE core (lmfast.tokenizer._bpe) against independent oracles: `regex` for the pre-tokenizer and its character
classes, tiktoken built in memory from GPT-2's own vocabulary, and the pure-Python reference
(lmfast.tokenizer.reference) for encoding with trained vocabularies and for training itself."""

import concurrent.futures
import os
import random
import signal
from pathlib import Path

import numpy as np
import pytest
import regex
from _gpt2 import EOT_ID, GPT2_PAT, gpt2_tiktoken, gpt2_vocab_merges, shakespeare_text
from _scripts import load_script
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmfast.tokenizer.reference import ReferenceEngine, train_bpe_reference

_bpe = pytest.importorskip("lmfast.tokenizer._bpe",
                           reason="the C++ extension is not built: python setup.py build_ext --inplace")

ROOT = Path(__file__).resolve().parents[2]
EOT = "<|endoftext|>"
_PRETOKENIZE = regex.compile(GPT2_PAT)
_FUZZ = settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

# Characters that exercise every branch of the pattern: contractions, the optional space, each class, and
# whitespace that is not ASCII; then anything at all.
_TRICKY = list("abcxyz ABC'sStTdDmMlLrReEvV 0123456789 .,!?-_ \t\n\r\x0b\x0c\x00") + [
    "é", "ß", "中", "文", "😀", "👍", "\U0001f3fd", "\u0301", "\u00a0", "\u2028", "\u3000", "\u200b", "Ⅻ", "١", "²",
    "ا", "ש",
]
# No lone surrogates here: files cannot hold them and the reference cannot encode them (tested separately).
_TEXT = st.text(
    alphabet=st.one_of(st.sampled_from(_TRICKY), st.characters(exclude_categories=("Cs",))), max_size=60
)

EDGE_CASES = [
    "", " ", "  ", "\t", "\n", "\n\n\n", " \t\n\r ", "\r\n", "x ", "x  ", " x", "  x", "   x", "\n x", "\t\tx",
    "hello   world", "hello \n world", "a\n\nb", "  \n  ", "it's", "IT'S", "It'S", "we'll we'LL WE'll", "you're",
    "you'RE", "I've I'VE", "I'm I'M", "he'd HE'D", "don't DON'T", "'s's's", "''s", "' s", "x'", "'", "''", "' '",
    "123", "1234567890123", " 42", "3.14159", "x2y3", "٣٤٥", "Ⅻ²", "😀", "👍🏽👍🏽", " 😀x", "中文字符",
    "日本語のテキスト", "e\u0301", "cafe\u0301 ", "\u0915\u094d\u0937", "שלום עולם", "مرحبا بالعالم", "a\x00b",
    "\x00\x00", " \x00", "\u00a0\u00a0x", "x\u2028y", "\u3000x", "<|endoftext|>", "a<|endoftext|>b",
    " <|endoftext|> ", "<|endoftext|><|endoftext|>", "<|endoftext", "endoftext|>", "\ud800", "a\udfffb", "\ud83d\ude00",
]


def _first_difference(got: list, want: list) -> str:
    i = next((k for k, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
    return (f"first difference at index {i}: got {got[i:i + 5]!r}, want {want[i:i + 5]!r} "
            f"(lengths {len(got)}, {len(want)})")


@pytest.fixture(scope="module")
def gpt2_engine():
    vocab, merges = gpt2_vocab_merges()
    return _bpe.Engine(vocab, merges, {EOT: EOT_ID})


# ----------------------------------------------------------------------------------------------------------------
# Pre-tokenizer


def test_char_class_matches_regex_for_every_code_point():
    text = "".join(map(chr, range(0x110000)))
    want = bytearray(0x110000)
    for cls, pattern in ((_bpe.CLASS_LETTER, r"\p{L}"), (_bpe.CLASS_NUMBER, r"\p{N}"), (_bpe.CLASS_SPACE, r"\s")):
        for m in regex.finditer(pattern, text):
            want[m.start()] = cls
    got = bytes(map(_bpe.char_class, range(0x110000)))
    if got != bytes(want):
        cp = next(i for i in range(0x110000) if got[i] != want[i])
        pytest.fail(f"U+{cp:04X}: char_class says {got[cp]}, regex says {want[cp]}")


def test_checked_in_unicode_table_is_what_the_generator_writes():
    gen = load_script("gen_unicode_tables")
    assert gen.main(["--check"]) == 0, "csrc/unicode_tables.h is stale: run python scripts/gen_unicode_tables.py"


def test_unicode_table_check_ignores_the_regex_version_stamp_and_nothing_else(tmp_path, monkeypatch):
    gen = load_script("gen_unicode_tables")
    text = gen.render(gen.classify_all())
    stamp, body = text.split("\n", 1)
    table = tmp_path / "unicode_tables.h"
    monkeypatch.setattr(gen, "OUT", table)
    table.write_text(stamp.replace(gen.regex.__version__, "1999.1.1") + "\n" + body)
    assert gen.main(["--check"]) == 0
    table.write_text(stamp + "\n" + body.replace("uint8_t kStage2", "uint8_t kStage3"))
    assert gen.main(["--check"]) == 1


def test_char_class_rejects_values_outside_unicode():
    with pytest.raises(ValueError, match="outside"):
        _bpe.char_class(0x110000)


@pytest.mark.parametrize("text", EDGE_CASES)
def test_pretokenize_matches_regex_on_edge_cases(text):
    fixed = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    assert _bpe.pretokenize(text) == _PRETOKENIZE.findall(fixed)


@_FUZZ
@given(text=_TEXT)
def test_pretokenize_matches_regex_under_fuzzing(text):
    assert _bpe.pretokenize(text) == _PRETOKENIZE.findall(text)


# ----------------------------------------------------------------------------------------------------------------
# Encoding against tiktoken with GPT-2's own vocabulary


def test_encode_matches_tiktoken_on_gpt2_vocab_for_shakespeare(gpt2_engine):
    text = shakespeare_text()
    got, want = gpt2_engine.encode_ordinary(text), gpt2_tiktoken().encode_ordinary(text)
    assert got == want, _first_difference(got, want)


@pytest.mark.parametrize("text", EDGE_CASES)
def test_encode_matches_tiktoken_on_gpt2_vocab_for_edge_cases(gpt2_engine, text):
    enc = gpt2_tiktoken()
    assert gpt2_engine.encode_ordinary(text) == enc.encode_ordinary(text)
    assert gpt2_engine.encode(text, {EOT}) == enc.encode(text, allowed_special={EOT})


@pytest.mark.parametrize(
    "name",
    ["a_100k", "spaces_100k", "newlines_100k", "letters_line_500k", "digits_100k", "punctuation_100k", "mixed_1mb"],
)
def test_adversarial_input_finishes_and_matches_tiktoken(gpt2_engine, name):
    rnd = random.Random(0)
    text = {
        "a_100k": lambda: "a" * 100_000,
        "spaces_100k": lambda: " " * 100_000 + "x",
        "newlines_100k": lambda: "\n" * 100_000,
        "letters_line_500k": lambda: "".join(rnd.choices("abcdefghijklmnopqrstuvwxyz", k=500_000)),
        "digits_100k": lambda: "7" * 100_000,
        "punctuation_100k": lambda: "!?" * 50_000,
        "mixed_1mb": lambda: "".join(rnd.choices("ab.,", k=1_000_000)),
    }[name]()
    got, want = gpt2_engine.encode_ordinary(text), gpt2_tiktoken().encode_ordinary(text)
    assert got == want, _first_difference(got, want)


def test_lone_surrogates_become_the_replacement_character_as_in_tiktoken(gpt2_engine):
    text = "a\ud800b \udfff"
    assert gpt2_engine.encode_ordinary(text) == gpt2_engine.encode_ordinary("a\ufffdb \ufffd")
    assert gpt2_engine.encode_ordinary(text) == gpt2_tiktoken().encode_ordinary(text)


def test_special_tokens_are_split_out_only_when_allowed(gpt2_engine):
    text = "hi<|endoftext|>there"
    hi, there = gpt2_engine.encode_ordinary("hi"), gpt2_engine.encode_ordinary("there")
    assert gpt2_engine.encode(text, {EOT}) == hi + [EOT_ID] + there
    assert gpt2_engine.encode(text, set()) == gpt2_engine.encode_ordinary(text)
    assert EOT_ID not in gpt2_engine.encode_ordinary(text)


def test_special_tokens_match_leftmost_then_longest():
    vocab = {i: bytes([i]) for i in range(256)}
    vocab.update({256: b"<a>", 257: b"<a><b>", 258: b"b>"})
    engine = _bpe.Engine(vocab, [], {"<a>": 256, "<a><b>": 257, "b>": 258})
    allowed = {"<a>", "<a><b>", "b>"}
    assert engine.encode("x<a><b>y", allowed) == [ord("x"), 257, ord("y")]
    assert engine.encode("x<a><b", allowed) == [ord("x"), 256, ord("<"), ord("b")]
    assert engine.encode("b><a>", {"<a>", "b>"}) == [258, 256]
    assert engine.encode("<a><b>", {"<a>", "b>"}) == [256, ord("<"), 258]


def test_encode_rejects_an_allowed_special_token_the_engine_does_not_know(gpt2_engine):
    with pytest.raises(ValueError, match="<|nope|>"):
        gpt2_engine.encode("x", {"<|nope|>"})


def test_encode_rejects_text_that_is_not_str(gpt2_engine):
    with pytest.raises(TypeError, match="str"):
        gpt2_engine.encode_ordinary(b"bytes")


def test_engines_with_other_vocabs_on_one_thread_never_share_cached_pieces(gpt2_engine):
    text = "the same words, cached by each engine: the the the"
    gpt2_ids = gpt2_engine.encode_ordinary(text)
    bytes_only = _bpe.Engine({i: bytes([i]) for i in range(256)}, [], {})
    assert bytes_only.encode_ordinary(text) == list(text.encode("utf-8"))
    assert gpt2_engine.encode_ordinary(text) == gpt2_ids


def test_a_vocab_too_big_for_16_bit_merge_keys_encodes_as_the_reference():
    # Every byte pair merged, in a shuffled order, then a few merges of those: 65,795 tokens, past the compact merge
    # table's 16-bit ids, so the engine looks merges up in its wide table.
    rng = random.Random(20)
    merges = [(bytes([a]), bytes([b])) for a in range(256) for b in range(256)]
    rng.shuffle(merges)
    merges += [(b"th", b"e"), (b" t", b"he"), (b"in", b"g"), (b"ing", b"s"), (b"\xc3\xa9", b"t\xc3")]
    vocab = {i: bytes([i]) for i in range(256)}
    for a, b in merges:
        vocab[len(vocab)] = a + b
    text = shakespeare_text()[:20_000] + " the things été café 東京 👍🏽 " * 20
    got = _bpe.Engine(vocab, merges, {}).encode_ordinary(text)
    want = ReferenceEngine(vocab, merges).encode_ordinary(text)
    assert got == want, _first_difference(got, want)


def test_encode_batch_with_threads_equals_single_thread(gpt2_engine):
    texts = shakespeare_text()[:400_000].split("\n\n") + ["", EOT, "a<|endoftext|>b"]
    single = [gpt2_engine.encode(t, {EOT}) for t in texts]
    assert gpt2_engine.encode_batch(texts, {EOT}, 1) == single
    assert gpt2_engine.encode_batch(texts, {EOT}, 2) == single
    assert gpt2_engine.encode_batch(texts, {EOT}, 7) == single
    assert gpt2_engine.encode_batch([], {EOT}, 2) == []


def test_encode_batch_from_concurrent_python_threads_equals_single_thread(gpt2_engine):
    texts = shakespeare_text()[:200_000].split("\n\n")
    want = [gpt2_engine.encode_ordinary(t) for t in texts]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: gpt2_engine.encode_batch(texts, set(), 2), range(6)))
    assert all(r == want for r in results)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_encode_batch_works_in_a_forked_child_after_the_parent_used_threads(gpt2_engine):
    texts = ["hello world", "more text here"] * 8
    want = gpt2_engine.encode_batch(texts, set(), 2)  # starts the worker pool in this process
    pid = os.fork()
    if pid == 0:  # the child: the parent's pool threads do not exist here, so a new pool must start
        signal.alarm(60)  # a hang kills the child instead of the test run
        os._exit(0 if gpt2_engine.encode_batch(texts, set(), 2) == want else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def _concatenated_encodes(engine, docs, separator):
    want = []
    for d in docs:
        want += engine.encode(d, {EOT})
        want += [separator] if separator >= 0 else []
    return want


# Documents of tricky characters and longer runs (words, special tokens, blank lines), long enough for 64-byte chunks.
_DOC = st.lists(st.sampled_from(_TRICKY + [EOT, "word ", "  ", "\n\n", "Hello", "1234"]), max_size=120).map("".join)


@given(docs=st.lists(_DOC, max_size=6),
       threads=st.integers(1, 3), chunk=st.sampled_from([64, 100, 1 << 20]), itemsize=st.sampled_from([2, 4]),
       separator=st.sampled_from([-1, EOT_ID]))
@_FUZZ
def test_encode_to_numpy_equals_the_concatenated_encodes_for_any_threads_chunks_and_dtype(
        gpt2_engine, docs, threads, chunk, itemsize, separator):
    got = gpt2_engine.encode_to_numpy(docs, {EOT}, separator, threads, itemsize, chunk)
    want = _concatenated_encodes(gpt2_engine, docs, separator)
    assert got.dtype == (np.uint16 if itemsize == 2 else np.uint32)
    assert got.tolist() == want, _first_difference(got.tolist(), want)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("itemsize", [2, 4])
def test_encode_to_numpy_over_many_rounds_equals_encode(gpt2_engine, threads, itemsize):
    # 64-byte chunks make rounds of 4 KiB: the array grows by realloc ~50 times, on every thread count.
    text = shakespeare_text()[:200_000] + EOT + shakespeare_text()[-3000:]
    docs = [text[:70_000], "", text[70_000:]]
    want = _concatenated_encodes(gpt2_engine, docs, EOT_ID)
    got = gpt2_engine.encode_to_numpy(docs, {EOT}, EOT_ID, threads, itemsize, 64)
    assert got.tolist() == want, _first_difference(got.tolist(), want)
    whole = gpt2_engine.encode_to_numpy(text, {EOT}, -1, threads, itemsize, 64)
    assert whole.tolist() == gpt2_engine.encode(text, {EOT})


def test_encode_to_numpy_of_nothing_is_an_empty_writable_array(gpt2_engine):
    for texts in ([], "", [""]):
        got = gpt2_engine.encode_to_numpy(texts, set(), -1, 2, 2)
        assert got.shape == (0,) and got.dtype == np.uint16
    got = gpt2_engine.encode_to_numpy(["a", "b"], set(), EOT_ID, 1, 4)
    got[0] = 7  # the array owns its buffer (through its base) and may be written
    assert got.tolist() == [7, EOT_ID, *gpt2_engine.encode_ordinary("b"), EOT_ID]


def test_encode_to_numpy_arrays_alive_together_never_share_memory(gpt2_engine):
    # Freed arrays give their memory back for the next call: a live one must never be handed out again.
    texts = [shakespeare_text()[k * 50_000:(k + 1) * 50_000] for k in range(4)]
    want = [gpt2_engine.encode_ordinary(t) for t in texts]
    kept = []
    for k, t in enumerate(texts):
        kept.append(gpt2_engine.encode_to_numpy(t, set(), -1, 1 + k % 2, 2 + 2 * (k % 2)))
        gpt2_engine.encode_to_numpy(texts[0], set(), -1, 2, 2)  # made and freed at once
    assert [a.tolist() for a in kept] == want


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_encode_to_numpy_works_in_a_forked_child_after_the_parent_used_it(gpt2_engine):
    text = shakespeare_text()[:20_000]
    want = gpt2_engine.encode_to_numpy(text, set(), -1, 2, 2).tolist()  # the parent keeps memory for reuse
    pid = os.fork()
    if pid == 0:
        signal.alarm(60)
        os._exit(0 if gpt2_engine.encode_to_numpy(text, set(), -1, 2, 2).tolist() == want else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_encode_batch_rejects_zero_threads(gpt2_engine):
    with pytest.raises(ValueError, match="num_threads"):
        gpt2_engine.encode_batch(["x"], set(), 0)


def test_decode_bytes_inverts_encode_and_names_an_unknown_id(gpt2_engine):
    text = "Ünïcode ☃ and 😀, ok?\n"
    assert gpt2_engine.decode_bytes(gpt2_engine.encode_ordinary(text)) == text.encode("utf-8")
    assert gpt2_engine.decode_bytes([EOT_ID]) == EOT.encode()
    for bad in (50257, -1):
        with pytest.raises(ValueError, match=f"unknown token id {bad}"):
            gpt2_engine.decode_bytes([0, bad])


def test_vocab_size_is_the_largest_id_plus_one(gpt2_engine):
    assert gpt2_engine.vocab_size == 50257
    vocab = {i: bytes([i]) for i in range(256)}
    vocab[1000] = b"ab"
    assert _bpe.Engine(vocab, [(b"a", b"b")], {}).vocab_size == 1001


def test_engine_rejects_a_vocab_missing_a_byte_or_a_merge_token():
    vocab = {i: bytes([i]) for i in range(255)}
    with pytest.raises(ValueError, match="0xff"):
        _bpe.Engine(vocab, [], {})
    vocab[255] = b"\xff"
    with pytest.raises(ValueError, match="b'ab'"):
        _bpe.Engine(vocab, [(b"a", b"b")], {})
    with pytest.raises(ValueError, match="not in the vocab"):
        _bpe.Engine(vocab, [], {EOT: 999})
    with pytest.raises(ValueError, match="too sparse"):
        _bpe.Engine({**vocab, 2**30: b"ab"}, [], {})
    with pytest.raises(TypeError, match="bytes"):
        _bpe.Engine({**vocab, 256: "ab"}, [], {})


def test_merges_may_build_a_special_tokens_bytes_as_in_the_reference():
    vocab = {i: bytes([i]) for i in range(256)}
    vocab.update({256: b"ab", 257: b"abc"})
    merges, specials = [(b"a", b"b"), (b"ab", b"c")], {"abc": 257}
    native, reference = _bpe.Engine(vocab, merges, specials), ReferenceEngine(vocab, merges, specials)
    for text in ("abc", "xabcx abc", "abcabc"):
        assert native.encode_ordinary(text) == reference.encode_ordinary(text)
        assert native.encode(text, {"abc"}) == reference.encode(text, {"abc"})


def test_a_vocab_token_that_bpe_cannot_reach_is_never_produced():
    # b"abc" is in the vocab but the merges build "ab" then stop: the whole-piece shortcut must not fire.
    vocab = {i: bytes([i]) for i in range(256)}
    vocab.update({256: b"bc", 257: b"abc", 258: b"ab"})
    merges = [(b"b", b"c"), (b"a", b"b")]
    native, reference = _bpe.Engine(vocab, merges, {}), ReferenceEngine(vocab, merges, {})
    assert native.encode_ordinary("abc") == reference.encode_ordinary("abc") == [ord("a"), 256]


# ----------------------------------------------------------------------------------------------------------------
# Trained vocabularies: native vs reference


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


def _corpus(name: str) -> str:
    rnd = random.Random(1)
    if name == "shakespeare":
        return shakespeare_text()[:300_000].replace("\n\n\n", f"\n{EOT}")
    if name == "unicode":
        return "".join(rnd.choice(_TRICKY) for _ in range(30_000))
    if name == "ties":  # few distinct pairs with equal counts: every step is decided by the tie-break
        return " ".join(rnd.choice(["ab", "ba", "cd", "dc", "abcd", "ee", "e"]) for _ in range(4000))
    if name == "whitespace":
        return "".join(rnd.choice(["  ", "\n", "\t", " x", "x", "\r\n", "   \n", EOT]) for _ in range(20_000))
    raise KeyError(name)


@pytest.mark.parametrize("vocab_size", [257, 300, 1500])
@pytest.mark.parametrize("corpus", ["shakespeare", "unicode", "ties", "whitespace"])
def test_train_bpe_matches_reference(tmp_path, corpus, vocab_size):
    path = _write(tmp_path, "corpus.txt", _corpus(corpus))
    vocab, merges = _bpe.train_bpe(path, vocab_size, [EOT], 2)
    ref_vocab, ref_merges = train_bpe_reference(path, vocab_size, [EOT])
    assert merges == ref_merges, _first_difference(merges, ref_merges)
    assert vocab == ref_vocab


@_FUZZ
@given(text=_TEXT, extra=st.integers(0, 40), specials=st.sampled_from([[], [EOT], ["<s>", "</s>", "<s></s>"]]))
def test_train_bpe_matches_reference_under_fuzzing(tmp_path_factory, text, extra, specials):
    text = text + (specials[0] if specials else "") + text[::-1]
    path = _write(tmp_path_factory.mktemp("fuzz"), "corpus.txt", text)
    vocab_size = 256 + len(specials) + extra
    assert _bpe.train_bpe(path, vocab_size, specials, 1) == train_bpe_reference(path, vocab_size, specials)


@_FUZZ
@given(corpus=_TEXT, texts=st.lists(_TEXT, min_size=1, max_size=4), extra=st.integers(0, 60))
def test_encode_matches_reference_engine_with_trained_vocab_under_fuzzing(tmp_path_factory, corpus, texts, extra):
    path = _write(tmp_path_factory.mktemp("fuzz"), "corpus.txt", (corpus + " ") * 3 + "".join(texts))
    vocab, merges = _bpe.train_bpe(path, 257 + extra, [EOT], 1)
    native, reference = _bpe.Engine(vocab, merges, {EOT: 0}), ReferenceEngine(vocab, merges, {EOT: 0})
    for text in texts + [EOT.join(texts)]:
        assert native.encode_ordinary(text) == reference.encode_ordinary(text)
        assert native.encode(text, {EOT}) == reference.encode(text, {EOT})
        assert native.decode_bytes(native.encode(text, {EOT})) == text.encode("utf-8")


def test_train_bpe_gives_the_same_merges_for_any_worker_count(tmp_path):
    path = _write(tmp_path, "corpus.txt", shakespeare_text())  # > 1 MiB, so it is cut into several chunks
    one = _bpe.train_bpe(path, 600, [EOT], 1)
    assert _bpe.train_bpe(path, 600, [EOT], 2) == one
    assert _bpe.train_bpe(path, 600, [EOT], None) == one


@pytest.mark.slow
def test_train_bpe_matches_reference_on_the_whole_shakespeare_corpus(tmp_path):
    path = _write(tmp_path, "corpus.txt", shakespeare_text())
    assert _bpe.train_bpe(path, 400, [EOT], 2) == train_bpe_reference(path, 400, [EOT])


def test_train_bpe_rejects_a_vocab_size_below_bytes_plus_specials(tmp_path):
    path = _write(tmp_path, "corpus.txt", "hello")
    with pytest.raises(ValueError, match="vocab_size=256.*>= 257"):
        _bpe.train_bpe(path, 256, [EOT], 1)


def test_train_bpe_names_the_file_and_offset_of_invalid_utf8(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"caf\xe9 au lait")
    with pytest.raises(ValueError, match=r"latin1\.txt.*offset 3"):
        _bpe.train_bpe(path, 300, [], 1)


def test_train_bpe_raises_file_not_found_for_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        _bpe.train_bpe(tmp_path / "nope.txt", 300, [], 1)


def test_train_bpe_accepts_str_bytes_and_pathlike_paths(tmp_path):
    path = _write(tmp_path, "corpus.txt", "low lower lowest " * 20)
    want = _bpe.train_bpe(path, 270, [], 1)
    assert _bpe.train_bpe(str(path), 270, [], 1) == want
    assert _bpe.train_bpe(os.fsencode(path), 270, [], 1) == want


def test_train_bpe_on_an_empty_file_returns_only_bytes_and_specials(tmp_path):
    path = _write(tmp_path, "empty.txt", "")
    vocab, merges = _bpe.train_bpe(path, 1000, [EOT], 1)
    assert merges == [] and len(vocab) == 257 and vocab[0] == EOT.encode() and vocab[1] == b"\x00"
