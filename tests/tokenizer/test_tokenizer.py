"""The Tokenizer API against tiktoken on GPT-2's own vocabulary, and its file formats, streaming and CLI.

Every test that encodes runs once per available engine: the pure-Python reference always, the C++ engine
(``lmfast.tokenizer._bpe``) as soon as it is built.
"""

import json
import re
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest
from _gpt2 import EOT_ID, gpt2_files, gpt2_tiktoken, gpt2_vocab_merges, shakespeare_text
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmfast.tokenizer import Tokenizer, native_available, train_bpe
from lmfast.tokenizer import streaming as _streaming
from lmfast.tokenizer import tokenizer as tokenizer_module

BACKENDS = ["python"] + (["native"] if native_available() else [])
EOT = "<|endoftext|>"


@pytest.fixture(scope="module", params=BACKENDS)
def gpt2(request) -> Tokenizer:
    vocab, merges = gpt2_vocab_merges()
    return Tokenizer(vocab, merges, [EOT], backend=request.param)


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    text = shakespeare_text()[:60_000] + " naïve café 日本語の文章 👍🏽 ١٢٣ שלום\t\t x\n\n" + EOT + " done"
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module", params=BACKENDS)
def small(request, small_corpus) -> Tokenizer:
    vocab, merges = train_bpe(small_corpus, 400, [EOT], backend="python")
    return Tokenizer(vocab, merges, [EOT], backend=request.param)


def first_difference(got: list[int], want: list[int]) -> str:
    i = next((k for k, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
    return f"first difference at index {i}: got {got[i:i + 5]}, want {want[i:i + 5]} (lengths {len(got)}/{len(want)})"


# ---------------------------------------------------------------------------------------------------------------
# Encoding equals tiktoken on GPT-2's vocabulary

EDGE_CASES = [
    "", " ", "  ", "\t", "\n", "\n\n\n", " \t\n \r\n", "\r\n\r\n", "   hello", "\n\n  world  \n", "a  b   c    d",
    "it's", "IT'S", "we'll", "WE'LL", "I'd've", "they're", "THEY'RE", "you'm'", "'s's't", " 's", "''", "'ll've",
    "12345", "1 234 5678.90", "३४५ ١٢٣", "x²³", "👍", "👍🏽👨‍👩‍👧", "🙂 🙃", "日本語のテキスト",
    "中文 文本 混合 English",
    "e\u0301 a\u0308\u0304", "\u0301\u0301", "שלום עולם", "مرحبا بالعالم", "\u202eabc\u202c", "a\x00b\x00\x00", "\x00",
    "\x7f\x1b[31m", "\ufeffBOM", "\u00a0nbsp\u2003em", " \u3000ideographic", "<|endoftext|>", "a<|endoftext|>b",
    " <|endoftext|> ", "<|endoftext|><|endoftext|>", "<|endoftext", "<|endoftext|", "x<|endoftext|>\n\nyz",
    "<|endoftext|>'s", "Hello, world! How's it going?", "def f(x):\n\treturn x ** 2\n", "___----====",
]


@pytest.mark.slow  # ~2 s alone with the Python engine (5 MB of text), ~10 s on 2 busy cores
def test_encode_matches_tiktoken_on_gpt2_vocab_over_all_of_shakespeare(gpt2):
    text = shakespeare_text()
    got, want = gpt2.encode(text), gpt2_tiktoken().encode(text, allowed_special="all")
    assert got == want, first_difference(got, want)


@pytest.mark.parametrize("text", EDGE_CASES, ids=range(len(EDGE_CASES)))
def test_encode_matches_tiktoken_on_gpt2_vocab_over_edge_cases(gpt2, text):
    assert gpt2.encode(text) == gpt2_tiktoken().encode(text, allowed_special="all")
    assert gpt2.decode(gpt2.encode(text)) == text


@pytest.mark.parametrize("text", ["a\ud800b", "\udfff", "x \ud83d\ude00 y", "\ud800\ud800"])
def test_lone_surrogates_encode_as_replacement_characters_like_tiktoken(gpt2, text):
    assert gpt2.encode(text) == gpt2_tiktoken().encode(text)


def test_encode_ordinary_treats_special_text_as_plain_text_like_tiktoken(gpt2):
    text = "a<|endoftext|>b <|endoftext|>"
    want = gpt2_tiktoken().encode_ordinary(text)
    assert gpt2.encode_ordinary(text) == want
    assert gpt2.encode(text, allowed_special=set(), disallowed_special=()) == want
    assert EOT_ID not in want


def test_gpt2_tokenizer_from_the_wheel_has_gpt2s_vocab_and_end_of_text_id():
    tok = Tokenizer.gpt2(backend="python")
    vocab, merges = gpt2_vocab_merges()
    assert (tok.vocab, tok.merges) == (vocab, merges)
    assert (tok.vocab_size, tok.eot_id, tok.special_tokens) == (50257, EOT_ID, {EOT: EOT_ID})
    assert tok.encode("Hello world<|endoftext|>") == [15496, 995, EOT_ID]


def test_disallowed_special_token_in_text_raises_and_names_it(gpt2):
    with pytest.raises(ValueError, match="<\\|endoftext\\|>.*disallowed"):
        gpt2.encode("x<|endoftext|>", allowed_special=set())


def test_allowed_special_that_is_not_a_special_token_raises(gpt2):
    with pytest.raises(ValueError, match="not special tokens"):
        gpt2.encode("x", allowed_special={"<|im_start|>"})


def test_overlapping_special_tokens_longest_match_wins(gpt2):
    vocab, merges = gpt2_vocab_merges()
    double = EOT + EOT
    tok = Tokenizer(vocab, merges, [EOT, double], backend=gpt2.backend)
    d = tok.special_tokens[double]
    assert d == 50257 and tok.vocab_size == 50258
    assert tok.encode("a" + EOT * 3 + "b") == [64, d, EOT_ID, 65]
    assert tok.encode(EOT + " " + double) == [EOT_ID, 220, d]
    assert tok.decode(tok.encode("a" + EOT * 3 + "b")) == "a" + EOT * 3 + "b"


def test_special_tokens_adjacent_to_text_split_the_text_around_them(small):
    eot = small.eot_id
    assert small.encode(EOT) == [eot]
    assert small.encode("ab" + EOT + "cd") == small.encode("ab") + [eot] + small.encode("cd")
    assert small.encode(" " + EOT + " ") == small.encode(" ") + [eot] + small.encode(" ")


# ---------------------------------------------------------------------------------------------------------------
# Decoding


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_decode_inverts_encode_on_arbitrary_text_with_a_small_trained_vocab(small, text):
    assert small.decode(small.encode(text)) == text


def test_decode_of_invalid_utf8_gives_replacement_character(gpt2):
    ids = {b: i for i, b in gpt2.vocab.items()}
    assert gpt2.decode([ids[b"\xff"]]) == "\ufffd"
    assert gpt2.decode([ids[b"a"], ids[b"\xe2"], ids[b"\x82"], ids[b"b"]]) == "a\ufffdb"
    assert gpt2.decode_bytes([ids[b"\xe2"], ids[b"\x82"], ids[b"\xac"]]) == "€".encode()


def test_decode_of_an_unknown_id_raises_and_names_it(gpt2):
    with pytest.raises(ValueError, match="50257"):
        gpt2.decode([15496, 50257])
    with pytest.raises(ValueError, match="-1"):
        gpt2.decode_bytes([-1])


def test_decode_accepts_a_numpy_array_of_ids(gpt2):
    ids = gpt2.encode("Hello world")
    assert gpt2.decode(np.asarray(ids, dtype=np.uint16)) == "Hello world"
    assert gpt2.decode([np.int32(i) for i in ids]) == "Hello world"


@pytest.mark.parametrize("ids, error, message", [
    (np.array([1.7]), TypeError, "integer token ids, got an array of float64; ids are never rounded"),
    ([15496, 1.0], TypeError, "token ids must be int, got float 1.0 at position 1"),
    ([True], TypeError, "token ids must be int, got bool True at position 0"),
    ([None], TypeError, "token ids must be int, got NoneType None at position 0"),
    ("15496", TypeError, "decode expects a sequence of int token ids, got str"),
    (np.array([2**63], dtype=np.uint64), ValueError, "unknown token id 9223372036854775808 at position 0"),
    ([2**70], ValueError, "unknown token id 1180591620717411303424 at position 0"),
    ([10**5000], ValueError, "unknown token id of 16610 bits at position 0"),
])
def test_decode_refuses_what_is_not_a_token_id_and_names_it(gpt2, ids, error, message):
    with pytest.raises(error, match=re.escape(message)):
        gpt2.decode(ids)


@pytest.mark.parametrize("ids, error, message", [
    ([2**70], ValueError, "unknown token id 1180591620717411303424 at position 0; valid ids are those in the vocab"),
    ([3, None], TypeError, "token ids must be int, got NoneType None at position 1"),
    ([1.5], TypeError, "token ids must be int, got float 1.5 at position 0"),
])
def test_both_engines_refuse_bad_ids_with_the_same_clean_message(gpt2, ids, error, message):
    with pytest.raises(error, match=re.escape(message)):
        gpt2._engine.decode_bytes(ids)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad_id, message", [(10**12, "vocab id 1000000000000 is out of range"),
                                             (2**31, "vocab id 2147483648 is out of range"),
                                             (2**30, "vocab ids are too sparse")])
def test_both_engines_refuse_vocab_ids_they_cannot_index(backend, bad_id, message):
    vocab = {i: bytes([i]) for i in range(256)} | {bad_id: b"ab"}
    with pytest.raises(ValueError, match=message):
        Tokenizer(vocab, [], backend=backend)


# ---------------------------------------------------------------------------------------------------------------
# Streaming: encode_iterable and encode_file


ADVERSARIAL_LINES = [
    "plain line\n", "\n", "\n", "   \n", "  trailing spaces   ", "\n", "\t\t\n", "<|endof", "text|>", "glued",
    "<|endoftext|>\n", "<", "|endoftext|", ">", " \n\n\n  ", "x" * 3000, " tail\r\n", "\r\n", "日本語" * 500, "\n",
    "'s", "'", "ll", " 123", "456\n", "<|endoftext|><|endoftext|>", "  ", "\u3000", "end",
]


class CountingLines:
    """An iterable of lines that records how far it has been read, to measure what encode_iterable buffers."""

    def __init__(self, lines):
        self.lines, self.chars_read = lines, 0

    def __iter__(self):
        for line in self.lines:
            self.chars_read += len(line)
            yield line


def test_encode_iterable_over_a_file_equals_encode_of_the_whole_text(gpt2, tmp_path):
    text = shakespeare_text()[:400_000] + "".join(ADVERSARIAL_LINES) * 20
    path = tmp_path / "input.txt"
    path.write_text(text, encoding="utf-8", newline="")
    with open(path, encoding="utf-8", newline="") as f:
        got = list(gpt2.encode_iterable(f))
    assert got == gpt2.encode(text), first_difference(got, gpt2.encode(text))


def test_encode_iterable_never_holds_much_more_than_one_chunk(gpt2):
    lines = shakespeare_text()[:600_000].splitlines(keepends=True)
    source = CountingLines(lines)
    produced, worst_lag = 0, 0
    for i in gpt2.encode_iterable(source):
        produced += len(gpt2.decode_bytes([i]))  # ASCII text: bytes == chars
        worst_lag = max(worst_lag, source.chars_read - produced)
    assert produced == sum(map(len, lines))
    assert worst_lag <= 3 * tokenizer_module._STREAM_CHUNK_CHARS


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(st.sampled_from(ADVERSARIAL_LINES + [" ", "a", "b c", "\t", "|", "<|endoftext|>"]), max_size=60))
def test_encode_iterable_equals_encode_on_adversarial_pieces_and_tiny_chunks(gpt2, pieces):
    with mock.patch.object(tokenizer_module, "_STREAM_CHUNK_CHARS", 8):
        got = list(gpt2.encode_iterable(iter(pieces)))
    assert got == gpt2.encode("".join(pieces))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(st.sampled_from(["<| se", "p |>", "<| sep |>", "x", "\n", "y", " ", "ab", "x\ny", "  z"]),
                       max_size=60))
def test_encode_iterable_equals_encode_with_special_tokens_that_contain_whitespace(small, pieces):
    tok = Tokenizer(small.vocab, small.merges, [EOT, "<| sep |>", "x\ny", "  "], backend=small.backend)
    with mock.patch.object(tokenizer_module, "_STREAM_CHUNK_CHARS", 6):
        got = list(tok.encode_iterable(pieces))
    assert got == tok.encode("".join(pieces))


def test_encode_iterable_streams_a_special_token_split_across_pieces(small):
    text = "one two" + EOT + " three " + EOT
    pieces = [c for c in text]  # one character per piece
    with mock.patch.object(tokenizer_module, "_STREAM_CHUNK_CHARS", 4):
        assert list(small.encode_iterable(pieces)) == small.encode(text)


def test_encode_file_writes_uint16_npy_equal_to_encode(gpt2, tmp_path):
    text = shakespeare_text()[:300_000] + "".join(ADVERSARIAL_LINES) * 10
    src = tmp_path / "in.txt"
    src.write_bytes(text.encode("utf-8"))
    with mock.patch.object(tokenizer_module, "_FILE_CHUNK_CHARS", 5000), \
            mock.patch.object(_streaming, "_FILE_READ_BYTES", 777):  # odd size: splits UTF-8 sequences
        out = gpt2.encode_file(src, tmp_path / "out" / "ids.npy", num_threads=2, progress=False)
    ids = np.load(out)
    assert ids.dtype == np.uint16 and ids.ndim == 1
    assert ids.tolist() == gpt2.encode(text)
    assert sorted(p.name for p in out.parent.iterdir()) == ["ids.npy"]


def test_encode_file_uses_uint32_when_ids_exceed_uint16(tmp_path):
    vocab = {i: bytes([i]) for i in range(256)}
    vocab[70_000] = b"<|big|>"
    tok = Tokenizer(vocab, [], ["<|big|>"], backend="python")
    src = tmp_path / "in.txt"
    src.write_text("ab<|big|>", encoding="utf-8")
    ids = np.load(tok.encode_file(src, tmp_path / "ids.npy", progress=False))
    assert ids.dtype == np.uint32 and ids.tolist() == [97, 98, 70_000]


def test_encode_file_of_an_empty_file_writes_an_empty_array(small, tmp_path):
    src = tmp_path / "empty.txt"
    src.write_bytes(b"")
    ids = np.load(small.encode_file(src, tmp_path / "ids.npy", progress=False))
    assert ids.shape == (0,) and ids.dtype == np.uint16


def test_encode_file_on_invalid_utf8_names_the_byte_offset_and_leaves_no_output(small, tmp_path):
    src = tmp_path / "bad.txt"
    src.write_bytes(b"hello world\n" * 100 + b"\xff oops")
    out = tmp_path / "ids.npy"
    with pytest.raises(ValueError, match="bad.txt.*byte offset 1200"):
        small.encode_file(src, out, progress=False)
    assert list(tmp_path.iterdir()) == [src]


# ---------------------------------------------------------------------------------------------------------------
# Files: from_files, save / load, and bad files


def test_from_files_reads_gpt2s_vocab_json_and_merges_txt(tmp_path):
    vocab_path, merges_path = gpt2_files(tmp_path)
    tok = Tokenizer.from_files(vocab_path, merges_path, [EOT], backend="python")
    assert (tok.vocab, tok.merges) == gpt2_vocab_merges()
    assert tok.eot_id == EOT_ID


def test_save_then_load_round_trips_vocab_merges_and_special_tokens(small, tmp_path):
    small.save(tmp_path / "tok")
    again = Tokenizer.load(tmp_path / "tok", backend=small.backend)
    assert (again.vocab, again.merges, again.special_tokens) == (small.vocab, small.merges, small.special_tokens)
    text = "Round trip: naïve café 日本語 " + EOT + " 👍🏽"
    assert again.encode(text) == small.encode(text)
    files = tmp_path / "tok"
    tok2 = Tokenizer.from_files(files / "vocab.json", files / "merges.txt", [EOT], backend="python")
    assert tok2.vocab == small.vocab


def _write_pair(tmp_path, vocab_text: str, merges_text: str):
    (tmp_path / "vocab.json").write_text(vocab_text, encoding="utf-8")
    (tmp_path / "merges.txt").write_text(merges_text, encoding="utf-8")
    return tmp_path / "vocab.json", tmp_path / "merges.txt"


def _byte_vocab_lines(extra: dict[str, int]) -> str:
    strs = tokenizer_module.bytes_to_unicode()
    entries = {strs[b]: b for b in range(256)} | extra
    lines = [f"{json.dumps(k, ensure_ascii=False)}: {json.dumps(v)}" for k, v in entries.items()]
    return "{\n" + ",\n".join(lines) + "\n}"


BAD_FILES = {
    "truncated vocab json": (lambda: _byte_vocab_lines({"he": 256})[:-40], "#version: 0.2\n", r"vocab.json:25[0-9]"),
    "vocab char not byte-level": (lambda: _byte_vocab_lines({"h e": 256}), "#version: 0.2\n", "vocab.json:258"),
    "vocab id not an int": (lambda: _byte_vocab_lines({"he": "256"}), "#version: 0.2\n", "vocab.json:258"),
    "vocab id used twice": (lambda: _byte_vocab_lines({"he": 5}), "#version: 0.2\n", "vocab.json:258"),
    "merge part not in vocab": (lambda: _byte_vocab_lines({"he": 256}), "#version: 0.2\nh e\nhe llo\n", "merges.txt:3"),
    "merge result not in vocab": (lambda: _byte_vocab_lines({"he": 256}), "#version: 0.2\nh e\nl l\n", "merges.txt:3"),
    "truncated merge line": (lambda: _byte_vocab_lines({"he": 256}), "#version: 0.2\nh e\nl", "merges.txt:3"),
    "three parts on a line": (lambda: _byte_vocab_lines({"he": 256}), "#version: 0.2\nh e x\n", "merges.txt:2"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_each_bad_file_error_names_the_file_and_line(tmp_path, case):
    vocab_text, merges_text, where = BAD_FILES[case]
    vocab_path, merges_path = _write_pair(tmp_path, vocab_text(), merges_text)
    with pytest.raises(ValueError) as err:
        Tokenizer.from_files(vocab_path, merges_path, backend="python")
    assert re.search(re.escape(f"{tmp_path}/") + where + ":", str(err.value)), str(err.value)


def test_a_vocab_without_all_256_bytes_is_rejected_with_the_reason():
    with pytest.raises(ValueError, match="256 single-byte"):
        Tokenizer({0: b"a", 1: b"b"}, [], backend="python")


def test_a_merge_whose_parts_are_not_in_the_vocab_is_rejected():
    vocab = {i: bytes([i]) for i in range(256)}
    with pytest.raises(ValueError, match="not in the vocab"):
        Tokenizer(vocab, [(b"a", b"b")], backend="python")


@pytest.mark.parametrize("merges_text", ["", "#version: 0.2\n", "\n\n"])
def test_an_empty_merges_file_for_a_vocab_with_merged_tokens_is_an_error(tmp_path, merges_text):
    vocab_path, merges_path = _write_pair(tmp_path, _byte_vocab_lines({"he": 256}), merges_text)
    with pytest.raises(ValueError, match="merges.txt: holds no merges, but the vocab has 1 multi-byte tokens"):
        Tokenizer.from_files(vocab_path, merges_path)


def test_an_empty_merges_file_is_fine_for_a_vocab_of_bytes_and_special_tokens(tmp_path):
    vocab_path, merges_path = _write_pair(tmp_path, _byte_vocab_lines({EOT: 256}), "#version: 0.2\n")
    assert Tokenizer.from_files(vocab_path, merges_path, [EOT]).encode("ab" + EOT) == [97, 98, 256]


def test_directories_where_files_belong_are_called_directories(tmp_path, small):
    (tmp_path / "d").mkdir()
    with pytest.raises(FileNotFoundError, match="d is a directory; pass the vocab"):
        Tokenizer.from_files(tmp_path / "d", tmp_path / "merges.txt")
    with pytest.raises(FileNotFoundError, match="d is a directory; pass the training text file itself"):
        train_bpe(tmp_path / "d", 300)
    with pytest.raises(FileNotFoundError, match="d is a directory; pass the text to encode file itself"):
        small.encode_file(tmp_path / "d", tmp_path / "out.npy")
    (tmp_path / "in.txt").write_text("hello")
    with pytest.raises(ValueError, match="d is a directory; the output is a file"):
        small.encode_file(tmp_path / "in.txt", tmp_path / "d")
    with pytest.raises(FileNotFoundError, match="in.txt: a file, not a tokenizer directory"):
        Tokenizer.load(tmp_path / "in.txt")
    with pytest.raises(ValueError, match="in.txt is a file; a tokenizer is saved into a directory"):
        small.save(tmp_path / "in.txt")


def test_missing_files_raise_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        Tokenizer.from_files(tmp_path / "nope.json", tmp_path / "merges.txt")
    with pytest.raises(FileNotFoundError, match="no such tokenizer directory"):
        Tokenizer.load(tmp_path / "missing")


# ---------------------------------------------------------------------------------------------------------------
# Backends


def test_native_backend_without_the_extension_says_to_build_it(monkeypatch):
    monkeypatch.setattr(tokenizer_module, "_native", None)
    vocab = {i: bytes([i]) for i in range(256)}
    with pytest.raises(RuntimeError, match="pip install -e ."):
        Tokenizer(vocab, [], backend="native")
    assert Tokenizer(vocab, [], backend="auto").backend == "python"


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="backend='cuda'"):
        Tokenizer({i: bytes([i]) for i in range(256)}, [], backend="cuda")


def test_encode_batch_equals_encode_of_each_text(gpt2):
    texts = [shakespeare_text()[i * 5000:(i + 1) * 5000] for i in range(8)] + ["", EOT, "a" + EOT]
    assert gpt2.encode_batch(texts, num_threads=2) == [gpt2.encode(t) for t in texts]


# ---------------------------------------------------------------------------------------------------------------
# Command line


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "lmfast.tokenize", *map(str, args)], capture_output=True, text=True)


def test_cli_trains_then_encodes_a_file_the_same_as_the_api(small_corpus, tmp_path):
    r = _cli("train", "--input", small_corpus, "--vocab-size", 300, "--special-token", EOT, "--out", tmp_path / "tok",
             "--backend", "python")
    assert r.returncode == 0, r.stderr
    assert " s " in r.stdout and "300 tokens" in r.stdout
    r = _cli("encode", "--tokenizer", tmp_path / "tok", "--input", small_corpus, "--out", tmp_path / "ids.npy",
             "--no-progress")
    assert r.returncode == 0, r.stderr
    tok = Tokenizer.load(tmp_path / "tok", backend="python")
    assert np.load(tmp_path / "ids.npy").tolist() == tok.encode(small_corpus.read_text(encoding="utf-8"))


def test_cli_trains_with_the_chosen_pattern_and_the_saved_tokenizer_keeps_it(small_corpus, tmp_path):
    r = _cli("train", "--input", small_corpus, "--vocab-size", 300, "--out", tmp_path / "tok", "--pattern", "o200k",
             "--no-progress")
    assert r.returncode == 0, r.stderr
    tok = Tokenizer.load(tmp_path / "tok")
    assert tok.pattern == "o200k"
    vocab, merges = train_bpe(small_corpus, 300, [], pattern="o200k")
    assert (tok.vocab, tok.merges) == (vocab, merges)


@pytest.mark.parametrize("args, fragment", [
    (["encode", "--tokenizer", "gpt2", "--input", "/nonexistent/x.txt", "--out", "x.npy"], "/nonexistent/x.txt"),
    (["train", "--input", "/nonexistent/x.txt", "--vocab-size", "300", "--out", "d"], "/nonexistent/x.txt"),
    (["train", "--input", __file__, "--vocab-size", "100", "--out", "d"], "vocab_size=100"),
    (["train", "--input", __file__, "--vocab-size", "many", "--out", "d"], "--vocab-size"),
    (["encode", "--tokenizer", "/nonexistent/tok", "--input", __file__, "--out", "x.npy"], "/nonexistent/tok"),
])
def test_cli_errors_print_one_line_and_exit_2(tmp_path, args, fragment):
    r = subprocess.run([sys.executable, "-m", "lmfast.tokenize", *args], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and fragment in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_main_returns_2_without_raising(capsys):
    from lmfast.tokenize import main

    assert main(["train", "--input", "/nonexistent.txt", "--vocab-size", "300", "--out", "x"]) == 2
    assert "error:" in capsys.readouterr().err

