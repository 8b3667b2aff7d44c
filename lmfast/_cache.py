"""One-time work on disk, done once: the cache folder, a cross-process lock, atomic writes, memos, content hashes.

Data-parallel ranks that ask for the same cached file take ``_file_lock``, so one does the work while the others
wait; results appear through ``_atomic_path`` (temp file + fsync + ``os.replace``), so an interrupted run leaves
nothing half-written. ``_memoized`` keeps a small JSON result per (file, size, mtime), so hashing or scanning an
unchanged multi-GB file is paid once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from lmfast._pypi import cache_dir as _lmfast_cache_dir

_COPY_CHUNK = 1 << 26  # bytes per read when copying files into .npy
_HASH_PROGRESS_MIN = 1 << 28  # show a progress bar when hashing files at least this big


def _resolve_cache(cache_dir: str | os.PathLike | None) -> Path:
    cache = Path(cache_dir) if cache_dir is not None else _lmfast_cache_dir() / "tokens"
    cache.mkdir(parents=True, exist_ok=True)
    return cache


@contextlib.contextmanager
def _file_lock(target: Path):
    """Hold an exclusive lock on ``.<name>.lock`` beside ``target``, so data-parallel ranks do one-time work once.

    POSIX ``flock``; where it does not exist (Windows) this is a no-op and concurrent ranks merely repeat work,
    which the atomic writes keep safe.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(target.with_name(f".{target.name}.lock"), "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


class _atomic_path:
    """Context manager yielding a temp path beside ``final``; on success it is fsynced and renamed over ``final``."""

    def __init__(self, final: Path):
        self.final = final

    def __enter__(self) -> Path:
        fd, name = tempfile.mkstemp(dir=self.final.parent, prefix=f".{self.final.stem}.", suffix=".tmp.npy")
        os.close(fd)
        self.tmp = Path(name)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            with open(self.tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(self.tmp, self.final)
        else:
            self.tmp.unlink(missing_ok=True)


def _copy_stream(src, dst: np.ndarray, desc: str, progress: bool = True) -> None:
    """Fill the uint8 view ``dst`` from the binary stream ``src`` in bounded chunks, with a progress bar."""
    view = memoryview(dst)
    with tqdm(
        total=len(dst), unit="B", unit_scale=True, desc=desc, disable=not progress or len(dst) < _COPY_CHUNK
    ) as bar:
        pos = 0
        while pos < len(dst):
            got = src.readinto(view[pos : pos + _COPY_CHUNK])
            if not got:
                raise ValueError(f"{desc}: the source ended after {pos} of {len(dst)} bytes; the file is truncated")
            pos += got
            bar.update(got)


def _memoized(path: Path, cache: Path, what: str, compute):
    """``compute()`` once per (file, size, mtime) and ``what``: the JSON result is kept under ``cache/memo/``.

    Hashing or scanning a multi-GB file costs seconds to minutes; an unchanged file should not pay it each run.
    """
    st, resolved = path.stat(), str(path.resolve())
    memo = cache / "memo" / f"{hashlib.sha1(resolved.encode()).hexdigest()[:20]}-{what}.json"
    stamp = {"path": resolved, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    try:
        saved = json.loads(memo.read_text())
        if saved["stamp"] == stamp:
            return saved["value"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    value = compute()
    memo.parent.mkdir(parents=True, exist_ok=True)
    tmp = memo.with_name(f".{memo.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"stamp": stamp, "value": value}))
    os.replace(tmp, memo)
    return value


def _content_sha256(path: Path, cache: Path, progress: bool = True) -> str:
    """sha256 of the file's bytes, streamed, and remembered while the file is unchanged."""

    def compute() -> str:
        h, size = hashlib.sha256(), path.stat().st_size
        disable = not progress or size < _HASH_PROGRESS_MIN
        bar = tqdm(total=size, unit="B", unit_scale=True, desc=f"hash {path.name}", disable=disable)
        with open(path, "rb") as f, bar:
            while block := f.read(_COPY_CHUNK):
                h.update(block)
                bar.update(len(block))
        return h.hexdigest()

    return _memoized(path, cache, "sha256", compute)
