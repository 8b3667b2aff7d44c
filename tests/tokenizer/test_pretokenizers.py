"""The pre-tokenizers of today's models (cl100k, Llama-3, Qwen2, o200k, beside GPT-2) in the C++ engine, held to
independent oracles: the `regex` module on each pattern for the split alone, and tiktoken built with the same
pattern and ranks (trained here by lmfast) for whole encodes; on edge cases, a Unicode fuzz and a corpus of prose,
source code and other languages."""

import functools
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmfast.tokenizer import Tokenizer, train_bpe
from lmfast.tokenizer import streaming as _streaming
from lmfast.tokenizer.patterns import PATTERNS, REGEX, SOURCE, pattern_of_regex
from lmfast.tokenizer.reference import ReferenceEngine, train_bpe_reference

_bpe = pytest.importorskip("lmfast.tokenizer._bpe",
                           reason="the C++ extension is not built: python setup.py build_ext --inplace")

NEW = [p for p in PATTERNS if p != "gpt2"]
_FUZZ = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
_TRICKY = list("abcxyz ABC HTMLParser 'sStTdDmMlLrReEvV 0123456789 .,!?-_/ \t\n\r\x0b\x0c") + [
    "é", "ß", "ſ", "ǅ", "ʰ", "中", "文", "😀", "\u0301", "\u0308", "\u00a0", "\u2028", "\u3000", "Ⅻ", "١", "²",
    "ا", "ש", "\r\n", "'S", "'LL", "'ſ", "DON'T",
]
_TEXT = st.lists(st.one_of(st.sampled_from(_TRICKY), st.characters(exclude_categories=("Cs",))), max_size=60).map(
    "".join)

EDGE_CASES = [
    "", " ", "  ", "\n", "\n\n\n", " \t\n\r ", "\r\n", "x ", "x  ", "  x", "\n x", "hello   world", "hello \n world",
    "a\n\nb", "  \n  ", "a  \n  ", "a  \n  \n", "x.\n\ny", "foo!!\r\n\r\nbar", "x /\n/ y", "a/b//c", "it's IT'S It'S",
    "we'll we'LL WE'll", "you're YOU'RE", "I've I'VE I'm I'M he'd HE'D", "don't DON'T", "'s's's", "''s", "' s", "x'",
    "'", "'ſ x'ſ", "123", "1234567890123", " 42", "3.14159", "x2y3", "٣٤٥", "Ⅻ²", "😀", "👍🏽👍🏽", " 😀x", "中文字符",
    "日本語のテキスト", "e\u0301", "cafe\u0301 ", "\u0301abc", "a\u0301\u0301B", "\u0915\u094d\u0937", "שלום עולם",
    "مرحبا بالعالم", "a\x00b", "\u00a0\u00a0x", "x\u2028y", "\u3000x", "HTMLParser", "helloWorld", "ABCdef GHI",
    "ǅungla ǅ", "ʰello aʰb", "XMLHttpRequest's", "NASA'S", " ,.;:!?", "...\n", "#include <stdio.h>\n",
    "def f(x):\n    return x  # comment\n\n", "Ärger über Öl, naïve café, Æsir", "l'été, aujourd'hui, qu'il",
]


def _corpus() -> str:
    """Prose, Python source and other scripts: the stdlib's first files, Shakespeare's start, a multilingual tail."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    code = "".join(p.read_text(encoding="utf-8") for p in sorted(lib.glob("[a-c]*.py"))[:12])
    from _gpt2 import shakespeare_text

    other = ("Ärger über Öl, naïve café, Æsir. L'été, aujourd'hui, qu'il vient. Я люблю читать книги. "
             "中文文本测试，包括标点。日本語のテキストです。مرحبا بالعالم. HTMLParser XMLHttpRequest DON'T "
             "WE'LL 1234567 3.14159 e\u0301te\u0301 👍🏽 ſ'ſ\r\n\r\n  \t tabs\n") * 20
    return code[:200_000] + shakespeare_text()[:200_000] + other


@functools.cache
def _trained(pattern: str, tmp: str) -> tuple[dict, list]:
    path = Path(tmp) / f"corpus-{pattern}.txt"
    path.write_text(_corpus(), encoding="utf-8")
    return train_bpe(path, 1500, [], pattern=pattern)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("pretokenizers"))
    return lambda pattern: _trained(pattern, tmp)


def _first_difference(got: list, want: list) -> str:
    i = next((k for k, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
    return f"first difference at {i}: got {got[i:i + 5]!r}, want {want[i:i + 5]!r} (lengths {len(got)}, {len(want)})"


def _tiktoken(pattern: str, vocab: dict):
    tiktoken = pytest.importorskip("tiktoken")
    return tiktoken.Encoding(name=f"lmfast-{pattern}", pat_str=SOURCE[pattern],
                             mergeable_ranks={b: i for i, b in vocab.items()}, special_tokens={})


# ----------------------------------------------------------------------------------------------------------------
# The split alone, against `regex`


def test_fine_classes_match_regex_for_every_code_point():
    text = "".join(map(chr, range(0x110000)))
    want = bytearray(0x110000)
    for cls, pattern in ((1, r"[\p{Lu}\p{Lt}]"), (2, r"\p{Ll}"), (3, r"[\p{Lm}\p{Lo}]"), (4, r"\p{M}"), (5, r"\p{N}"),
                         (6, r"\s")):
        for m in regex.finditer(pattern, text):
            want[m.start()] = cls
    got = bytes(map(_bpe.fine_class, range(0x110000)))
    if got != bytes(want):
        cp = next(i for i in range(0x110000) if got[i] != want[i])
        pytest.fail(f"U+{cp:04X}: fine_class says {got[cp]}, regex says {want[cp]}")


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("text", EDGE_CASES)
def test_pretokenize_matches_regex_on_edge_cases(pattern, text):
    assert _bpe.pretokenize(text, pattern) == regex.findall(REGEX[pattern], text)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_pretokenize_matches_regex_under_fuzzing(pattern):
    split = regex.compile(REGEX[pattern])

    @_FUZZ
    @given(text=_TEXT)
    def check(text):
        assert _bpe.pretokenize(text, pattern) == split.findall(text)

    check()


@pytest.mark.parametrize("pattern", PATTERNS)
def test_pretokenize_matches_regex_on_the_corpus(pattern):
    text = _corpus()
    got, want = _bpe.pretokenize(text, pattern), regex.findall(REGEX[pattern], text)
    assert got == want, _first_difference(got, want)


def test_an_unknown_pattern_is_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match="'gpt4'.*'gpt2', 'cl100k', 'llama3', 'qwen2', 'o200k'"):
        _bpe.pretokenize("x", "gpt4")
    with pytest.raises(ValueError, match="pattern='gpt4'"):
        Tokenizer({i: bytes([i]) for i in range(256)}, [], pattern="gpt4")


def test_the_regex_strings_of_tokenizer_json_files_name_their_pattern():
    llama3 = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
              r"""\s*[\r\n]+|\s+(?!\S)|\s+""")  # as Meta's tokenizer.json has it
    assert pattern_of_regex(llama3) == "llama3"
    assert pattern_of_regex(llama3.replace(r"\p{N}{1,3}", r"\p{N}")) == "qwen2"
    assert pattern_of_regex(r"\w+|[^\w\s]+") is None


# ----------------------------------------------------------------------------------------------------------------
# Whole encodes, against tiktoken with the same pattern and ranks


@pytest.mark.parametrize("pattern", PATTERNS)
def test_encode_matches_tiktoken_on_the_corpus_with_ranks_lmfast_trained(trained, pattern):
    vocab, merges = trained(pattern)
    tok = Tokenizer(vocab, merges, pattern=pattern, ignore_merges=True)
    text = _corpus()
    got, want = tok.encode_ordinary(text), _tiktoken(pattern, vocab).encode_ordinary(text)
    assert got == want, _first_difference(got, want)


@pytest.mark.parametrize("pattern", NEW)
def test_encode_matches_tiktoken_and_the_reference_under_fuzzing(trained, pattern):
    vocab, merges = trained(pattern)
    tok = Tokenizer(vocab, merges, pattern=pattern, ignore_merges=True)
    ref = ReferenceEngine(vocab, merges, {}, pattern, True)
    enc = _tiktoken(pattern, vocab)

    @_FUZZ
    @given(text=_TEXT)
    def check(text):
        want = enc.encode_ordinary(text)
        assert tok.encode_ordinary(text) == want
        assert ref.encode_ordinary(text) == want

    check()


@pytest.mark.parametrize("pattern", NEW)
def test_chunked_encodes_equal_the_whole_for_every_pattern(trained, pattern, tmp_path):
    vocab, merges = trained(pattern)
    tok = Tokenizer(vocab, merges, ["<|endoftext|>"], pattern=pattern)
    text = (_corpus() + "<|endoftext|>") * 3
    want = tok.encode(text)
    engine = tok._engine
    for chunk in (64, 1000, 1 << 16):
        got = engine.encode_to_numpy(text, {"<|endoftext|>"}, -1, 2, 2, chunk)
        assert got.tolist() == want, f"encode_to_numpy with {chunk}-byte chunks"
    path = tmp_path / "text.txt"
    path.write_text(text, encoding="utf-8")
    out = tok.encode_file(path, tmp_path / "ids.npy", num_threads=2, progress=False)
    assert np.load(out).tolist() == want
    assert list(tok.encode_iterable(iter(text.splitlines(keepends=True)))) == want


@pytest.mark.parametrize("tail", ["a" * 3000, "1" * 3000, "é" * 1500, "!" * 3000, "<|endoftext|>" * 300])
def test_encode_file_encodes_a_long_tail_without_safe_cuts_whole(trained, tail, tmp_path):
    vocab, merges = trained("llama3")
    tok = Tokenizer(vocab, merges, ["<|endoftext|>"], pattern="llama3")
    text = "some words, then a run with no cut point: " * 40 + tail
    path = tmp_path / "tail.txt"
    path.write_text(text, encoding="utf-8")
    with open(tmp_path / "ids.bin", "wb") as f:
        n = tok._engine.encode_file(path, f.fileno(), {"<|endoftext|>"}, 2, 2, None, 64)
    assert np.fromfile(tmp_path / "ids.bin", dtype=np.uint16).tolist() == tok.encode(text)
    assert n == len(tok.encode(text))


@pytest.mark.parametrize("pattern", NEW)
@given(text=_TEXT)
@_FUZZ
def test_streaming_cut_points_of_the_newer_patterns_split_text_into_parts_that_split_like_the_whole(pattern, text):
    p = _streaming._cut_point(text, [], pattern)
    if p < 0:
        return
    split = regex.compile(REGEX[pattern])
    assert split.findall(text[:p]) + split.findall(text[p:]) == split.findall(text)


# ----------------------------------------------------------------------------------------------------------------
# Training with the pattern


@pytest.mark.parametrize("pattern", NEW)
def test_training_splits_with_the_chosen_pattern_like_the_reference(pattern, tmp_path):
    path = tmp_path / "small.txt"
    path.write_text(_corpus()[-30_000:] + "x.\n\n" * 50 + "1234567 " * 40, encoding="utf-8")
    native = train_bpe(path, 600, ["<|endoftext|>"], pattern=pattern)
    assert native == train_bpe_reference(path, 600, ["<|endoftext|>"], pattern=pattern)
    assert native != train_bpe(path, 600, ["<|endoftext|>"], pattern="gpt2")


# ----------------------------------------------------------------------------------------------------------------
# The tokenizer.json of a Llama-3-style model


_LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]


def _llama3_style_folder(trained, tmp_path) -> tuple[Path, dict]:
    """A tokenizer.json laid out as Llama-3's, written by the `tokenizers` library itself: BPE with ignore_merges,
    Split on Llama-3's regex then ByteLevel without a regex, added special tokens after the vocab, a BOS template."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors

    from lmfast.tokenizer.gpt2_files import _to_str

    vocab, merges = trained("llama3")
    model = models.BPE({_to_str(b): i for i, b in vocab.items()}, [(_to_str(a), _to_str(b)) for a, b in merges],
                       ignore_merges=True)
    tok = tokenizers.Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SOURCE["llama3"]), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in _LLAMA3_SPECIALS])
    bos = tok.token_to_id(_LLAMA3_SPECIALS[0])
    tok.post_processor = processors.TemplateProcessing(single=f"{_LLAMA3_SPECIALS[0]} $A", pair="$A $B",
                                                       special_tokens=[(_LLAMA3_SPECIALS[0], bos)])
    folder = tmp_path / "llama3-style"
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    return folder, vocab


def test_a_llama3_style_tokenizer_json_loads_and_encodes_like_tiktoken_and_tokenizers(trained, tmp_path):
    import tokenizers

    folder, vocab = _llama3_style_folder(trained, tmp_path)
    tok = Tokenizer.load(folder)
    assert (tok.pattern, tok.ignore_merges) == ("llama3", True)
    assert list(tok.special_tokens) == _LLAMA3_SPECIALS
    hf = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    text = _corpus()[:60_000] + "<|eot_id|>  trailing \n  "
    enc = _tiktoken("llama3", vocab)
    specials = {s: i for s, i in tok.special_tokens.items()}
    enc = type(enc)(name="llama3-specials", pat_str=SOURCE["llama3"], mergeable_ranks=enc._mergeable_ranks,
                    special_tokens=specials)
    want = enc.encode(text, allowed_special="all")
    assert tok.encode(text) == want
    assert hf.encode(text, add_special_tokens=False).ids == want
    assert tok.encode_to_numpy(text).tolist() == want


def test_a_llama3_style_tokenizer_round_trips_through_export(trained, tmp_path):
    import json

    import tokenizers

    from lmfast.tokenizer.hf_json import tokenizer_json

    folder, _ = _llama3_style_folder(trained, tmp_path)
    tok = Tokenizer.load(folder)
    written = tokenizer_json(tok)
    back_dir = tmp_path / "exported"
    back_dir.mkdir()
    (back_dir / "tokenizer.json").write_text(written, encoding="utf-8")
    back = Tokenizer.load(back_dir)
    assert (back.vocab, back.merges, back.special_tokens) == (tok.vocab, tok.merges, tok.special_tokens)
    assert (back.pattern, back.ignore_merges) == ("llama3", True)
    doc = json.loads(written)
    assert doc["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] == SOURCE["llama3"]
    text = _corpus()[-20_000:] + "<|end_of_text|>"
    hf = tokenizers.Tokenizer.from_str(written)
    assert back.encode(text) == tok.encode(text) == hf.encode(text, add_special_tokens=False).ids


@pytest.mark.parametrize("pattern", NEW)
def test_every_pattern_exports_a_tokenizer_json_that_tokenizers_encodes_the_same(trained, pattern):
    tokenizers = pytest.importorskip("tokenizers")

    from lmfast.tokenizer.hf_json import tokenizer_json

    vocab, merges = trained(pattern)
    tok = Tokenizer(vocab, merges, ["<|endoftext|>"], pattern=pattern, ignore_merges=True)
    hf = tokenizers.Tokenizer.from_str(tokenizer_json(tok))
    text = _corpus()[-30_000:] + "<|endoftext|>x \n\n  "
    assert hf.encode(text, add_special_tokens=False).ids == tok.encode(text)


def test_save_and_load_keep_the_pattern(trained, tmp_path):
    vocab, merges = trained("o200k")
    tok = Tokenizer(vocab, merges, ["<|endoftext|>"], pattern="o200k", ignore_merges=True)
    back = Tokenizer.load(tok.save(tmp_path / "saved"))
    assert (back.pattern, back.ignore_merges) == ("o200k", True)
    assert back.encode(_corpus()[-5000:]) == tok.encode(_corpus()[-5000:])
