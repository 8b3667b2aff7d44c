"""Session-wide test setup.

Without a CUDA GPU, Triton kernels run on CPU tensors through Triton's interpreter. TRITON_INTERPRET must
be set before triton is first imported, so it is set here, at collection time, before any test module
imports lmfast.kernels. Ahead-of-time compilation for real GPUs needs the normal (non-interpreted) Triton
and therefore runs in a subprocess with the variable removed (see tests/kernels/test_kernels_aot.py).
"""

import builtins
import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
    raise RuntimeError("triton was imported before tests/conftest.py could set TRITON_INTERPRET=1")
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        # The marker itself: item.keywords also holds the names of the folders above the test, so a checkout in a
        # folder named gpu would skip every test.
        if item.get_closest_marker("gpu") is not None and not HAS_CUDA:
            item.add_marker(skip_gpu)


@pytest.fixture
def one_thread():
    """One intra-op torch thread for the test, restored after (modules say why they want it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# Hostile places on disk, for the bad-input tests of the trainer and the command lines


def _simulate_read_only(monkeypatch, root: Path) -> None:
    """Writes under ``root`` fail with EROFS, as on a read-only mount (permission bits do not stop root)."""
    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    def under(path) -> bool:
        return isinstance(path, (str, os.PathLike)) and Path(os.fspath(path)).resolve().is_relative_to(root)

    real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir

    def fake_open(file, mode="r", *a, **k):
        if under(file) and any(c in mode for c in "wax+"):
            refuse(file)
        return real_open(file, mode, *a, **k)

    def fake_os_open(path, flags, *a, **k):
        if under(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real_os_open(path, flags, *a, **k)

    def fake_mkdir(path, *a, **k):
        if under(path):
            refuse(path)
        return real_mkdir(path, *a, **k)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)


@pytest.fixture
def read_only_dir(tmp_path, monkeypatch):
    """A directory this process cannot write into: really (chmod) for a normal user, simulated for root."""
    d = tmp_path / "read-only"
    d.mkdir()
    d.chmod(0o555)
    if os.access(d, os.W_OK):
        _simulate_read_only(monkeypatch, d.resolve())
    yield d
    d.chmod(0o755)


@pytest.fixture
def full_disk(tmp_path, monkeypatch):
    """A directory on a disk with no room: a 64 KiB tmpfs where this process may mount one, else ENOSPC writes."""
    d = tmp_path / "full"
    d.mkdir()
    mounted = os.geteuid() == 0 and shutil.which("mount") and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(d)], capture_output=True).returncode == 0
    if not mounted:
        real_fdopen, root = os.fdopen, d.resolve()

        class _NoRoom:
            def __init__(self, f):
                self._f = f

            def write(self, data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            def __getattr__(self, name):
                return getattr(self._f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self._f.close()

        def fdopen(fd, mode="r", *a, **k):
            f = real_fdopen(fd, mode, *a, **k)
            return _NoRoom(f) if "w" in mode and Path(f"/proc/self/fd/{fd}").resolve().is_relative_to(root) else f

        monkeypatch.setattr(os, "fdopen", fdopen)
    yield d
    if mounted:
        subprocess.run(["umount", str(d)], check=True)
