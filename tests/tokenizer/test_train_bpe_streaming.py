"""The C++ trainer reads its file in blocks: the counts, hence the vocab and merges, must be the whole file's.

Tiny blocks (the binding's test-only ``block_size``, in bytes) put block ends inside multi-byte characters,
special tokens and long pre-tokens; the pure-Python reference trainer, which reads the whole text, is the oracle.
"""

import subprocess
import sys
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmfast.tokenizer import native_available, train_bpe
from lmfast.tokenizer.reference import train_bpe_reference

pytestmark = pytest.mark.skipif(not native_available(), reason="block-streamed training is the C++ trainer's")

if native_available():
    from lmfast.tokenizer import _bpe

EOT = "<|endoftext|>"
MIXED = ("The quick brown fox's 12 jumps, über 3.5 Zäune!\n  naïve café 日本語のテキスト 😀😀 ок\n"
         f"{EOT}def f(x):\n    return x**2  # 🙂\n\n{EOT}{EOT}aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa "
         "Straße straße STRASSE 1234567 ...!!! \t\t\n")


def _write(tmp_path, data, name="corpus.txt"):
    path = tmp_path / name
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def _streamed(path, vocab_size, specials, block_size, num_workers=2):
    vocab, merges = _bpe.train_bpe(path, vocab_size, specials, num_workers, block_size=block_size)
    return {int(i): bytes(b) for i, b in vocab.items()}, [(bytes(a), bytes(b)) for a, b in merges]


def _assert_same(got, want):
    (gv, gm), (wv, wm) = got, want
    first = next((i for i, (g, w) in enumerate(zip(gm, wm, strict=False)) if g != w), min(len(gm), len(wm)))
    assert gm == wm, f"merges differ first at {first}: got {gm[first:first + 3]}, want {wm[first:first + 3]}"
    assert gv == wv


@pytest.mark.parametrize("block_size", [1, 2, 3, 5, 7, 13, 64, 4096, 0])
@pytest.mark.parametrize("num_workers", [1, 2])
def test_streamed_training_equals_the_whole_text_reference_for_any_block_size(tmp_path, block_size, num_workers):
    path = _write(tmp_path, MIXED * 7)
    want = train_bpe_reference(path, 420, [EOT])
    _assert_same(_streamed(path, 420, [EOT], block_size, num_workers), want)


@pytest.mark.parametrize("char", ["é", "日", "😀"])
def test_a_block_ending_inside_a_multibyte_character_counts_it_whole(tmp_path, char):
    n = len(char.encode())
    for cut in range(1, n):  # the first block ends `cut` bytes into the character
        path = _write(tmp_path, "ab " * 3 + char * 3 + " x" + char + " " + char + "yz" * 4, f"c{cut}.txt")
        block = 9 + cut
        _assert_same(_streamed(path, 300, [], block), train_bpe_reference(path, 300, []))


def test_a_block_ending_inside_a_special_token_splits_the_text_there_as_the_whole_file_does(tmp_path):
    text = "low lower" + EOT + "lowest newer" + EOT + "low" * 5
    for block in range(len("low lower") + 1, len("low lower") + len(EOT)):
        path = _write(tmp_path, text, f"s{block}.txt")
        _assert_same(_streamed(path, 280, [EOT], block), train_bpe_reference(path, 280, [EOT]))


def test_overlapping_special_tokens_across_a_block_end_match_leftmost_then_longest(tmp_path):
    # "<|a|><|b|>" is one special and "|><|" another: leftmost wins, so the text holds "<|a|><|b|>" whole.
    specials = ["<|a|><|b|>", "|><|", "<|a|>"]
    text = "x <|a|><|b|> y |><| z <|a|> w <|a|><|b" * 3
    for block in range(1, 24):
        path = _write(tmp_path, text, f"o{block}.txt")
        _assert_same(_streamed(path, 300, specials, block), train_bpe_reference(path, 300, specials))


def test_a_long_pre_token_longer_than_many_blocks_counts_once(tmp_path):
    # 3,000 letters without a cut point: the reader keeps doubling its buffer until the word ends.
    text = ("q" * 1000 + "rs" * 1000 + " tail words here\n") * 2
    path = _write(tmp_path, text)
    for block in (1, 7, 100):
        _assert_same(_streamed(path, 300, [], block), train_bpe_reference(path, 300, []))


@settings(max_examples=60, deadline=None)
@given(parts=st.lists(st.sampled_from(["a", "b", " ", "\n", "1", "'", "é", "日", "😀", "<|x|>", "<|", "|>", "\u0301",
                                        ".", "\t"]), max_size=120),
       block=st.integers(1, 40))
def test_streamed_training_equals_the_reference_under_fuzzing(tmp_path_factory, parts, block):
    path = _write(tmp_path_factory.mktemp("fuzz"), "".join(parts))
    _assert_same(_streamed(path, 290, ["<|x|>"], block), train_bpe_reference(path, 290, ["<|x|>"]))


def test_invalid_utf8_in_a_later_block_names_its_offset_in_the_file(tmp_path):
    path = _write(tmp_path, b"valid text " * 500 + b"caf\xe9 au lait")
    with pytest.raises(ValueError, match=r"corpus\.txt.*byte 0xe9 at byte offset 5503\b"):
        _bpe.train_bpe(path, 300, [], 2, block_size=64)


@pytest.mark.parametrize("block", [1, 2, 3, 64])
def test_a_multibyte_character_cut_short_by_the_end_of_the_file_is_invalid_utf8(tmp_path, block):
    path = _write(tmp_path, "日本".encode() + "日".encode()[:2])
    with pytest.raises(ValueError, match=r"byte 0xe6 at byte offset 6\b"):
        _bpe.train_bpe(path, 300, [], 1, block_size=block)


def test_progress_counts_bytes_to_the_file_size_then_merges_to_the_number_wanted(tmp_path):
    path = _write(tmp_path, MIXED * 50)
    calls = []
    _, merges = _bpe.train_bpe(path, 350, [EOT], 2, lambda *call: calls.append(call), block_size=256)
    counting = [c for c in calls if c[0] == "count"]
    merging = [c for c in calls if c[0] == "merge"]
    size = path.stat().st_size
    assert calls[:len(counting)] == counting, "every counting report comes before the first merge report"
    assert counting[0] == ("count", 0, size) and counting[-1] == ("count", size, size)
    assert [c[1] for c in counting] == sorted(c[1] for c in counting)
    assert len(merges) == 350 - 257
    assert merging[0] == ("merge", 0, len(merges)) and merging[-1] == ("merge", len(merges), len(merges))


def test_an_exception_from_progress_stops_counting_before_the_file_is_read(tmp_path):
    # The first report sleeps past the 100 ms cadence, so the next comes after the first block: one thread reads,
    # and the callback raises there, as Ctrl-C does through the bindings' PyErr_CheckSignals.
    import time

    path = _write(tmp_path, MIXED * 200)
    size = path.stat().st_size
    calls = []

    def report(stage, done, total):
        calls.append((stage, done))
        if done == 0:
            time.sleep(0.15)
        elif stage == "count":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _bpe.train_bpe(path, 300, [EOT], 1, report, block_size=512)
    assert [s for s, _ in calls] == ["count", "count"], calls
    assert 0 < calls[-1][1] < size / 10, "counting went on after the report that raised"


def test_train_bpe_progress_shows_a_bytes_bar_while_counting_then_the_merge_bar(tmp_path, capsys):
    path = _write(tmp_path, MIXED * 20, "bars.txt")
    train_bpe(path, 300, [EOT], backend="native", progress=True)
    err = capsys.readouterr().err
    assert "counting pre-tokens in bars.txt" in err and "BPE merges on bars.txt" in err
    assert err.index("counting pre-tokens") < err.index("BPE merges")


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="reads VmHWM from /proc")
def test_training_on_a_120_mb_file_keeps_its_resident_memory_far_below_the_file(tmp_path):
    # The whole-file memory map this replaced made its page cache part of the process: peak RSS grew by the file.
    code = textwrap.dedent("""
        import sys
        from lmfast.tokenizer import train_bpe

        def hwm():
            return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) // 1024

        path = sys.argv[1] + "/big.txt"
        unit = "".join(f"word{i % 5000} {i} text, more text; <|endoftext|>\\n" for i in range(4000))
        with open(path, "w", encoding="utf-8") as f:
            while f.tell() < 120 << 20:
                f.write(unit)
        before = hwm()
        train_bpe(path, 512, ["<|endoftext|>"], num_workers=2)
        print(before, hwm())
        """)
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    before, after = map(int, proc.stdout.split())
    assert after - before < 48, f"peak RSS grew by {after - before} MiB training on 120 MB"
