"""Streaming text for the tokenizer: safe cut points, regrouping a stream into chunks, reading a file, .npy headers.

A text cut at a safe point encodes, part by part, to exactly the ids of the whole text; this is what lets
``Tokenizer.encode_iterable`` and ``Tokenizer.encode_file`` work in constant memory and over threads.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from lmfast.tokenizer.patterns import safe_cut_regex

_FILE_READ_BYTES = 1 << 20


# ----------------------------------------------------------------------------------------------------------------
# Safe cuts for streaming: where a text can be split so that encoding the parts gives the ids of the whole


def _cut_point(buf: str, specials: Sequence[str], pattern: str = "gpt2") -> int:
    """Rightmost index p > 0 where ``encode(buf[:p]) + encode(buf[p:]) == encode(buf)`` provably holds, or -1.

    p sits where the GPT-2 pattern always ends a pre-token: between a non-whitespace and a whitespace character
    (only whitespace pre-tokens hold whitespace after their first character, and they start at whitespace), or
    right after the last letter of a letter run or the last digit of a number run (``' ?\\p{L}+'`` and
    ``' ?\\p{N}+'`` stop there, and the contractions ``'s|'t|...`` end in letters, so none reaches past p).
    Neither side depends on the other: the pattern has no lookbehind, and its one lookahead ``(?!\\S)`` sees the
    same non-whitespace character at the end of the left part. No special token may cover p, and p stays far
    enough from the end of ``buf`` that a special token starting before it is fully visible. The letter and digit
    cuts keep text without whitespace (base64, a line with its spaces stripped) streaming in bounded chunks.

    The newer patterns (``cl100k``, ``llama3``, ``qwen2``, ``o200k``; see ``lmfast.tokenizer.patterns``) let a
    punctuation run take the newlines after it and o200k attach a contraction to its word, so for them p sits before
    whitespace that is not a newline, or after a letter followed by neither a letter, a mark nor an apostrophe, or
    after a digit run.
    """
    cut = safe_cut_regex(pattern)
    longest = max((len(s) for s in specials), default=1)
    end = len(buf) - longest + 1  # the match "\S\s" ends at p + 1 <= end
    while end >= 2:
        m = cut.search(buf, 0, end)
        if m is None:
            return -1
        p = m.start() + 1
        if not any(buf.find(s, max(0, p - len(s) + 1), p + len(s) - 1) >= 0 for s in specials if len(s) > 1):
            return p
        end = p
    return -1


def _safe_chunks(pieces: Iterable[str], chunk_chars: int, specials: Sequence[str], pattern: str = "gpt2"
                 ) -> Iterator[str]:
    """Regroup a stream of strings into chunks of about ``chunk_chars`` cut only at safe points (see _cut_point).

    Memory stays near ``2 * chunk_chars`` unless the text has no safe point for longer than that (a huge run with
    no whitespace); then the run is held until one comes. The buffer is re-joined and searched only after it has
    doubled, so such a run costs linear time, not quadratic.
    """
    parts: list[str] = []
    size, want = 0, chunk_chars
    for piece in pieces:
        if not isinstance(piece, str):
            raise TypeError(f"expected an iterable of str, got an item of type {type(piece).__name__}")
        parts.append(piece)
        size += len(piece)
        if size < want:
            continue
        buf = "".join(parts)
        p = _cut_point(buf, specials, pattern)
        if p < 0:
            parts, want = [buf], 2 * size  # no cut yet: look again once the buffer has doubled
            continue
        yield buf[:p]
        parts, size = [buf[p:]], len(buf) - p
        want = max(chunk_chars, 2 * size)
    tail = "".join(parts)
    if tail:
        yield tail


def _read_text_pieces(path: Path, progress) -> Iterator[str]:
    """Decode a file as strict UTF-8 in blocks; a bad byte raises ValueError naming the file and byte offset."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(_FILE_READ_BYTES)
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(block, final=not block)
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}: not valid UTF-8 at byte offset {offset - pending + e.start} ({e.reason}); "
                                 "re-encode the file as UTF-8") from None
            offset += len(block)
            progress.update(len(block))
            if text:
                yield text
            if not block:
                return


def _write_npy_header(f, dtype: np.dtype, n: int, size: int = 128) -> None:
    """Write a fixed-size .npy v1.0 header, so it can be rewritten in place once the length is known."""
    header = f"{{'descr': {dtype.str!r}, 'fortran_order': False, 'shape': ({n},), }}"
    f.write(np.lib.format.magic(1, 0))
    f.write((size - 10).to_bytes(2, "little"))
    f.write((header.ljust(size - 10 - 1) + "\n").encode("latin1"))

