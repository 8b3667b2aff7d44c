"""Constant memory: encode_iterable and encode_file never hold their input whole.

Each check runs in a child process (so the limit and the peak RSS are its own) over a file made by repeating
a slice of the default corpus, and compares the ids with the periodic answer computed from the slice.
"""

import subprocess
import sys
import textwrap

import pytest

from lmfast.tokenizer import native_available

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform != "linux", reason="uses /proc and RLIMIT_AS")]

_CHILD_SETUP = """
import resource, sys
import numpy as np
from lmfast.data.corpus import shakespeare
from lmfast.tokenizer import Tokenizer, train_bpe

train, _ = shakespeare()
unit = train.read_text(encoding="utf-8")[:200_000]
unit = unit[: unit.rindex("\\n") + 1]  # the slice ends on a newline, so the periodic answer below holds
sample = sys.argv[1] + "/sample.txt"
open(sample, "w", encoding="utf-8").write(unit)
vocab, merges = train_bpe(sample, 512, ["<|endoftext|>"])
tok = Tokenizer(vocab, merges, ["<|endoftext|>"])
one, two = tok.encode(unit), tok.encode(unit * 2)
head = two[: len(two) - len(one)]  # every unit but the last encodes as `head`, the last as `period`
period = two[len(head):]
repeats = int(sys.argv[2])
big = sys.argv[1] + "/big.txt"
with open(big, "w", encoding="utf-8") as f:
    for _ in range(repeats):
        f.write(unit)
expected_count = len(head) * (repeats - 1) + len(period)
expected_sum = sum(head) * (repeats - 1) + sum(period)
"""


def _run_child(tmp_path, body: str, repeats: int) -> str:
    code = textwrap.dedent(_CHILD_SETUP) + textwrap.dedent(body)
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path), str(repeats)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_encode_iterable_streams_a_file_several_times_larger_than_the_address_space_limit(tmp_path):
    # 200 kB x 800 = 160 MB of text under an address-space limit of (what the process maps now) + 48 MB.
    out = _run_child(tmp_path, """
        vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + (48 << 20), resource.RLIM_INFINITY))
        count = total = 0
        with open(big, encoding="utf-8") as f:
            for i in tok.encode_iterable(f):
                count += 1
                total += i
        assert (count, total) == (expected_count, expected_sum), (count, total, expected_count, expected_sum)
        print(repeats * len(unit.encode()) // (48 << 20))
        """, repeats=800)
    assert int(out.split()[-1]) >= 3  # the file really is several times the headroom


@pytest.mark.skipif(not native_available(), reason="the multi-threaded file encoder is the C++ engine's")
def test_encode_file_peak_memory_stays_under_200_mb_on_a_file_over_100_mb(tmp_path):
    # 200 kB x 600 = 120 MB; the encoding runs in a process of its own, so its peak RSS is the encoder's.
    _run_child(tmp_path, """
        tok.save(sys.argv[1] + "/tok")
        open(sys.argv[1] + "/expected.txt", "w").write(f"{expected_count} {expected_sum}")
        """, repeats=600)
    encode = textwrap.dedent("""
        import sys
        import numpy as np
        from lmfast.tokenizer import Tokenizer

        d = sys.argv[1]
        Tokenizer.load(d + "/tok").encode_file(d + "/big.txt", d + "/big.npy", num_threads=2, progress=False)
        # VmHWM, not ru_maxrss: the latter carries over the parent's peak through fork + exec. Read before the
        # output is mapped below, whose pages would count too.
        peak = int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1])
        ids = np.load(d + "/big.npy", mmap_mode="r")
        print(len(ids), int(ids.sum(dtype=np.int64)), peak)
        """)
    proc = subprocess.run([sys.executable, "-c", encode, str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    count, total, peak_kib = map(int, proc.stdout.split())
    assert (tmp_path / "big.txt").stat().st_size > 100 << 20
    assert f"{count} {total}" == (tmp_path / "expected.txt").read_text()
    assert peak_kib < 200 * 1024, f"encode_file peak RSS {peak_kib / 1024:.0f} MiB"


@pytest.mark.skipif(not native_available(), reason="the piece caches are the C++ engine's")
def test_a_fresh_engine_reuses_the_cache_pages_of_a_destroyed_one(tmp_path):
    # Tokenizers built and dropped one after another, as a notebook or the benchmark's cold rounds do. The cache a
    # thread kept for a dead engine used to stay until four newer engines pushed it out, so each new engine faulted
    # in a fresh table (2 MiB here: 512 pages with THP off, as below, so the count does not depend on the host).
    out = _run_child(tmp_path, """
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE: faults count 4 KiB pages
        text = unit * 20
        faults = []
        for _ in range(8):
            fresh = Tokenizer(vocab, merges, ["<|endoftext|>"])
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            ids = fresh.encode_to_numpy(text, num_threads=1)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
            assert len(ids) == len(head) * 19 + len(period)
            del fresh, ids
        print(*faults)
        """, repeats=1)
    faults = [int(f) for f in out.split()]
    assert faults[0] > 1024, f"the first engine's table should be fresh pages; faults per call: {faults}"
    assert max(faults[2:]) < 256, f"page faults per call of a fresh engine after the first two: {faults}"
