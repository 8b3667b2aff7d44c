"""Token files on disk: open ``.npy`` / ``.npz`` / ``.bin`` as memory-mapped 1-D id arrays and check them.

Token files are never read whole: ``.npy`` opens with ``np.load(mmap_mode="r")``, raw ``.bin`` (nanoGPT's
uint16 format) with ``np.memmap``, and an uncompressed ``.npz`` member is mapped in place inside the zip;
a compressed member is extracted once to a cached ``.npy``. Every bad file raises an error saying how to fix it.
``lmfast.data`` re-exports the public names.
"""

from __future__ import annotations

import logging
import os
import struct
import zipfile
from pathlib import Path

import numpy as np

from lmfast.data.cache import (
    _atomic_path,
    _content_sha256,
    _copy_stream,
    _file_lock,
    _memoized,
    _open_memmap,
    _resolve_cache,
    _sum_matches,
    _write_sum,
)

logger = logging.getLogger("lmfast.data")  # the name users and tests configure: this code moved out of lmfast.data

TOKEN_SUFFIXES = (".npy", ".npz", ".bin")
TEXT_SUFFIXES = (".txt",)
_SCAN_CHUNK = 1 << 24  # elements per chunk when scanning a token file for its max id (64 MiB at uint32)


def _missing(path: Path, key: str | None) -> FileNotFoundError:
    fix = f"set `{key}` to" if key else "pass"
    supported = ", ".join(TOKEN_SUFFIXES + TEXT_SUFFIXES)
    if path.is_dir():
        return FileNotFoundError(f"{path} is a directory, not a token or text file; {fix} a {supported} file")
    return FileNotFoundError(f"token file {path} does not exist; {fix} an existing {supported} file")


def _unsupported(path: Path) -> ValueError:
    return ValueError(
        f"cannot read {path}: unsupported suffix {path.suffix!r}; token files are .npy, .npz or .bin (raw uint16 "
        f"ids), and a .txt file is tokenized first (see lmfast.data.load_dataset)"
    )


def _check_header(path: Path, shape: tuple, dtype: np.dtype) -> None:
    """The checks that need only the header: 1-D, integer ids, not empty."""
    if len(shape) != 1:
        raise ValueError(
            f"{path} holds an array of shape {shape}; token files must be 1-D, so flatten it "
            f"(np.save(path, tokens.reshape(-1)))"
        )
    if not np.issubdtype(dtype, np.integer):
        raise ValueError(
            f"{path} holds {dtype} values; token files must hold integer ids (e.g. uint16 / int32), "
            f"so convert them with tokens.astype(np.uint16) or re-tokenize"
        )
    if shape[0] == 0:
        raise ValueError(f"{path} holds no tokens; re-tokenize the text or point the config at a non-empty file")


def _read_npy_header(f) -> tuple[tuple, bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    return np.lib.format.read_array_header_2_0(f)


def _open_npy(path: Path) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            shape, _, dtype = _read_npy_header(f)
            data_start = f.tell()
    except ValueError as e:
        raise ValueError(f"{path} is not a valid .npy file ({e}); re-create it with np.save") from e
    _check_header(path, shape, dtype)
    _check_size(path, data_start + shape[0] * dtype.itemsize, f"{shape[0]:,} {dtype} ids")
    return np.load(path, mmap_mode="r")


def _check_size(path: Path, expected: int, what: str) -> None:
    """A file cut short (an interrupted copy or download) is named, not left to mmap's "length is greater than
    file size"."""
    size = path.stat().st_size
    if size < expected:
        raise ValueError(f"{path} is truncated: its header promises {what} ({expected:,} bytes) but the file has "
                         f"{size:,} bytes; copy or re-create it again")


def _pick_npz_member(path: Path, names: list[str]) -> str:
    arrays = [n for n in names if n.endswith(".npy")]
    if len(arrays) == 1:
        return arrays[0]
    for preferred in ("tokens.npy", "arr_0.npy"):
        if preferred in arrays:
            return preferred
    found = ", ".join(n[:-4] for n in arrays) or "none"
    raise ValueError(
        f"{path} holds arrays [{found}]; a token .npz must hold a single array or one named 'tokens' "
        f"(np.savez(path, tokens=ids))"
    )


def _npz_member_offset(path: Path, info: zipfile.ZipInfo) -> int:
    """Byte offset of a stored member's data: past the local header, whose extra field may differ from the index."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise ValueError(f"{path} is not a valid .npz file (bad local header for {info.filename}); re-create it")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_len + extra_len


def _open_npz(path: Path, cache: Path) -> np.ndarray:
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise ValueError(f"{path} is not a valid .npz file ({e}); re-create it with np.savez") from e
    with zf:
        member = _pick_npz_member(path, zf.namelist())
        info = zf.getinfo(member)
        with zf.open(member) as src:
            shape, fortran, dtype = _read_npy_header(src)
            _check_header(path, shape, dtype)
            if info.compress_type == zipfile.ZIP_STORED:
                # np.savez stores members uncompressed: map the array where it lies inside the zip.
                offset = _npz_member_offset(path, info) + src.tell()
                _check_size(path, offset + shape[0] * dtype.itemsize, f"{shape[0]:,} {dtype} ids in {member}")
                return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
            out = cache / f"{path.stem}-{member[:-4]}-{_content_sha256(path)[:16]}.npy"
            with _file_lock(out):
                if not (out.exists() and _sum_matches(out)):
                    logger.info("extracting compressed %s from %s to %s (once)", member, path, out)
                    with _atomic_path(out) as tmp:
                        dst = _open_memmap(tmp, dtype=dtype, shape=shape, fortran_order=fortran)
                        _copy_stream(src, dst.reshape(-1).view(np.uint8), desc=f"extract {path.name}")
                        dst.flush()
                        del dst
                        _write_sum(out, tmp)
    return np.load(out, mmap_mode="r")


def _open_bin(path: Path, dtype) -> np.ndarray:
    dtype = np.dtype(np.uint16 if dtype is None else dtype)
    _check_header(path, (1,), dtype)
    size = path.stat().st_size
    if size % dtype.itemsize:
        raise ValueError(
            f"{path} has {size} bytes, not a whole number of {dtype} ids ({dtype.itemsize} bytes each); "
            f"raw .bin files are uint16 by default, pass the dtype they were written with"
        )
    return np.memmap(path, dtype=dtype, mode="r")


def _id_range(tokens: np.ndarray) -> list[int]:
    """[min, max] of the ids, scanned in chunks so memory stays bounded."""
    lo, hi = int(np.iinfo(tokens.dtype).max), int(np.iinfo(tokens.dtype).min)
    for i in range(0, len(tokens), _SCAN_CHUNK):
        chunk = np.asarray(tokens[i : i + _SCAN_CHUNK])
        lo, hi = min(lo, int(chunk.min())), max(hi, int(chunk.max()))
    return [lo, hi]


def check_vocab(tokens: np.ndarray, vocab_size: int, what: str = "tokens") -> None:
    """Raise ValueError if any id is negative or ``>= vocab_size``; scans in chunks, so memory stays bounded."""
    info = np.iinfo(tokens.dtype)
    if info.min >= 0 and info.max < vocab_size:
        return  # the dtype cannot hold an out-of-range id (e.g. uint8 bytes with vocab 256)
    for lo in range(0, len(tokens), _SCAN_CHUNK):
        chunk = np.asarray(tokens[lo : lo + _SCAN_CHUNK])
        bad = (chunk >= vocab_size) | (chunk < 0) if info.min < 0 else chunk >= vocab_size
        if bad.any():
            i = int(np.argmax(bad))
            fix = (
                "ids cannot be negative, so re-create the file"
                if chunk[i] < 0
                else "the file was made with another tokenizer: re-tokenize it with this run's tokenizer, or set "
                "vocab_size above the largest id in the file"
            )
            raise ValueError(
                f"{what} holds token id {int(chunk[i])} at position {lo + i}, outside [0, {vocab_size}); {fix}"
            )


def check_length(tokens, context_length: int, what: str = "tokens") -> None:
    """Raise ValueError unless ``tokens`` has at least ``context_length + 1`` ids (one window plus its target)."""
    if len(tokens) < context_length + 1:
        raise ValueError(
            f"{what} has {len(tokens)} tokens, but context_length={context_length} needs at least "
            f"{context_length + 1}; use more data or a smaller context_length"
        )


def open_tokens(
    path: str | os.PathLike,
    vocab_size: int | None = None,
    *,
    dtype=None,
    key: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> np.ndarray:
    """Memory-map a token file as a 1-D integer array, checking it on the way.

    ``.npy`` → ``np.load(mmap_mode="r")``; ``.npz`` → its single array (or the one named ``tokens`` /
    ``arr_0``), mapped in place when stored uncompressed, else extracted once to ``cache_dir``; ``.bin`` →
    raw ids of ``dtype`` (uint16 by default, nanoGPT's format). With ``vocab_size`` every id is checked to
    lie in ``[0, vocab_size)``. ``key`` (a config key) is named in the error for a missing file.
    """
    path = Path(path)
    if not path.is_file():
        raise _missing(path, key)
    suffix = path.suffix.lower()
    if suffix not in TOKEN_SUFFIXES:
        raise _unsupported(path)
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes); re-create the token file")
    if suffix == ".npy":
        tokens = _open_npy(path)
    elif suffix == ".npz":
        tokens = _open_npz(path, _resolve_cache(cache_dir))
    else:
        tokens = _open_bin(path, dtype)
    info = np.iinfo(tokens.dtype)
    if vocab_size is not None and (info.min < 0 or info.max >= vocab_size):
        what = f"range-{tokens.dtype.name}-{len(tokens)}"
        lo, hi = _memoized(path, _resolve_cache(cache_dir), what, lambda: _id_range(tokens))
        if lo < 0 or hi >= vocab_size:
            check_vocab(tokens, vocab_size, str(path))  # finds the first bad id for the error message
    return tokens
