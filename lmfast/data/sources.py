"""A data key's sources, opened for training: a path, a directory or glob of document files, or a weighted list.

``train_data_path`` / ``val_data_path`` name one source or a list of ``{path, weight}``. A source is a token file
(``.npy`` / ``.npz`` / ``.bin``), a ``.txt`` (tokenized as today, :mod:`lmfast.data.text_tokens`), a document file
(``.jsonl`` / ``.jsonl.gz`` / ``.jsonl.zst`` / ``.parquet``), or a directory or glob of document and ``.txt`` files,
which become one token file with the end-of-text token after each document (:mod:`lmfast.data.documents`). One
source without a weight opens as the plain 1-D array it always was; several make a :class:`TokenMixture`.

``val_split_fraction`` holds whole documents of each training source out for validation: the documents are the
spans between end-of-text tokens, each goes to validation with that probability from a generator seeded with the
run's seed (at least one each way), and the two parts are cached beside the source's tokens.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np

from lmfast.data.cache import _atomic_path, _content_sha256, _file_lock, _resolve_cache
from lmfast.data.documents import is_document_file, prepare_documents
from lmfast.data.mixture import TokenMixture
from lmfast.data.text_tokens import load_dataset, tokenizer_fingerprint
from lmfast.data.token_files import TOKEN_SUFFIXES, _missing, check_length, open_tokens

__all__ = ["load_data", "source_files", "split_documents"]

_SCAN = 1 << 24  # tokens per chunk when scanning for end-of-text tokens


def _is_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def source_files(path: str | os.PathLike, key: str | None = None) -> list[Path]:
    """The files one source names: itself, or the document and ``.txt`` files of a directory (recursively) or glob,
    sorted by path."""
    text = str(path)
    where = f"{key} " if key else ""
    if _is_glob(text):
        found = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        what = f"{where}glob {text!r}"
    elif Path(text).is_dir():
        found = sorted(p for p in Path(text).rglob("*") if p.is_file() and not p.name.startswith("."))
        what = f"{where}{text!r} is a directory, and it"
    else:
        return [Path(text)]
    tokens = [p for p in found if p.suffix.lower() in TOKEN_SUFFIXES]
    usable = [p for p in found if is_document_file(p) or p.suffix.lower() == ".txt"]
    if tokens:
        raise ValueError(f"{what} {'matches' if _is_glob(text) else 'holds'} token files ({tokens[0]}, ...); a "
                         "directory or glob takes document files (.jsonl, .jsonl.gz, .jsonl.zst, .parquet) and .txt; "
                         "give token files one per source in a list: [{path: a.npy}, {path: b.npy}]")
    if not usable:
        raise FileNotFoundError(f"{what} {'matches' if _is_glob(text) else 'holds'} no .jsonl, .jsonl.gz, .jsonl.zst, "
                                ".parquet or .txt file (a directory or glob of documents is read whole)")
    return usable


def _open_source(path, key: str | None, tokenizer, vocab_size: int | None, cache_dir, text_field: str,
                 eot_id: int | None, progress: bool) -> np.ndarray:
    files = source_files(path, key)
    if len(files) == 1 and not is_document_file(files[0]):
        return load_dataset(files[0], tokenizer=tokenizer, vocab_size=vocab_size, cache_dir=cache_dir,
                            context_length=0, key=key)
    for f in files:
        if not f.is_file():
            raise _missing(f, key)
    cached = prepare_documents(files, tokenizer, eot_id, cache_dir, text_field=text_field,
                               fingerprint=tokenizer_fingerprint(tokenizer), progress=progress)
    if vocab_size is None:
        vocab_size = 256 if tokenizer is None else tokenizer.vocab_size
    return open_tokens(cached, vocab_size, key=key, cache_dir=cache_dir)


def load_data(spec, *, key: str, tokenizer=None, vocab_size: int | None = None, cache_dir=None, context_length: int,
              text_field: str = "text", eot_id: int | None = None, val_split: tuple[float, int] | None = None,
              progress: bool = True):
    """Open a data key's sources for :class:`~lmfast.data.BatchSampler`: a 1-D token array, or a :class:`TokenMixture`.

    ``spec``: a path (str / PathLike) or a list of ``{"path": ..., "weight": float | None}``. With ``val_split =
    (fraction, seed)`` returns ``(train, val)``, the held-out documents of every source in ``val``.
    """
    sources = [{"path": spec, "weight": None}] if isinstance(spec, (str, os.PathLike)) else list(spec)
    arrays = [_open_source(s["path"], key, tokenizer, vocab_size, cache_dir, text_field, eot_id, progress)
              for s in sources]
    names = [f"{key} {s['path']}" for s in sources]
    weights = None if all(s.get("weight") is None for s in sources) else [s["weight"] for s in sources]
    if val_split is None:
        return _combine(arrays, weights, names, context_length)
    fraction, seed = val_split
    parts = [split_documents(a, eot_id, fraction, seed, cache_dir, s["path"], key) for a, s in zip(arrays, sources,
                                                                                                   strict=True)]
    return (_combine([p[0] for p in parts], weights, names, context_length),
            _combine([p[1] for p in parts], weights, [f"the validation documents of {n}" for n in names],
                     context_length))


def _combine(arrays: list, weights: list | None, names: list[str], context_length: int):
    if len(arrays) == 1 and weights is None:
        check_length(arrays[0], context_length, names[0])
        return arrays[0]
    mixture = TokenMixture(arrays, weights, names)
    mixture.check_length(context_length, check_length)
    return mixture


def _document_ends(tokens: np.ndarray, eot_id: int) -> np.ndarray:
    """End (exclusive) of every document: after each end-of-text token, and at the end of a final unended one."""
    ends = [np.flatnonzero(np.asarray(tokens[i:i + _SCAN]) == eot_id) + i + 1 for i in range(0, len(tokens), _SCAN)]
    ends = np.concatenate(ends) if ends else np.zeros(0, dtype=np.int64)
    if len(ends) == 0 or ends[-1] != len(tokens):
        ends = np.append(ends, len(tokens))
    return ends.astype(np.int64)


def split_documents(tokens: np.ndarray, eot_id: int | None, fraction: float, seed: int, cache_dir=None,
                    source="tokens", key: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) token arrays: whole documents of ``tokens``, each held out with probability ``fraction``
    by a generator seeded with ``seed`` (at least one document each way), in their original order, cached."""
    where = f"{key} {source}" if key else str(source)
    if eot_id is None:
        raise ValueError(f"val_split_fraction holds out whole documents of {where}, and documents are separated by the "
                         "end-of-text token, which the byte-level tokenizer does not have; use tokenizer: train or "
                         "gpt2, or give val_data_path")
    ends = _document_ends(tokens, eot_id)
    if len(ends) < 2:
        raise ValueError(f"{where} holds one document (no end-of-text token inside), so val_split_fraction cannot hold "
                         "whole documents out; give val_data_path instead")
    rng = np.random.default_rng([seed, 0x5EED])
    held = rng.random(len(ends)) < fraction
    if held.all() or not held.any():  # keep a document on each side
        held[rng.integers(len(ends))] = not held[0]
    cache = _resolve_cache(cache_dir)
    digest = _content_sha256(Path(tokens.filename), progress=False)[:16] if getattr(tokens, "filename", None) else \
        _array_digest(tokens)
    stem = f"split-{digest}-{fraction!r}-{seed}"
    return tuple(_write_part(tokens, ends, held == side, cache / f"{stem}-{name}.npy")  # type: ignore[return-value]
                 for side, name in ((False, "train"), (True, "val")))


def _array_digest(tokens: np.ndarray) -> str:
    import hashlib

    h = hashlib.sha256(str(tokens.dtype).encode())
    for i in range(0, len(tokens), _SCAN):
        h.update(np.ascontiguousarray(tokens[i:i + _SCAN]).tobytes())
    return h.hexdigest()[:16]


def _write_part(tokens: np.ndarray, ends: np.ndarray, keep: np.ndarray, out: Path) -> np.ndarray:
    """The documents where ``keep`` is True, concatenated into ``out`` (a run of neighbours copied at once)."""
    starts = np.concatenate([[0], ends[:-1]])
    if not out.exists():
        with _file_lock(out):
            if not out.exists():
                change = np.flatnonzero(np.diff(np.concatenate([[0], keep.astype(np.int8), [0]])))
                runs = change.reshape(-1, 2)  # [first, last + 1) document index of each kept run
                total = int(sum(ends[b - 1] - starts[a] for a, b in runs))
                with _atomic_path(out) as tmp:
                    dst = np.lib.format.open_memmap(tmp, mode="w+", dtype=tokens.dtype, shape=(total,))
                    pos = 0
                    for a, b in runs:
                        lo, hi = starts[a], ends[b - 1]
                        dst[pos:pos + hi - lo] = tokens[lo:hi]
                        pos += hi - lo
                    dst.flush()
                    del dst
    return np.load(out, mmap_mode="r")
