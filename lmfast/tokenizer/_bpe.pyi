"""Typed stub of the C++ BPE core ``lmfast.tokenizer._bpe`` (csrc/bindings.cpp). The public API is
``lmfast.tokenizer``."""

import os
from collections.abc import Callable, Iterable

import numpy as np

CLASS_OTHER: int
CLASS_LETTER: int
CLASS_NUMBER: int
CLASS_SPACE: int

def char_class(codepoint: int) -> int:
    """Class of a code point as the GPT-2 pattern sees it: CLASS_LETTER (\\p{L}), CLASS_NUMBER (\\p{N}),
    CLASS_SPACE (\\s) or CLASS_OTHER. ValueError outside 0..0x10FFFF."""

PATTERNS: tuple[str, ...]  # "gpt2", "cl100k", "llama3", "qwen2", "o200k" (lmfast.tokenizer.patterns)

def fine_class(codepoint: int) -> int:
    """Fine class of a code point: 0 other, 1 upper (Lu, Lt), 2 lower (Ll), 3 other letter (Lm, Lo), 4 mark (M),
    5 number (N), 6 space (\\s). ValueError outside 0..0x10FFFF."""

def pretokenize(text: str, pattern: str = "gpt2") -> list[str]:
    """Split ``text`` with a pre-tokenizer pattern, exactly as ``regex.findall`` does with
    ``lmfast.tokenizer.patterns.REGEX[pattern]``. An unknown name raises ValueError listing the known ones.

    Lone surrogates become U+FFFD first, as in tiktoken."""

class Engine:
    """Byte-level BPE with a fixed vocabulary; the same interface as ``lmfast._bpe_reference.ReferenceEngine``.

    ``vocab``: id -> token bytes (all 256 single bytes required); ``merges``: pairs in priority order, each part
    and their concatenation in ``vocab``; ``special_tokens``: text -> id, each id in ``vocab``. ValueError on
    anything else. Thread-safe: one engine may encode from many threads at once.
    """

    def __init__(
        self, vocab: dict[int, bytes], merges: Iterable[tuple[bytes, bytes]], special_tokens: dict[str, int],
        pattern: str = "gpt2", ignore_merges: bool = False,
    ) -> None: ...
    def encode_ordinary(self, text: str) -> list[int]:
        """Pre-tokenize and BPE ``text``; special-token text is encoded as ordinary text. Releases the GIL."""
    def encode(self, text: str, allowed_special: Iterable[str]) -> list[int]:
        """Like ``encode_ordinary``, but occurrences of ``allowed_special`` become their ids (leftmost first, the
        longest at one position). An unknown name raises ValueError. Releases the GIL."""
    def encode_batch(self, texts: Iterable[str], allowed_special: Iterable[str], num_threads: int) -> list[list[int]]:
        """``encode`` of each text on ``num_threads`` (>= 1) native threads, results in input order."""
    def encode_batch_to_bytes(
        self, texts: Iterable[str], allowed_special: Iterable[str], num_threads: int, itemsize: int
    ) -> list[bytes]:
        """``encode_batch`` with each text's ids packed as little-endian uint16 (``itemsize`` 2, ids < 65536) or
        uint32 (4) bytes: what a token file holds, without a Python int per id."""
    def encode_to_numpy(
        self, texts: str | Iterable[str], allowed_special: Iterable[str], separator: int, num_threads: int,
        itemsize: int, chunk: int = 1 << 20,
    ) -> np.ndarray:
        """The ids of ``encode`` of a text, or of each document concatenated with ``separator`` after each (none when
        < 0), as one uint16 (``itemsize`` 2) or uint32 (4) array. Texts are cut at safe points into ~``chunk``-byte
        pieces encoded on ``num_threads`` threads, without the GIL, straight into the array's memory (which its
        ``base``, a capsule, owns: the array cannot be resized in place). Beyond the ids, it holds at most the room of
        one round of 64 chunks while it is filled."""
    def encode_file(
        self, path: str | os.PathLike[str], out_fd: int, allowed_special: Iterable[str], itemsize: int,
        num_threads: int, progress: Callable[[int], object] | None = None, chunk: int = 1 << 21,
    ) -> int:
        """Encode a UTF-8 file and write its ids (little-endian uint16 or uint32) to the open file descriptor
        ``out_fd`` at its offset; returns how many. Reads, checks, cuts, encodes and writes in rounds of
        ``num_threads`` chunks, so memory stays bounded; ``progress(bytes_read)`` after each round; Ctrl-C stops it.
        ValueError naming the byte offset for a file that is not UTF-8, FileNotFoundError for a missing one."""
    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Concatenated token bytes; an id not in the vocab (or beyond int64) raises ValueError and a non-int
        TypeError, naming the id and its position."""
    @property
    def vocab_size(self) -> int:
        """Largest id + 1."""
    @property
    def pattern(self) -> str:
        """The pre-tokenizer's name."""

def train_bpe(
    input_path: str | bytes | os.PathLike[str], vocab_size: int, special_tokens: Iterable[str],
    num_workers: int | None = None, progress: Callable[[str, int, int], object] | None = None, pattern: str = "gpt2",
    block_size: int = 0,
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Train byte-level BPE on a UTF-8 file (CS336 semantics: specials, then 256 bytes, then one id per merge;
    ties go to the greater (bytes, bytes) pair). Reads the file in blocks of ``block_size`` bytes (0: the default,
    4 MiB; small ones are for tests), so memory holds the word table and a few blocks, never the file, and
    pre-tokenizes on ``num_workers`` threads (None: all cores).
    ``progress(stage, done, total)`` is called at the start of each stage, about ten times a second and at its end:
    stage ``"count"`` in bytes of the file, then ``"merge"`` in merges; Ctrl-C stops training with
    KeyboardInterrupt in either.

    ValueError for vocab_size < 256 + len(special_tokens) or a file that is not UTF-8 (naming the byte offset),
    FileNotFoundError for a missing file."""
