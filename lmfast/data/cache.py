"""One-time work on disk, done once: the cache folder, a cross-process lock, atomic writes, memos, content hashes.

Data-parallel ranks that ask for the same cached file take ``_file_lock``, so one does the work while the others
wait; results appear through ``_atomic_path`` (temp file + fsync + ``os.replace``), so an interrupted run leaves
nothing half-written, and a temp file that a kill -9 left behind is removed the next time the cache is opened
(``_sweep_stale_temps``: only ours, only when no process holds its lock).

Every cached file has a record of its size and CRC-32 beside it (``<name>.crc32``, written with it), checked each
time the file is reused: a cached file whose bytes changed on disk is made again, never trained on.

Content hashes are computed from the bytes every time, never remembered by file stamp: a file rewritten at the same
size with its mtime put back (``cp -p``, ``rsync -t``, ``tar``) must not be served its old tokens. sha256 streams at
about 0.6-0.9 GB/s on one core (5 ms for the 4.5 MB Shakespeare corpus, ~1.7 s per GB). ``_memoized`` remembers
only the id range of a token file (a check, not data) by (device, inode, size, mtime, ctime): ctime is set by the
kernel on every write and no system call sets it, which holds on Linux's local filesystems but not on FAT or SMB,
where it can follow mtime; hence nothing that decides which tokens a run trains on is keyed that way.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import zlib
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from lmfast.data.registry import cache_dir as _lmfast_cache_dir

_COPY_CHUNK = 1 << 26  # bytes per read when copying files into .npy
_HASH_PROGRESS_MIN = 1 << 28  # show a progress bar when hashing files at least this big
_swept: set[Path] = set()  # cache folders already swept by this process


def _resolve_cache(cache_dir: str | os.PathLike | None) -> Path:
    cache = Path(cache_dir) if cache_dir is not None else _lmfast_cache_dir() / "tokens"
    cache.mkdir(parents=True, exist_ok=True)
    if cache.resolve() not in _swept:
        _swept.add(cache.resolve())
        _sweep_stale_temps(cache)
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
    with open(_lock_path(target), "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _lock_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.lock")


# A temp file made for ``target`` while its lock was held: ``.<target name>.<mkstemp letters>.tmp[.npy]``, possibly
# nested (``Tokenizer.encode_file`` writes its own temp file beside the path it is given).
_TEMP = re.compile(r"\.tmp(\.npy)?$")


def _sweep_stale_temps(folder: Path) -> list[Path]:
    """Delete the temp files a killed process left in ``folder``; returns what was removed.

    Every temp file here is written while ``_file_lock(target)`` is held, so a temp whose target's lock can be taken
    without waiting belongs to no live process. Files without a matching lock file are not ours and are kept.
    """
    try:
        import fcntl
    except ImportError:
        return []
    names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    targets = sorted((n[1:-len(".lock")] for n in names if n.startswith(".") and n.endswith(".lock")), key=len)
    owned: dict[str, list[str]] = {}
    for name in names:
        if _TEMP.search(name):
            owners = [t for t in targets if name.startswith(f".{t}.")]
            if owners:  # the longest prefix is the target it was made for
                owned.setdefault(owners[-1], []).append(name)
    removed = []
    for target, temps in owned.items():
        with open(folder / f".{target}.lock", "a+b") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a live process is writing it
                continue
            for name in temps:
                (folder / name).unlink(missing_ok=True)
                removed.append(folder / name)
    return removed


class _atomic_path:
    """Context manager yielding a temp path beside ``final``; on success it is fsynced and renamed over ``final``.

    Use it inside ``_file_lock(final)``: that lock is what tells ``_sweep_stale_temps`` the temp file is in use.
    """

    def __init__(self, final: Path):
        self.final = final

    def __enter__(self) -> Path:
        fd, name = tempfile.mkstemp(dir=self.final.parent, prefix=f".{self.final.name}.", suffix=".tmp.npy")
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


def _open_memmap(path: Path, **kwargs) -> np.ndarray:
    """``np.lib.format.open_memmap(path, "w+", ...)`` with the file's blocks reserved first: a memory map over a
    sparse file on a full disk fails page by page (reads into it return EFAULT, "Bad address"; writes SIGBUS), so a
    disk without room for it must fail here, with ENOSPC."""
    dst = np.lib.format.open_memmap(path, mode="w+", **kwargs)
    if hasattr(os, "posix_fallocate"):
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):  # a filesystem that cannot reserve: map it anyway
                del dst
                raise
        finally:
            os.close(fd)
    return dst


def no_room_error(e: OSError, folder: Path) -> OSError:
    """An OSError from writing into the token cache, with what is wrong and what to do."""
    try:
        free = f"; {shutil.disk_usage(folder).free / (1 << 20):,.0f} MiB free there"
    except OSError:
        free = ""
    fix = ("free some space or point cache_dir at a disk with room" if e.errno in (errno.ENOSPC, errno.EDQUOT) else
           "check the disk and that cache_dir is writable")
    error = OSError(f"cannot write the token cache in {str(folder)!r} ({e.strerror or e}{free}); {fix}")
    error.errno = e.errno
    return error


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
    """``compute()`` once per file state and ``what``: the JSON result is kept under ``cache/memo/``.

    The state is (path, device, inode, size, mtime, ctime). Use it for checks, never for what decides the data: a
    file rewritten within the clock tick of its last change, or on a filesystem whose ctime follows mtime, keeps
    its state (see the module docstring).
    """
    st, resolved = path.stat(), str(path.resolve())
    memo = cache / "memo" / f"{hashlib.sha1(resolved.encode()).hexdigest()[:20]}-{what}.json"
    stamp = {"path": resolved, "dev": st.st_dev, "ino": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
             "ctime_ns": st.st_ctime_ns}
    try:
        saved = json.loads(memo.read_text())
        if saved["stamp"] == stamp and saved["digest"] == _memo_digest(stamp, saved["value"]):
            return saved["value"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    value = compute()
    memo.parent.mkdir(parents=True, exist_ok=True)
    tmp = memo.with_name(f".{memo.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"stamp": stamp, "value": value, "digest": _memo_digest(stamp, value)}))
    os.replace(tmp, memo)
    return value


def _memo_digest(stamp: dict, value) -> str:
    """A memo's sha256 over its stamp and value: a memo edited by hand (or damaged) is computed again, not trusted."""
    return hashlib.sha256(json.dumps([stamp, value], sort_keys=True).encode()).hexdigest()


_SUM_SUFFIX = ".crc32"  # beside a cached file: {"size", "crc32"} of the bytes it was written with


def file_crc32(path: Path) -> int:
    """zlib CRC-32 of a file's bytes, read in bounded blocks."""
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(_COPY_CHUNK):
            crc = zlib.crc32(block, crc)
    return crc


def _write_sum(target: Path, written: Path) -> None:
    """Record the size and CRC-32 of ``written`` (the temp file about to become ``target``) beside ``target``.

    Call it holding ``_file_lock(target)``, before ``written`` is renamed into place: a cached file whose record is
    missing or differs is made again (see :func:`_sum_matches`)."""
    record = {"size": written.stat().st_size, "crc32": file_crc32(written)}
    side = target.with_name(target.name + _SUM_SUFFIX)
    tmp = side.with_name(f".{side.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, side)


def _sum_matches(target: Path) -> bool:
    """Whether ``target`` still holds the bytes it was cached with (one read at CRC-32 speed, ~1.3 GB/s)."""
    try:
        record = json.loads(target.with_name(target.name + _SUM_SUFFIX).read_text())
        return target.stat().st_size == record["size"] and file_crc32(target) == record["crc32"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _content_sha256(path: Path, progress: bool = True) -> str:
    """sha256 of the file's bytes, streamed (a progress bar from 256 MB), computed on every call (see above)."""
    h, size = hashlib.sha256(), path.stat().st_size
    disable = not progress or size < _HASH_PROGRESS_MIN
    with open(path, "rb") as f, tqdm(total=size, unit="B", unit_scale=True, desc=f"hash {path.name}",
                                     disable=disable) as bar:
        while block := f.read(_COPY_CHUNK):
            h.update(block)
            bar.update(len(block))
    return h.hexdigest()
