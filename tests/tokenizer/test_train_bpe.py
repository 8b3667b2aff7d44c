"""BPE training (CS336 semantics) against hand-worked examples and an independent brute-force trainer.

Runs once per available backend: the pure-Python reference always, the C++ ``lmfast.tokenizer._bpe.train_bpe`` once
built.
"""

import os
import tempfile
from collections import Counter

import pytest
import regex
from _gpt2 import GPT2_PAT, shakespeare_text
from hypothesis import given, settings
from hypothesis import strategies as st

from lmfast.tokenizer import Tokenizer, native_available, train_bpe
from lmfast.tokenizer.reference import train_bpe_reference

BACKENDS = ["python"] + (["native"] if native_available() else [])
EOT = "<|endoftext|>"
CS336_EXAMPLE = "low low low low low lower lower widest widest widest newest newest newest newest newest newest"


def write(tmp_path, text: str, name: str = "corpus.txt"):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


def brute_force_train(text: str, vocab_size: int, special_tokens: list[str]):
    """CS336 BPE the slow, obvious way: re-split every word and recount every pair from scratch at each step."""
    pieces = regex.split("|".join(regex.escape(s) for s in sorted(special_tokens, key=len, reverse=True)), text) \
        if special_tokens else [text]
    words = Counter(tuple(bytes([b]) for b in m.encode("utf-8")) for p in pieces for m in regex.findall(GPT2_PAT, p))
    vocab = {i: s.encode("utf-8") for i, s in enumerate(special_tokens)}
    vocab.update({len(special_tokens) + b: bytes([b]) for b in range(256)})
    merges = []
    while len(vocab) < vocab_size:
        pairs = Counter()
        for word, n in words.items():
            for pair in zip(word, word[1:], strict=False):
                pairs[pair] += n
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        vocab[len(vocab)] = best[0] + best[1]
        new_words = Counter()
        for word, n in words.items():
            out, i = [], 0
            while i < len(word):
                if word[i:i + 2] == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            new_words[tuple(out)] += n
        words = new_words
    return vocab, merges


@pytest.mark.parametrize("backend", BACKENDS)
def test_vocab_is_special_tokens_then_256_bytes_then_one_id_per_merge(tmp_path, backend):
    specials = [EOT, "<pad>"]
    vocab, merges = train_bpe(write(tmp_path, CS336_EXAMPLE), 300, specials, backend=backend)
    assert [vocab[0], vocab[1]] == [s.encode() for s in specials]
    assert [vocab[2 + b] for b in range(256)] == [bytes([b]) for b in range(256)]
    assert len(merges) > 0 and len(vocab) == 258 + len(merges)
    assert [vocab[258 + k] for k in range(len(merges))] == [a + b for a, b in merges]


@pytest.mark.parametrize("backend", BACKENDS)
def test_cs336_example_merges_in_the_handout_order(tmp_path, backend):
    _, merges = train_bpe(write(tmp_path, CS336_EXAMPLE), 257 + 6, [EOT], backend=backend)
    assert merges == [(b"s", b"t"), (b"e", b"st"), (b"o", b"w"), (b"l", b"ow"), (b"w", b"est"), (b"n", b"e")]


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_go_to_the_lexicographically_greater_pair(tmp_path, backend):
    # every pair occurs once, so the order is decided by the tie-break alone: greater (bytes, bytes) first
    _, merges = train_bpe(write(tmp_path, "ab\ncd\nzy\nza"), 256 + 4, [], backend=backend)
    assert merges == [(b"z", b"y"), (b"z", b"a"), (b"c", b"d"), (b"a", b"b")]


@pytest.mark.parametrize("backend", BACKENDS)
def test_frequency_beats_order_and_merges_stop_when_no_pairs_remain(tmp_path, backend):
    vocab, merges = train_bpe(write(tmp_path, "ab ab ab zz"), 1000, [], backend=backend)
    assert merges[0] == (b"a", b"b")
    assert len(vocab) == 256 + len(merges) < 1000


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_merge_crosses_a_special_token(tmp_path, backend):
    vocab, merges = train_bpe(write(tmp_path, ("ab" + EOT) * 100 + "cd"), 1000, [EOT], backend=backend)
    assert merges == [(b"a", b"b"), (b"c", b"d")]
    assert len(vocab) == 1 + 256 + 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_vocab_size_too_small_raises_value_error(tmp_path, backend):
    path = write(tmp_path, CS336_EXAMPLE)
    with pytest.raises(ValueError, match="vocab_size=256 is too small.*257"):
        train_bpe(path, 256, [EOT], backend=backend)
    vocab, merges = train_bpe(path, 257, [EOT], backend=backend)
    assert (len(vocab), merges) == (257, [])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kwargs, message", [
    (dict(special_tokens="<|a|>"), r"special_tokens must be a list of strings, got the single str '<\|a\|>'"),
    (dict(vocab_size=2**31 + 1), "vocab_size=2147483649 is too large"),
    (dict(num_workers=10**30), "num_workers=1000000000000000000000000000000: must be None"),
])
def test_bad_training_arguments_are_refused_before_any_work(tmp_path, backend, kwargs, message):
    args = dict(vocab_size=300, special_tokens=[EOT]) | kwargs
    with pytest.raises(ValueError, match=message):
        train_bpe(write(tmp_path, CS336_EXAMPLE), backend=backend, **args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_utf8_input_names_the_file_and_byte_offset(tmp_path, backend):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"caf\xe9 au lait")
    with pytest.raises(ValueError, match="latin1.txt.*byte offset 3"):
        train_bpe(path, 300, [], backend=backend)


def test_missing_input_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        train_bpe(tmp_path / "missing.txt", 300, [])


TEXT_ALPHABET = st.sampled_from(list("aabbbcde  \n\t'sltéé日😀0129") + [EOT, "<sep>", " the", "ll", "\r\n"])


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=40, deadline=None)
@given(pieces=st.lists(TEXT_ALPHABET, max_size=120), extra=st.integers(0, 40))
def test_trainer_equals_a_brute_force_trainer_on_small_random_corpora(backend, pieces, extra):
    text = "".join(pieces)
    specials = [EOT, "<sep>"]
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "corpus.txt")
        with open(path, "wb") as f:
            f.write(text.encode("utf-8"))
        got = train_bpe(path, 258 + extra, specials, backend=backend)
    assert got == brute_force_train(text, 258 + extra, specials)


def test_trained_tokenizer_round_trips_shakespeare(tmp_path):
    text = shakespeare_text()[:200_000]
    vocab, merges = train_bpe_reference(write(tmp_path, text), 600, [EOT])
    tok = Tokenizer(vocab, merges, [EOT], backend="python")
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode("utf-8")) / 2  # 340 merges on its own text at least halve the length


@pytest.mark.skipif(not native_available(), reason="the C++ engine lmfast.tokenizer._bpe is not built")
def test_native_trainer_equals_the_reference_on_a_shakespeare_slice(tmp_path):
    path = write(tmp_path, shakespeare_text()[:1_000_000])
    assert train_bpe(path, 3000, [EOT], backend="native") == train_bpe_reference(path, 3000, [EOT])
