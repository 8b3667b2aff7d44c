"""Documents on disk: ``.jsonl`` (plain, ``.gz``, ``.zst``) records, ``.parquet`` rows, and ``.txt`` files, read one
document at a time, and tokenized with the end-of-text token after each into one cached token file.

A ``.jsonl`` line is one JSON object whose ``text_field`` (default ``text``) holds the document; blank lines are
skipped. A ``.parquet`` file's ``text_field`` column holds one document a row (through ``pyarrow``, read a row group
at a time). A ``.txt`` file among several is one document. Every bad line or file is a ValueError naming the file
(and line) and the fix. ``pyarrow`` and ``zstandard`` are optional: ``pip install 'lmfast[data]'``.

:func:`prepare_documents` streams the documents of a list of files through the tokenizer's native batch encoder on
all threads (``Tokenizer.encode_batch_to_bytes``), a batch of about ``_BATCH_CHARS`` characters at a time, so
memory stays bounded whatever the size, writes ``eot_id`` after each document and caches the result by content: the
sha256 of every file, the text field, the EOT id and the tokenizer's fingerprint name the file.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from lmfast.data.cache import _atomic_path, _content_sha256, _file_lock, _resolve_cache

__all__ = ["DOCUMENT_SUFFIXES", "is_document_file", "iter_documents", "prepare_documents"]

logger = logging.getLogger("lmfast.data")

DOCUMENT_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet")
_BATCH_CHARS = 8 << 20  # characters of text per encode batch: ~4 MB of ids in flight, all threads busy
_HEADER = 128  # a fixed-size .npy header, rewritten in place once the length is known


def is_document_file(path: Path) -> bool:
    return str(path).lower().endswith(DOCUMENT_SUFFIXES)


def _missing_package(package: str, what: str) -> ImportError:
    return ImportError(f"reading {what} needs the `{package}` package: pip install 'lmfast[data]' (or pip install "
                       f"{package})")


def _open_text(path: Path) -> io.TextIOBase:
    """A text stream over a plain, gzip or zstd file, decoded as UTF-8."""
    name = str(path).lower()
    if name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    if name.endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raise _missing_package("zstandard", f"{path.name} (zstd-compressed)") from None
        return io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True),
                                encoding="utf-8")
    return open(path, encoding="utf-8")


def _jsonl_documents(path: Path, field: str) -> Iterator[str]:
    with _open_text(path) as f:
        lineno = 0
        try:
            for lineno, line in enumerate(f, 1):  # noqa: B007 - the line number goes into the error
                if not line.strip():
                    continue
                yield _record_text(path, lineno, line, field)
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}:{lineno + 1}: not UTF-8 text ({e.reason} at byte {e.start}); a .jsonl file is "
                             "UTF-8, one JSON record a line") from None
        except (OSError, EOFError) as e:  # a truncated gzip/zstd stream
            raise ValueError(f"{path}: cannot be read past line {lineno} ({e}); the file is truncated or not "
                             f"{''.join(path.suffixes)}") from None


def _record_text(path: Path, lineno: int, line: str, field: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{lineno}: not JSON ({e.msg} at column {e.colno}); each line of a .jsonl file is one "
                         f"JSON record, e.g. {{\"{field}\": \"...\"}}") from None
    if not isinstance(record, dict) or field not in record:
        has = f"it has {', '.join(map(repr, list(record)[:8]))}" if isinstance(record, dict) else \
            f"it is a JSON {type(record).__name__}"
        raise ValueError(f"{path}:{lineno}: the record has no {field!r} field ({has}); set text_field to the field "
                         "that holds each document's text")
    text = record[field]
    if not isinstance(text, str):
        raise ValueError(f"{path}:{lineno}: the {field!r} field holds {type(text).__name__}, not text; set text_field "
                         "to the field that holds each document's text")
    return text


def _parquet_documents(path: Path, field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise _missing_package("pyarrow", f"{path.name} (parquet)") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 - pyarrow's ArrowInvalid and friends share no base with ValueError
        raise ValueError(f"{path} is not a readable parquet file ({' '.join(str(e).split())})") from None
    names = pf.schema_arrow.names
    if field not in names:
        raise ValueError(f"{path} has no column {field!r} (its columns: {', '.join(map(repr, names[:12]))}); set "
                         "text_field to the column that holds each document's text")
    for group in range(pf.num_row_groups):
        column = pf.read_row_group(group, columns=[field]).column(0)
        for text in column.to_pylist():
            if text is None:
                continue
            if not isinstance(text, str):
                raise ValueError(f"{path}: column {field!r} holds {type(text).__name__}, not text; set text_field to "
                                 "a string column")
            yield text


def iter_documents(path: str | os.PathLike, text_field: str = "text") -> Iterator[str]:
    """The documents of one file, in order: jsonl records, parquet rows, or a whole ``.txt`` file."""
    path = Path(path)
    name = str(path).lower()
    if name.endswith(".parquet"):
        yield from _parquet_documents(path, text_field)
    elif name.endswith((".jsonl", ".jsonl.gz", ".jsonl.zst")):
        yield from _jsonl_documents(path, text_field)
    elif name.endswith(".txt"):
        try:
            yield path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    else:
        raise ValueError(f"{path}: not a document file; documents come in {', '.join(DOCUMENT_SUFFIXES)} or .txt")


def _cache_name(files: list[Path], text_field: str, eot_id: int | None, fingerprint: str, progress: bool) -> str:
    h = hashlib.sha256(f"docs1|{text_field}|{eot_id}|{fingerprint}".encode())
    for f in files:
        h.update(_content_sha256(f, progress).encode())
    stem = files[0].name.split(".")[0] + (f"-and-{len(files) - 1}" if len(files) > 1 else "")
    return f"{stem}-docs-{h.hexdigest()[:16]}.npy"


def prepare_documents(files: list[Path], tokenizer, eot_id: int | None, cache_dir=None, *, text_field: str = "text",
                      fingerprint: str, num_threads: int | None = None, progress: bool = True) -> Path:
    """Tokenize every document of ``files`` (in order) into one cached ``.npy``, ``eot_id`` after each; returns it.

    ``tokenizer`` None is byte-level (UTF-8 bytes, uint8, no EOT); otherwise it must have
    ``encode_batch_to_bytes(texts, num_threads, dtype)``. An existing cache of the same content is reused.
    """
    if not files:
        raise ValueError("no document files to tokenize")
    out = _resolve_cache(cache_dir) / _cache_name(files, text_field, eot_id, fingerprint, progress)
    if out.exists():
        logger.info("using cached tokens %s for %s", out, files[0] if len(files) == 1 else f"{len(files)} files")
        return out
    with _file_lock(out):
        if out.exists():
            return out
        logger.info("tokenizing the documents of %s into %s", files[0] if len(files) == 1 else f"{len(files)} files",
                    out)
        with _atomic_path(out) as tmp:
            n = _write_documents(files, tokenizer, eot_id, tmp, text_field, num_threads, progress)
        if n == 0:
            out.unlink(missing_ok=True)
            raise ValueError(f"{', '.join(map(str, files[:3]))}: no documents with any text; check text_field "
                             f"({text_field!r}) and the files")
    return out


def _write_documents(files: list[Path], tokenizer, eot_id: int | None, out: Path, text_field: str,
                     num_threads: int | None, progress: bool) -> int:
    dtype = np.dtype(np.uint8 if tokenizer is None else np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32)
    eot = b"" if eot_id is None else np.array([eot_id], dtype=dtype).tobytes()
    compressed = any(str(f).lower().endswith((".gz", ".zst", ".parquet")) for f in files)
    total = None if compressed else sum(f.stat().st_size for f in files)  # else characters track bytes closely
    n = 0
    with open(out, "wb") as f, tqdm(total=total, unit="B", unit_scale=True, desc="tokenizing documents",
                                    disable=not progress) as bar:
        f.write(b"\0" * _HEADER)
        batch, chars = [], 0
        for path in files:
            for text in iter_documents(path, text_field):
                batch.append(text)
                chars += len(text)
                if chars >= _BATCH_CHARS:
                    n += _encode_into(f, batch, tokenizer, dtype, eot, num_threads)
                    bar.update(chars)  # characters as a stand-in for bytes: close enough for a bar
                    batch, chars = [], 0
        n += _encode_into(f, batch, tokenizer, dtype, eot, num_threads)
        bar.update(chars)
        f.seek(0)
        _write_npy_header(f, dtype, n)
    return n


def _encode_into(f, texts: list[str], tokenizer, dtype: np.dtype, eot: bytes, num_threads: int | None) -> int:
    if not texts:
        return 0
    packed = [t.encode("utf-8") for t in texts] if tokenizer is None else \
        tokenizer.encode_batch_to_bytes(texts, num_threads, dtype)
    f.write(eot.join(packed) + eot)
    return (sum(map(len, packed)) + len(eot) * len(packed)) // dtype.itemsize


def _write_npy_header(f, dtype: np.dtype, n: int) -> None:
    """A .npy v1.0 header of exactly ``_HEADER`` bytes (the writer reserved them before the data)."""
    header = f"{{'descr': {dtype.str!r}, 'fortran_order': False, 'shape': ({n},), }}"
    f.write(np.lib.format.magic(1, 0))
    f.write((_HEADER - 10).to_bytes(2, "little"))
    f.write((header.ljust(_HEADER - 10 - 1) + "\n").encode("latin1"))
