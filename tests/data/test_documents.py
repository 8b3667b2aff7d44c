"""Documents users bring: .jsonl (plain, gzip, zstd), .parquet, directories and globs of them, weighted lists of
sources, and validation held out by whole documents. Each is tokenized with the end-of-text token after every
document, cached by content, and every bad file is one error naming the file (and line) and the fix."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch

from lmfast.data import BatchSampler, TokenMixture, iter_documents, load_data, source_files, split_documents
from lmfast.tokenizer import Tokenizer, train_bpe

DOCS = [f"Document {i}: " + " ".join(["alpha", "beta", "gamma", "delta"][(i + j) % 4] for j in range(i % 7 + 3))
        for i in range(40)]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("bpe") / "text.txt"
    path.write_text("<|endoftext|>".join(DOCS))
    vocab, merges = train_bpe(str(path), 300, ["<|endoftext|>"])
    return Tokenizer(vocab, merges, ["<|endoftext|>"])


def _jsonl(path, docs, field="text"):
    path.write_text("".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs)))
    return path


def _expected(tok, docs) -> list[int]:
    return [i for d in docs for i in [*tok.encode(d, allowed_special=set(), disallowed_special=()), tok.eot_id]]


def _load(spec, tok, tmp_path, **kw):
    return load_data(spec, key="train_data_path", tokenizer=tok, cache_dir=tmp_path / "cache", context_length=4,
                     eot_id=tok.eot_id, progress=False, **kw)


def test_a_jsonl_file_becomes_each_documents_tokens_followed_by_end_of_text(tok, tmp_path):
    tokens = _load(str(_jsonl(tmp_path / "d.jsonl", DOCS)), tok, tmp_path)
    assert tokens.tolist() == _expected(tok, DOCS)


def test_gzip_zstd_and_parquet_give_the_same_tokens_as_plain_jsonl(tok, tmp_path):
    zstandard = pytest.importorskip("zstandard")
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    plain = _jsonl(tmp_path / "d.jsonl", DOCS).read_bytes()
    with gzip.open(tmp_path / "d.jsonl.gz", "wb") as f:
        f.write(plain)
    (tmp_path / "d.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(plain))
    pq.write_table(pa.table({"content": DOCS, "n": list(range(40))}), tmp_path / "d.parquet", row_group_size=7)
    want = _expected(tok, DOCS)
    for name, kw in (("d.jsonl.gz", {}), ("d.jsonl.zst", {}), ("d.parquet", {"text_field": "content"})):
        assert _load(str(tmp_path / name), tok, tmp_path, **kw).tolist() == want, name


def test_a_directory_or_glob_reads_its_files_in_path_order_and_a_txt_among_them_is_one_document(tok, tmp_path):
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    _jsonl(folder / "b.jsonl", DOCS[10:20])
    _jsonl(folder / "a.jsonl", DOCS[:10])
    (folder / "sub" / "c.txt").write_text(DOCS[20])
    assert [p.name for p in source_files(folder)] == ["a.jsonl", "b.jsonl", "c.txt"]
    assert _load(str(folder), tok, tmp_path).tolist() == _expected(tok, DOCS[:21])
    assert _load(str(folder / "*.jsonl"), tok, tmp_path).tolist() == _expected(tok, DOCS[:20])


def test_tokens_are_cached_by_content_and_an_edited_file_is_tokenized_again(tok, tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", DOCS)
    first = _load(str(path), tok, tmp_path)
    assert _load(str(path), tok, tmp_path).filename == first.filename
    _jsonl(path, DOCS[::-1])
    again = _load(str(path), tok, tmp_path)
    assert again.filename != first.filename and again.tolist() == _expected(tok, DOCS[::-1])


@pytest.mark.parametrize("line, message", [
    ('{"text": "fine"}\n{"text": "broken"\n', r"d\.jsonl:2: not JSON"),
    ('{"text": "fine"}\n\n{"body": "x"}\n', r"d\.jsonl:3: the record has no 'text' field \(it has 'body'\); set "
                                           "text_field"),
    ('["a list"]\n', r"d\.jsonl:1: the record has no 'text' field \(it is a JSON list\)"),
    ('{"text": 7}\n', r"d\.jsonl:1: the 'text' field holds int, not text"),
])
def test_a_bad_jsonl_line_is_one_error_naming_the_file_and_line(tok, tmp_path, line, message):
    (tmp_path / "d.jsonl").write_text(line)
    with pytest.raises(ValueError, match=message):
        _load(str(tmp_path / "d.jsonl"), tok, tmp_path)


def test_a_parquet_file_without_the_column_names_the_columns_it_has(tok, tmp_path):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "d.parquet")
    with pytest.raises(ValueError, match=r"d\.parquet has no column 'text' \(its columns: 'body'\); set text_field"):
        _load(str(tmp_path / "d.parquet"), tok, tmp_path)
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match="bad.parquet is not a readable parquet file"):
        list(iter_documents(tmp_path / "bad.parquet"))


def test_a_directory_of_nothing_readable_or_of_token_files_is_refused(tok, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no .jsonl"):
        source_files(tmp_path / "empty", "train_data_path")
    np.save(tmp_path / "empty" / "a.npy", np.arange(10, dtype=np.uint16))
    with pytest.raises(ValueError, match="holds token files"):
        source_files(tmp_path / "empty", "train_data_path")


def test_mixing_weights_set_each_sources_share_of_the_rows_and_no_window_crosses_two_sources():
    a, b = np.zeros(1000, dtype=np.uint16), np.ones(50, dtype=np.uint16)
    sampler = BatchSampler(TokenMixture([a, b], [1.0, 3.0]), 64, 8, seed=0)
    rows = torch.cat([sampler()[0] for _ in range(50)])
    assert all(len(set(r.tolist())) == 1 for r in rows)  # each window from one source
    share_b = float((rows[:, 0] == 1).float().mean())
    assert abs(share_b - 0.75) < 0.03  # 3 to 1, whatever the sizes (3,200 rows: sd 0.008)
    by_tokens = torch.cat([BatchSampler(TokenMixture([a, b]), 64, 8, seed=1)()[0] for _ in range(20)])
    assert float((by_tokens[:, 0] == 1).float().mean()) < 0.15  # no weights: by token count (b has 5%)


def test_a_mixture_resumes_its_batches_from_the_sampler_state():
    data = TokenMixture([np.arange(500, dtype=np.uint16), np.arange(300, dtype=np.uint16) + 1000], [2.0, 1.0])
    s = BatchSampler(data, 4, 16, seed=3)
    s(), s()
    state = s.state_dict()
    want = [s()[0] for _ in range(3)]
    t = BatchSampler(data, 4, 16, seed=99)
    t.load_state_dict(state)
    assert all(torch.equal(x, t()[0]) for x in want)


def test_weighted_sources_load_as_a_mixture_of_each_file(tok, tmp_path):
    spec = [{"path": str(_jsonl(tmp_path / "a.jsonl", DOCS[:20])), "weight": 3.0},
            {"path": str(_jsonl(tmp_path / "b.jsonl", DOCS[20:])), "weight": 1.0}]
    data = _load(spec, tok, tmp_path)
    assert isinstance(data, TokenMixture) and data.probs.tolist() == [0.75, 0.25]
    assert [a.tolist() for a in data.arrays] == [_expected(tok, DOCS[:20]), _expected(tok, DOCS[20:])]


def _documents(tokens, eot) -> list[tuple[int, ...]]:
    out, cur = [], []
    for t in tokens.tolist():
        cur.append(t)
        if t == eot:
            out.append(tuple(cur))
            cur = []
    return out


def test_val_split_holds_out_whole_documents_deterministically_by_seed(tok, tmp_path):
    path = str(_jsonl(tmp_path / "d.jsonl", DOCS))
    train, val = _load(path, tok, tmp_path, val_split=(0.25, 7))
    all_docs = _documents(np.asarray(_expected(tok, DOCS)), tok.eot_id)
    t_docs, v_docs = _documents(train, tok.eot_id), _documents(val, tok.eot_id)
    assert sorted(t_docs + v_docs) == sorted(all_docs)  # every document whole, on exactly one side
    assert 3 <= len(v_docs) <= 20
    assert [d for d in all_docs if d in set(t_docs)] == t_docs  # in their original order
    again = _load(path, tok, tmp_path / "other", val_split=(0.25, 7))
    assert again[1].tolist() == val.tolist()
    assert _load(path, tok, tmp_path, val_split=(0.25, 8))[1].tolist() != val.tolist()


def test_val_split_needs_documents_separated_by_end_of_text(tmp_path):
    with pytest.raises(ValueError, match="byte-level tokenizer does not have"):
        split_documents(np.arange(100, dtype=np.uint8), None, 0.1, 0, tmp_path)
    with pytest.raises(ValueError, match="holds one document"):
        split_documents(np.arange(100, dtype=np.uint16) + 1, 0, 0.1, 0, tmp_path)
