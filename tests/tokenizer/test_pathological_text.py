"""Text without whitespace: BPE training stays near-linear and exact, and encode_file keeps its memory bounded.

Before, one multi-megabyte pre-token was rewritten at every merge (1 MB of random letters: 90 s of CPU for 1000
merges), and encode_file held a whitespace-free line whole with a Python int per id (a 50 MB base64 line peaked at
568 MiB with GPT-2's vocabulary).
"""

import base64
import string
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import regex
from _gpt2 import GPT2_PAT, gpt2_tiktoken, gpt2_vocab_merges
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmfast.tokenizer import Tokenizer, native_available, train_bpe
from lmfast.tokenizer import streaming as _streaming
from lmfast.tokenizer.reference import train_bpe_reference

EOT = "<|endoftext|>"
native_only = pytest.mark.skipif(not native_available(), reason="the C++ trainer and encoder are not built")


# ---------------------------------------------------------------------------------------------------------------
# Training


def _runs(alphabet: str) -> st.SearchStrategy[str]:
    """Words of 1-300 characters drawn from a tiny alphabet, so pairs repeat and many words pass 64 bytes."""
    return st.text(alphabet=alphabet, min_size=1, max_size=300)


@native_only
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(words=st.lists(st.one_of(_runs("ab"), _runs("aab"), _runs("xyz1"), _runs("é日")), min_size=1, max_size=6),
       sep=st.sampled_from(["", " ", "\n", EOT]), extra=st.integers(0, 120))
def test_the_native_trainer_equals_the_reference_on_long_pre_tokens(tmp_path, words, sep, extra):
    path = tmp_path / "long.txt"
    path.write_text(sep.join(words), encoding="utf-8")
    vocab_size = 257 + extra
    assert train_bpe(path, vocab_size, [EOT], backend="native") == train_bpe_reference(path, vocab_size, [EOT])


@native_only
def test_overlapping_pairs_in_a_long_word_merge_left_to_right(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("a" * 1001 + " " + "ab" * 300, encoding="utf-8")
    assert train_bpe(path, 270, [], backend="native") == train_bpe_reference(path, 270, [])


@native_only
def test_training_on_a_megabyte_without_whitespace_finishes(tmp_path):
    # 1 MB of random letters is one pre-token; 1000 merges took 90 s of CPU rewriting it, now under a second. The
    # subprocess and its generous timeout only keep a regression from hanging the suite.
    path = tmp_path / "letters.txt"
    rng = np.random.default_rng(0)
    path.write_text("".join(rng.choice(list(string.ascii_lowercase), 1_000_000)), encoding="utf-8")
    code = f"from lmfast.tokenizer import train_bpe; print(len(train_bpe({str(path)!r}, 1256, [])[1]))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["1000"]


@pytest.mark.parametrize("backend", ["python"] + (["native"] if native_available() else []))
def test_training_reports_progress_and_stops_when_the_callback_raises(tmp_path, backend, monkeypatch):
    path = tmp_path / "t.txt"
    path.write_text("low lower lowest newest widest " * 50, encoding="utf-8")
    calls = []
    monkeypatch.setattr("lmfast.tokenizer.tokenizer._train_bars", _recording_bar(calls))
    vocab, merges = train_bpe(path, 280, [EOT], backend=backend, progress=True)
    assert calls[0] == (0, 23) and calls[-1] == (len(merges), 23)
    stop = _recording_bar([], raise_at=0)
    monkeypatch.setattr("lmfast.tokenizer.tokenizer._train_bars", stop)
    with pytest.raises(KeyboardInterrupt):  # what Ctrl-C raises through the same callback
        train_bpe(path, 280, [EOT], backend=backend, progress=True)


def _recording_bar(calls, raise_at=None):
    import contextlib

    @contextlib.contextmanager
    def bar(enabled, name):
        def report(stage, done, total):
            if raise_at is not None and len(calls) == raise_at:
                raise KeyboardInterrupt
            if stage == "merge":
                calls.append((done, total))

        yield report

    return bar


# ---------------------------------------------------------------------------------------------------------------
# Streaming and encode_file


@pytest.fixture(scope="module")
def gpt2():
    vocab, merges = gpt2_vocab_merges()
    return Tokenizer(vocab, merges, [EOT])


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet="ab1'!é日 _\u0301\n", max_size=60))
def test_every_cut_point_splits_text_into_parts_that_encode_like_the_whole(text):
    p = _streaming._cut_point(text, [])
    if p < 0:
        return
    whole = regex.findall(GPT2_PAT, text)
    assert regex.findall(GPT2_PAT, text[:p]) + regex.findall(GPT2_PAT, text[p:]) == whole, p


def test_text_without_whitespace_has_cut_points_at_the_end_of_letter_and_digit_runs():
    assert _streaming._cut_point("abc123+/xyz==", []) == 11  # after "xyz"
    assert _streaming._cut_point("abc123", []) == 3  # after "abc"
    assert _streaming._cut_point("don't", []) == 3  # "don" | "'t"
    assert _streaming._cut_point("aaaa", []) == -1  # one letter run: no cut inside a pre-token
    assert _streaming._cut_point("!!'s", []) == -1  # "!!'" + "s": a cut after "!!" would make "'s" a contraction


def test_encode_iterable_over_base64_equals_encode_and_holds_little(gpt2):
    text = base64.b64encode(np.random.default_rng(1).bytes(600_000)).decode()
    pieces = [text[i:i + 1000] for i in range(0, len(text), 1000)]
    got = list(gpt2.encode_iterable(pieces))
    assert got == gpt2_tiktoken().encode_ordinary(text)


@native_only
@pytest.mark.slow
def test_encode_file_of_a_20_mb_line_without_whitespace_stays_near_normal_text_memory(gpt2, tmp_path):
    text = base64.b64encode(np.random.default_rng(2).bytes(15_000_000)).decode()  # 20 MB, one line
    (tmp_path / "line.txt").write_text(text, encoding="ascii")
    gpt2.save(tmp_path / "tok")
    code = textwrap.dedent(f"""
        from lmfast.tokenizer import Tokenizer
        tok = Tokenizer.load({str(tmp_path / "tok")!r})
        tok.encode_file({str(tmp_path / "line.txt")!r}, {str(tmp_path / "ids.npy")!r}, num_threads=2, progress=False)
        print(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1])
        """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak_mib = int(proc.stdout.split()[-1]) / 1024
    assert peak_mib < 200, f"encode_file peak RSS {peak_mib:.0f} MiB"  # it was ~300 MiB for this line
    assert np.load(tmp_path / "ids.npy").tolist() == gpt2.encode(text)
