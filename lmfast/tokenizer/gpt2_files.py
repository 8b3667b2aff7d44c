"""GPT-2 tokenizer files: the bytes<->unicode map, reading and writing ``vocab.json`` / ``merges.txt``, validation.

``vocab.json`` maps each token string to its id, with the token's bytes shown through GPT-2's bytes<->unicode map;
``merges.txt`` has a ``#version`` header, then one ``a b`` merge per line in priority order. Every bad file raises
ValueError naming the file and line. ``lmfast.tokenizer`` re-exports ``bytes_to_unicode``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

EOT = "<|endoftext|>"  # GPT-2's end-of-text special token, id 50256 in its vocabulary

# ----------------------------------------------------------------------------------------------------------------
# GPT-2 byte <-> unicode map (printable characters stand for the bytes, so a vocab fits in JSON and text files)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to a printable character: printable Latin-1 maps to itself, the rest to U+0100+."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


_BYTE_TO_CHAR = bytes_to_unicode()
_CHAR_TO_BYTE = {c: b for b, c in _BYTE_TO_CHAR.items()}


def _to_str(token: bytes) -> str:
    return "".join(_BYTE_TO_CHAR[b] for b in token)


def _to_bytes(s: str) -> bytes:
    try:
        return bytes(_CHAR_TO_BYTE[c] for c in s)
    except KeyError as e:
        raise ValueError(f"token {s!r} has character {e.args[0]!r}, which is not in GPT-2's byte<->unicode map; "
                         "the file is not a byte-level GPT-2 vocab (was it written by another tokenizer?)") from None


# ----------------------------------------------------------------------------------------------------------------
# Checking a vocab and merges given in memory

# The C++ engine's limits (csrc/bpe.cpp, Engine::Engine), enforced here for both engines alike.
_MAX_ID = 1 << 31
_MAX_GAP = 1 << 24


def _check_vocab_merges(vocab, merges) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    if not isinstance(vocab, Mapping) or not vocab:
        raise ValueError("vocab must be a non-empty dict of id (int) -> token bytes")
    out_vocab: dict[int, bytes] = {}
    for i, b in vocab.items():
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or i < 0:
            raise ValueError(f"vocab key {i!r} is not a non-negative int id; vocab maps id -> bytes")
        if i >= _MAX_ID:
            raise ValueError(f"vocab id {i} is out of range; ids must be in [0, 2**31)")
        if not isinstance(b, (bytes, bytearray)):
            raise ValueError(f"vocab[{i}] is {type(b).__name__}, not bytes; vocab maps id -> token bytes")
        out_vocab[int(i)] = bytes(b)
    largest = max(out_vocab)
    if largest >= len(out_vocab) + _MAX_GAP:  # ids index dense tables (and an embedding of largest + 1 rows)
        raise ValueError(f"vocab ids are too sparse: the largest is {largest} for {len(out_vocab)} tokens; renumber "
                         f"the vocab so ids stay below the token count + {_MAX_GAP}")
    known = set(out_vocab.values())
    out_merges: list[tuple[bytes, bytes]] = []
    for k, pair in enumerate(merges):
        if len(pair) != 2 or not all(isinstance(x, (bytes, bytearray)) for x in pair):
            raise ValueError(f"merges[{k}] = {pair!r} is not a pair of bytes")
        a, b = bytes(pair[0]), bytes(pair[1])
        for part in (a, b, a + b):
            if part not in known:
                raise ValueError(f"merges[{k}] = ({a!r}, {b!r}): {part!r} is not in the vocab; every merge's parts "
                                 "and result must be vocab tokens")
        out_merges.append((a, b))
    missing = [x for x in range(256) if bytes([x]) not in known]
    if missing:
        raise ValueError(f"the vocab lacks {len(missing)} of the 256 single-byte tokens (first: {missing[:5]}); a "
                         "byte-level BPE vocab needs every byte so that any text can be encoded")
    return out_vocab, out_merges


# ----------------------------------------------------------------------------------------------------------------
# vocab.json and merges.txt


def _line_of(text: str, needle: str) -> int:
    i = text.find(needle)
    return text.count("\n", 0, i) + 1 if i >= 0 else 1


def _require_file(path: Path, what: str) -> None:
    """FileNotFoundError naming ``path`` and ``what`` it should be, saying so when it is a directory."""
    if path.is_dir():
        raise FileNotFoundError(f"{path} is a directory; pass the {what} file itself")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such {what} file")


def _read_vocab_json(path: Path) -> dict[int, bytes]:
    _require_file(path, "vocab (GPT-2's vocab.json)")
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not valid UTF-8 at byte offset {e.start}; vocab.json must be UTF-8 JSON") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: bad JSON ({e.msg} at column {e.colno}); the file is truncated or "
                         "is not GPT-2's vocab.json") from None
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}:1: expected a JSON object of token string -> id, got {type(data).__name__}")
    vocab: dict[int, bytes] = {}
    for s, i in data.items():
        try:
            if isinstance(i, bool) or not isinstance(i, int) or i < 0:
                raise ValueError(f"token {s!r} has id {i!r}; ids must be non-negative ints")
            if i in vocab:
                raise ValueError(f"id {i} is used twice (also by {_to_str(vocab[i])!r}); each id names one token")
            vocab[i] = _to_bytes(s)
        except ValueError as e:  # find the line only on error: the search is slow on a 1 MB one-line file
            where = f"{path}:{_line_of(raw, json.dumps(s, ensure_ascii=False))}"
            raise ValueError(f"{where}: {e}") from None
    return vocab


def _read_merges_txt(path: Path, vocab: Mapping[int, bytes]) -> list[tuple[bytes, bytes]]:
    _require_file(path, "merges (GPT-2's merges.txt)")
    known = set(vocab.values())
    merges: list[tuple[bytes, bytes]] = []
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                line = line.rstrip("\r\n")
                if (lineno == 1 and line.startswith("#version")) or not line:
                    continue
                parts = line.split(" ")
                where = f"{path}:{lineno}"
                if len(parts) != 2 or not parts[0] or not parts[1]:
                    raise ValueError(f"{where}: expected two tokens separated by one space, got {line!r}; the file "
                                     "is truncated or is not a GPT-2 merges.txt")
                try:
                    a, b = _to_bytes(parts[0]), _to_bytes(parts[1])
                except ValueError as e:
                    raise ValueError(f"{where}: {e}") from None
                for part in (a, b, a + b):
                    if part not in known:
                        raise ValueError(f"{where}: merge {line!r} uses {_to_str(part)!r}, which is not in the vocab; "
                                         "the merges file does not belong to this vocab.json")
                merges.append((a, b))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not valid UTF-8 at byte offset {e.start}; merges.txt must be UTF-8") from None
    return merges


def _check_merges_present(path: Path, vocab: Mapping[int, bytes], merges: Sequence, special_tokens) -> None:
    """A merges.txt with no merges for a vocab that has merged tokens is an empty or cut-short file, not a choice."""
    if merges:
        return
    specials = set() if isinstance(special_tokens, str) else {str(s).encode("utf-8") for s in special_tokens or ()}
    merged = [b for b in vocab.values() if len(b) > 1 and b not in specials]
    if merged:
        raise ValueError(f"{path}: holds no merges, but the vocab has {len(merged)} multi-byte tokens (e.g. "
                         f"{_to_str(merged[0])!r}) that only merges can make; the file is empty or cut short, so use "
                         "the merges.txt saved with this vocab.json")


def _write_vocab_json(path: Path, vocab: Mapping[int, bytes]) -> None:
    strs: dict[str, int] = {}
    for i in sorted(vocab):
        s = _to_str(vocab[i])
        if s in strs:
            raise ValueError(f"ids {strs[s]} and {i} have the same bytes {vocab[i]!r}; vocab.json maps "
                             "each token string to one id, so this vocab cannot be saved in GPT-2 format")
        strs[s] = i
    path.write_text(json.dumps(strs, ensure_ascii=False, indent=0), encoding="utf-8")


def _write_merges_txt(path: Path, merges: Sequence[tuple[bytes, bytes]]) -> None:
    lines = ["#version: 0.2"] + [f"{_to_str(a)} {_to_str(b)}" for a, b in merges]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
