"""Text → cached tokens: a ``.txt`` file is tokenized once into a ``.npy`` that later runs reuse.

The cache file is keyed by the sha256 of the text's content and a fingerprint of the tokenizer, so an edited text
or another tokenizer makes a new file. ``load_dataset`` opens either kind of path for training. ``lmfast.data``
re-exports the public names.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from lmfast.data.cache import (
    _atomic_path,
    _content_sha256,
    _copy_stream,
    _file_lock,
    _open_memmap,
    _resolve_cache,
    _sum_matches,
    _write_sum,
    no_room_error,
)
from lmfast.data.token_files import (
    TEXT_SUFFIXES,
    TOKEN_SUFFIXES,
    _check_header,
    _missing,
    _read_npy_header,
    _unsupported,
    check_length,
    open_tokens,
)

logger = logging.getLogger("lmfast.data")  # the name users and tests configure: this code moved out of lmfast.data


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash that changes whenever the tokenizer would produce other ids: its vocab, merges and specials.

    ``None`` (byte-level: the UTF-8 bytes are the ids) → ``"bytes"``. An object with a ``fingerprint()``
    method is trusted; otherwise ``vocab`` (dict id → bytes), ``merges`` and ``special_tokens`` attributes are
    hashed, and failing those, the files ``tokenizer.save(dir)`` writes.
    """
    if tokenizer is None:
        return "bytes"
    own = getattr(tokenizer, "fingerprint", None)
    if own is not None:
        return str(own() if callable(own) else own)
    h = hashlib.sha256()
    if hasattr(tokenizer, "vocab") and hasattr(tokenizer, "merges"):
        for i, tok in sorted(tokenizer.vocab.items()):
            h.update(b"v%d:%d:" % (i, len(tok)) + bytes(tok))
        for a, b in tokenizer.merges:
            h.update(b"m%d:%d:" % (len(a), len(b)) + bytes(a) + bytes(b))
        specials = getattr(tokenizer, "special_tokens", None) or []
        # A dict (name → id) is hashed with its ids; a list in order, since the order assigns the ids.
        for s in sorted(specials.items()) if isinstance(specials, dict) else specials:
            h.update(b"s" + repr(s).encode() + b"\0")
    elif hasattr(tokenizer, "save"):
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer.save(tmp)
            for f in sorted(Path(tmp).rglob("*")):
                if f.is_file():
                    h.update(f.relative_to(tmp).as_posix().encode() + b"\0" + f.read_bytes())
    else:
        raise TypeError(
            f"cannot fingerprint a {type(tokenizer).__name__}: it needs vocab/merges attributes or a save(dir) "
            f"method (lmfast.tokenizer.Tokenizer has both)"
        )
    return h.hexdigest()[:16]


def _bytes_to_npy(text_path: Path, out: Path, progress: bool) -> None:
    """Byte-level tokens: the file's bytes, copied in chunks into a uint8 .npy (no tokenizer, no decoding)."""
    n = text_path.stat().st_size
    dst = _open_memmap(out, dtype=np.uint8, shape=(n,))
    with open(text_path, "rb") as src:
        _copy_stream(src, dst, desc=f"bytes {text_path.name}", progress=progress)
    dst.flush()
    del dst


def prepare_tokens(
    text_path: str | os.PathLike,
    tokenizer=None,
    cache_dir: str | os.PathLike | None = None,
    *,
    num_threads: int | None = None,
    progress: bool = True,
    key: str | None = None,
) -> Path:
    """Tokenize a text file once into ``cache_dir`` and return the cached ``.npy`` path.

    The cache name carries the sha256 of the text and :func:`tokenizer_fingerprint`, so an edited text or
    another tokenizer makes a new file and an unchanged pair reuses the old one. ``tokenizer=None`` is
    byte-level: the ids are the file's UTF-8 bytes (vocab 256, stored as uint8). Otherwise
    ``tokenizer.encode_file(text, out, num_threads=..., progress=...)`` does the work; for lmfast's ``Tokenizer``
    that turns special-token text in the file (``<|endoftext|>`` between stories) into the special ids, its
    ``allowed_special="all"`` default, which the log line says. The file appears
    atomically (temp file + ``os.replace``), so an interrupted run leaves no half-written cache.
    """
    text_path = Path(text_path)
    if not text_path.is_file():
        raise _missing(text_path, key)
    if text_path.stat().st_size == 0:
        raise ValueError(f"{text_path} is empty (0 bytes); there is nothing to tokenize")
    cache = _resolve_cache(cache_dir)
    digest = _content_sha256(text_path, progress)
    out = cache / f"{text_path.stem}-{digest[:16]}-{tokenizer_fingerprint(tokenizer)}.npy"
    with _file_lock(out):  # also when reusing: another process (a data-parallel rank) may be making it
        if out.exists() and _sum_matches(out):
            logger.info("using cached tokens %s for %s", out, text_path)
            return out
        if out.exists():
            logger.warning("cached tokens %s do not match the checksum they were written with (a changed byte on "
                           "disk, or written by an older lmfast); tokenizing %s again", out, text_path)
        specials = list(getattr(tokenizer, "special_tokens", None) or [])
        logger.info("tokenizing %s into %s (%s)", text_path, out, "byte-level" if tokenizer is None else
                    f"BPE; special tokens in the text ({', '.join(specials)}) become their ids" if specials else "BPE")
        try:
            with _atomic_path(out) as tmp:
                if tokenizer is None:
                    _bytes_to_npy(text_path, tmp, progress)
                else:
                    written = Path(tokenizer.encode_file(text_path, tmp, num_threads=num_threads, progress=progress))
                    if written.resolve() != tmp.resolve():
                        os.replace(written, tmp)
                with open(tmp, "rb") as f:  # never cache something that is not a readable token file
                    shape, _, dtype = _read_npy_header(f)
                _check_header(tmp, shape, dtype)
                _write_sum(out, tmp)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFAULT, errno.EROFS, errno.EACCES, errno.EIO):
                raise
            raise no_room_error(e, cache) from None
    return out


def load_dataset(
    path: str | os.PathLike,
    *,
    tokenizer=None,
    vocab_size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    context_length: int,
    key: str | None = None,
    dtype=None,
) -> np.ndarray:
    """Open training/validation data for ``get_batch``: a token file as is, a ``.txt`` through the token cache.

    ``vocab_size`` (default: the tokenizer's, or 256 for byte-level text) bounds the ids; the data must
    hold at least ``context_length + 1`` tokens. ``key`` names the config key in errors.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        path = prepare_tokens(path, tokenizer, cache_dir, key=key)
        if vocab_size is None:
            vocab_size = 256 if tokenizer is None else tokenizer.vocab_size
    elif suffix not in TOKEN_SUFFIXES:
        if not path.is_file():
            raise _missing(path, key)
        raise _unsupported(path)
    if vocab_size is None and tokenizer is not None:
        vocab_size = tokenizer.vocab_size
    tokens = open_tokens(path, vocab_size, dtype=dtype, key=key, cache_dir=cache_dir)
    check_length(tokens, context_length, key or str(path))
    return tokens
