"""lmfast.data: batch sampling, memory-mapped token files, the text → token cache, and every bad-input error."""

import io
import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from lmfast.data import (
    BatchSampler,
    check_length,
    get_batch,
    load_dataset,
    open_tokens,
    prepare_tokens,
    tokenizer_fingerprint,
)
from lmfast.data import text_tokens as _text_tokens
from lmfast.data import token_files as _token_files
from lmfast.tokenizer import Tokenizer

TEXT = "the cat sat on the mat. the end.\n" * 40 + "Ünïcode ☃ too\n"


def _tokenizer(extra_merge: bool = True) -> Tokenizer:
    vocab = {i: bytes([i]) for i in range(256)}
    merges = [(b"t", b"h")]
    vocab[256] = b"th"
    if extra_merge:
        merges.append((b"th", b"e"))
        vocab[257] = b"the"
    return Tokenizer(vocab, merges, ["<|endoftext|>"])


class _CountingTokenizer:
    """The real tokenizer, counting encode_file calls (to see whether the cache was used)."""

    def __init__(self, inner: Tokenizer):
        self.inner, self.calls = inner, 0
        self.vocab, self.merges, self.special_tokens = inner.vocab, inner.merges, inner.special_tokens
        self.vocab_size = inner.vocab_size

    def encode_file(self, in_path, out_path, num_threads=None, progress=True):
        self.calls += 1
        return self.inner.encode_file(in_path, out_path, num_threads=num_threads, progress=progress)


class _FailingTokenizer(_CountingTokenizer):
    def encode_file(self, in_path, out_path, num_threads=None, progress=True):
        with open(out_path, "wb") as f:
            f.write(b"\x93NUMPY half-written")
        raise KeyboardInterrupt


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Keep the default cache (memos, extracted arrays) out of the user's ~/.cache during tests."""
    monkeypatch.setenv("LMFAST_CACHE", str(tmp_path / "lmfast-cache"))


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------------------------
# get_batch / BatchSampler


def test_get_batch_returns_int64_windows_with_targets_shifted_by_one():
    dataset = np.arange(1000, dtype=np.uint16)
    x, y = get_batch(dataset, 6, 17, "cpu", generator=np.random.default_rng(0))
    assert x.shape == y.shape == (6, 17)
    assert x.dtype == y.dtype == torch.int64
    assert x.device.type == y.device.type == "cpu"
    assert x.is_contiguous() and y.is_contiguous()
    assert torch.equal(y, x + 1)
    assert torch.equal(x, x[:, :1] + torch.arange(17))


def test_get_batch_starts_cover_exactly_the_valid_range():
    dataset = np.arange(20, dtype=np.int32)
    rng = np.random.default_rng(1)
    starts = set()
    for _ in range(100):
        x, y = get_batch(dataset, 16, 5, "cpu", generator=rng)
        starts.update(x[:, 0].tolist())
        assert int(y.max()) <= 19
    assert starts == set(range(15))


def test_get_batch_keeps_large_uint16_ids_intact():
    dataset = np.full(64, 65535, dtype=np.uint16)
    dataset[::2] = 60001
    x, y = get_batch(dataset, 3, 8, "cpu", generator=torch.Generator().manual_seed(0))
    assert set(x.flatten().tolist()) | set(y.flatten().tolist()) == {60001, 65535}


def test_get_batch_is_reproducible_with_numpy_and_torch_generators_and_the_global_seed():
    dataset = np.arange(10_000)
    a = get_batch(dataset, 4, 8, "cpu", generator=np.random.default_rng(5))
    b = get_batch(dataset, 4, 8, "cpu", generator=np.random.default_rng(5))
    c = get_batch(dataset, 4, 8, "cpu", generator=torch.Generator().manual_seed(5))
    d = get_batch(dataset, 4, 8, "cpu", generator=torch.Generator().manual_seed(5))
    np.random.seed(5)
    e = get_batch(dataset, 4, 8, "cpu")
    np.random.seed(5)
    f = get_batch(dataset, 4, 8, "cpu")
    assert torch.equal(a[0], b[0]) and torch.equal(c[0], d[0]) and torch.equal(e[0], f[0])
    assert not torch.equal(a[0], get_batch(dataset, 4, 8, "cpu", generator=np.random.default_rng(6))[0])


def test_get_batch_rejects_data_shorter_than_one_window_and_2d_data():
    with pytest.raises(ValueError, match="8 tokens, but context_length=8 needs at least 9"):
        get_batch(np.arange(8), 2, 8, "cpu")
    with pytest.raises(ValueError, match="1-D array"):
        get_batch(np.zeros((4, 100), dtype=np.int64), 2, 8, "cpu")
    with pytest.raises(TypeError, match="generator must be"):
        get_batch(np.arange(100), 2, 8, "cpu", generator=42)


def test_batch_sampler_state_round_trip_through_a_checkpoint_gives_identical_batches():
    dataset = np.arange(5000, dtype=np.uint16)
    sampler = BatchSampler(dataset, 4, 16, "cpu", seed=[7, 0])
    for _ in range(3):
        sampler()
    buf = io.BytesIO()
    torch.save({"data": sampler.state_dict()}, buf)
    expected = [sampler() for _ in range(5)]
    buf.seek(0)
    resumed = BatchSampler(dataset, 4, 16, "cpu", seed=123)
    resumed.load_state_dict(torch.load(buf, weights_only=True)["data"])
    assert resumed.batches_drawn == 3
    for (x, y), (rx, ry) in zip(expected, [next(resumed) for _ in range(5)], strict=True):
        assert torch.equal(x, rx) and torch.equal(y, ry)


def test_batch_sampler_ranks_seeded_apart_draw_different_batches():
    dataset = np.arange(100_000)
    rank0, rank1 = BatchSampler(dataset, 8, 32, seed=[0, 0]), BatchSampler(dataset, 8, 32, seed=[0, 1])
    assert not torch.equal(rank0()[0], rank1()[0])


def test_batch_sampler_rejects_a_state_it_did_not_write():
    sampler = BatchSampler(np.arange(100), 2, 4, seed=0)
    with pytest.raises(ValueError, match="lacks"):
        sampler.load_state_dict({"rng": {}})
    with pytest.raises(ValueError, match="unknown numpy bit generator 'os'"):
        sampler.load_state_dict({"rng": {"bit_generator": "os"}, "batches_drawn": 0})


def test_batch_sampler_warns_when_resumed_with_another_batch_shape(caplog):
    state = BatchSampler(np.arange(100), 2, 4, seed=0).state_dict()
    with caplog.at_level(logging.WARNING, logger="lmfast.data"):
        BatchSampler(np.arange(100), 3, 4, seed=0).load_state_dict(state)
    assert "batch_size=3" in caplog.text


# ----------------------------------------------------------------------------------------------------------------
# open_tokens


def test_open_tokens_maps_npy_files_instead_of_reading_them(tmp_path):
    ids = np.arange(3000, dtype=np.uint16)
    np.save(tmp_path / "t.npy", ids)
    tokens = open_tokens(tmp_path / "t.npy", vocab_size=3000)
    assert isinstance(tokens, np.memmap)
    np.testing.assert_array_equal(tokens, ids)


def test_open_tokens_maps_an_uncompressed_npz_member_in_place(tmp_path):
    ids = np.arange(777, dtype=np.int32)
    np.savez(tmp_path / "t.npz", other=np.zeros(3), tokens=ids)
    tokens = open_tokens(tmp_path / "t.npz", cache_dir=tmp_path / "cache")
    assert isinstance(tokens, np.memmap) and Path(tokens.filename).resolve() == (tmp_path / "t.npz").resolve()
    np.testing.assert_array_equal(tokens, ids)
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("*.npy"))


def test_open_tokens_extracts_a_compressed_npz_once_and_maps_the_copy(tmp_path, monkeypatch):
    ids = np.random.default_rng(0).integers(0, 50_000, size=10_000, dtype=np.uint16)
    np.savez_compressed(tmp_path / "t.npz", ids)
    first = open_tokens(tmp_path / "t.npz", vocab_size=50_000, cache_dir=tmp_path / "cache")
    assert isinstance(first, np.memmap) and Path(first.filename).resolve().parent == (tmp_path / "cache").resolve()
    np.testing.assert_array_equal(first, ids)

    def no_second_extraction(*args, **kwargs):
        raise AssertionError("the compressed member was extracted again")

    monkeypatch.setattr(_token_files, "_copy_stream", no_second_extraction)
    np.testing.assert_array_equal(open_tokens(tmp_path / "t.npz", cache_dir=tmp_path / "cache"), ids)


def test_open_tokens_reads_raw_bin_as_uint16_unless_told_otherwise(tmp_path):
    np.arange(500, dtype=np.uint16).tofile(tmp_path / "t.bin")
    tokens = open_tokens(tmp_path / "t.bin")
    assert isinstance(tokens, np.memmap) and tokens.dtype == np.uint16
    np.testing.assert_array_equal(tokens, np.arange(500))
    np.arange(500, dtype=np.uint32).tofile(tmp_path / "u.bin")
    np.testing.assert_array_equal(open_tokens(tmp_path / "u.bin", dtype=np.uint32), np.arange(500))
    (tmp_path / "odd.bin").write_bytes(b"\x00" * 7)
    with pytest.raises(ValueError, match="not a whole number of uint16 ids"):
        open_tokens(tmp_path / "odd.bin")


def test_open_tokens_missing_file_names_the_path_and_the_config_key(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.npy does not exist; set `train_data_path` to an existing"):
        open_tokens(tmp_path / "nope.npy", key="train_data_path")


def test_open_tokens_unsupported_suffix_lists_the_supported_ones(tmp_path):
    (tmp_path / "t.csv").write_text("1,2,3")
    with pytest.raises(ValueError, match=r"unsupported suffix '\.csv'; token files are \.npy, \.npz or \.bin"):
        open_tokens(tmp_path / "t.csv")


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((10, 10), dtype=np.uint16), r"shape \(10, 10\); token files must be 1-D"),
        (np.zeros(10, dtype=np.float32), "float32 values; token files must hold integer ids"),
        (np.zeros(10, dtype=bool), "bool values; token files must hold integer ids"),
        (np.zeros(0, dtype=np.uint16), "holds no tokens"),
        (np.array(["a", None], dtype=object), "object values; token files must hold integer ids"),
    ],
)
def test_open_tokens_rejects_arrays_that_are_not_token_ids(tmp_path, array, message):
    np.save(tmp_path / "bad.npy", array, allow_pickle=True)
    with pytest.raises(ValueError, match=message):
        open_tokens(tmp_path / "bad.npy")
    np.savez_compressed(tmp_path / "bad.npz", tokens=array)
    with pytest.raises(ValueError, match=message):
        open_tokens(tmp_path / "bad.npz", cache_dir=tmp_path / "cache")


def test_open_tokens_rejects_empty_and_corrupt_files(tmp_path):
    for name in ("e.npy", "e.npz", "e.bin"):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(ValueError, match="is empty"):
            open_tokens(tmp_path / name)
    (tmp_path / "c.npy").write_bytes(b"not numpy at all")
    with pytest.raises(ValueError, match="not a valid .npy file"):
        open_tokens(tmp_path / "c.npy")
    (tmp_path / "c.npz").write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="not a valid .npz file"):
        open_tokens(tmp_path / "c.npz")


def test_open_tokens_names_a_truncated_npy_and_both_sizes(tmp_path):
    np.save(tmp_path / "t.npy", np.arange(1000, dtype=np.uint16))
    (tmp_path / "t.npy").write_bytes((tmp_path / "t.npy").read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"t.npy is truncated: its header promises 1,000 uint16 ids \(2,128 bytes\) "
                                         r"but the file has 1,000 bytes"):
        open_tokens(tmp_path / "t.npy")


def test_open_tokens_names_an_npz_member_that_runs_past_the_end_of_the_file(tmp_path):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<u2", "fortran_order": False, "shape": (5000,)})
    with zipfile.ZipFile(tmp_path / "t.npz", "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("tokens.npy", header.getvalue() + bytes(200))
    with pytest.raises(ValueError, match=r"t.npz is truncated: its header promises 5,000 uint16 ids in tokens.npy"):
        open_tokens(tmp_path / "t.npz")


def test_a_directory_given_as_data_is_called_a_directory(tmp_path):
    for name in ("x.txt", "x.npy", "plain"):
        (tmp_path / name).mkdir()
        with pytest.raises(FileNotFoundError, match=f"{name} is a directory, not a token or text file; set "
                                                    "`train_data_path` to a"):
            load_dataset(tmp_path / name, context_length=4, key="train_data_path")


def test_open_tokens_npz_with_several_unnamed_arrays_asks_for_a_tokens_key(tmp_path):
    np.savez(tmp_path / "t.npz", a=np.arange(5), b=np.arange(5))
    with pytest.raises(ValueError, match=r"holds arrays \[a, b\]; .* one named 'tokens'"):
        open_tokens(tmp_path / "t.npz")
    with zipfile.ZipFile(tmp_path / "n.npz", "w") as zf:
        zf.writestr("readme.txt", "no arrays here")
    with pytest.raises(ValueError, match=r"holds arrays \[none\]"):
        open_tokens(tmp_path / "n.npz")


def test_open_tokens_finds_an_out_of_vocab_id_past_the_first_chunk(tmp_path, monkeypatch):
    monkeypatch.setattr(_token_files, "_SCAN_CHUNK", 1000)
    ids = np.zeros(5000, dtype=np.uint16)
    ids[3456] = 300
    np.save(tmp_path / "t.npy", ids)
    open_tokens(tmp_path / "t.npy", vocab_size=301)
    with pytest.raises(ValueError, match=r"token id 300 at position 3456, outside \[0, 300\).*another tokenizer"):
        open_tokens(tmp_path / "t.npy", vocab_size=300)


def test_open_tokens_scans_an_unchanged_file_for_its_id_range_only_once(tmp_path, monkeypatch):
    scans = []
    real_scan = _token_files._id_range
    monkeypatch.setattr(_token_files, "_id_range", lambda tokens: scans.append(len(tokens)) or real_scan(tokens))
    np.save(tmp_path / "t.npy", np.arange(1000, dtype=np.uint16))
    open_tokens(tmp_path / "t.npy", vocab_size=1000)
    open_tokens(tmp_path / "t.npy", vocab_size=5000)
    assert scans == [1000]
    np.save(tmp_path / "t.npy", np.arange(1001, dtype=np.uint16))
    with pytest.raises(ValueError, match="token id 1000 at position 1000"):
        open_tokens(tmp_path / "t.npy", vocab_size=1000)
    assert scans == [1000, 1001]
    open_tokens(tmp_path / "t.npy", vocab_size=1 << 16)  # uint16 ids always fit: no scan at all
    assert scans == [1000, 1001]


def test_open_tokens_rejects_negative_ids_in_signed_files(tmp_path):
    ids = np.arange(100, dtype=np.int32)
    ids[42] = -1
    np.save(tmp_path / "t.npy", ids)
    with pytest.raises(ValueError, match="token id -1 at position 42.*cannot be negative"):
        open_tokens(tmp_path / "t.npy", vocab_size=1000)


def test_check_length_names_the_data_and_the_fix():
    check_length(np.arange(9), 8, "val_data_path")
    with pytest.raises(ValueError, match="val_data_path has 8 tokens.*smaller context_length"):
        check_length(np.arange(8), 8, "val_data_path")


# ----------------------------------------------------------------------------------------------------------------
# prepare_tokens / load_dataset


def test_prepare_tokens_without_tokenizer_stores_the_utf8_bytes(text_file, tmp_path):
    path = prepare_tokens(text_file, None, tmp_path / "cache")
    tokens = np.load(path)
    assert tokens.dtype == np.uint8
    assert tokens.tobytes() == TEXT.encode("utf-8")


def test_prepare_tokens_with_a_tokenizer_matches_encode(text_file, tmp_path):
    tok = _tokenizer()
    tokens = np.load(prepare_tokens(text_file, tok, tmp_path / "cache", progress=False))
    assert tokens.tolist() == tok.encode(TEXT)


def test_prepare_tokens_reuses_the_cache_on_the_second_call(text_file, tmp_path, caplog, monkeypatch):
    tok = _CountingTokenizer(_tokenizer())
    first = prepare_tokens(text_file, tok, tmp_path / "cache", progress=False)
    with caplog.at_level(logging.INFO, logger="lmfast.data"):
        second = prepare_tokens(text_file, tok, tmp_path / "cache", progress=False)
    assert first == second and tok.calls == 1
    assert "using cached tokens" in caplog.text

    byte_level = prepare_tokens(text_file, None, tmp_path / "cache")

    def no_copy(*args, **kwargs):
        raise AssertionError("the text was copied again")

    monkeypatch.setattr(_text_tokens, "_copy_stream", no_copy)  # hashed again (always), but not copied
    assert prepare_tokens(text_file, None, tmp_path / "cache") == byte_level


def test_prepare_tokens_cache_is_keyed_by_tokenizer_and_by_text(text_file, tmp_path):
    cache = tmp_path / "cache"
    a = prepare_tokens(text_file, _tokenizer(), cache, progress=False)
    b = prepare_tokens(text_file, _tokenizer(extra_merge=False), cache, progress=False)
    c = prepare_tokens(text_file, None, cache)
    assert len({a, b, c}) == 3
    assert np.load(a).tolist() != np.load(b).tolist()
    text_file.write_text(TEXT + "more", encoding="utf-8")
    d = prepare_tokens(text_file, _tokenizer(), cache, progress=False)
    assert d != a and np.load(d).tolist() == _tokenizer().encode(TEXT + "more")


def test_prepare_tokens_interrupted_leaves_no_cache_file(text_file, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        prepare_tokens(text_file, _FailingTokenizer(_tokenizer()), cache, progress=False)
    assert list(cache.glob("*.npy")) == [] and list(cache.glob(".*tmp*")) == []
    tok = _CountingTokenizer(_tokenizer())
    prepare_tokens(text_file, tok, cache, progress=False)
    assert tok.calls == 1


def test_prepare_tokens_rejects_missing_and_empty_text(tmp_path):
    with pytest.raises(FileNotFoundError, match="set `train_data_path`"):
        prepare_tokens(tmp_path / "none.txt", None, tmp_path, key="train_data_path")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        prepare_tokens(tmp_path / "empty.txt", None, tmp_path)


def test_tokenizer_fingerprint_follows_vocab_merges_and_special_tokens():
    base = tokenizer_fingerprint(_tokenizer())
    assert base == tokenizer_fingerprint(_tokenizer())
    assert base != tokenizer_fingerprint(_tokenizer(extra_merge=False))
    vocab, merges = _tokenizer().vocab, _tokenizer().merges
    assert base != tokenizer_fingerprint(Tokenizer(vocab, merges, ["<|endoftext|>", "<|pad|>"]))
    vocab = {i: bytes([i]) for i in range(256)} | {256: b"th", 257: b"he"}
    th_first = Tokenizer(vocab, [(b"t", b"h"), (b"h", b"e")])
    he_first = Tokenizer(vocab, [(b"h", b"e"), (b"t", b"h")])
    assert th_first.encode("the") != he_first.encode("the")
    assert tokenizer_fingerprint(th_first) != tokenizer_fingerprint(he_first)
    assert tokenizer_fingerprint(None) == "bytes"
    with pytest.raises(TypeError, match="cannot fingerprint a object"):
        tokenizer_fingerprint(object())


def test_load_dataset_tokenizes_text_once_then_opens_the_cache_as_memmap(text_file, tmp_path):
    tok = _CountingTokenizer(_tokenizer())
    for _ in range(2):
        tokens = load_dataset(text_file, tokenizer=tok, cache_dir=tmp_path / "cache", context_length=16)
        assert isinstance(tokens, np.memmap)
        assert tokens.tolist() == _tokenizer().encode(TEXT)
    assert tok.calls == 1
    tokens = load_dataset(text_file, cache_dir=tmp_path / "cache", context_length=16)
    assert tokens.tobytes() == TEXT.encode("utf-8")


def test_load_dataset_checks_ids_against_the_tokenizer_vocab(tmp_path):
    np.save(tmp_path / "t.npy", np.array([1, 2, 259, 3] * 10, dtype=np.uint16))
    with pytest.raises(ValueError, match="token id 259"):
        load_dataset(tmp_path / "t.npy", tokenizer=_tokenizer(), context_length=4)
    assert len(load_dataset(tmp_path / "t.npy", vocab_size=260, context_length=4)) == 40


def test_load_dataset_errors_name_the_config_key(tmp_path):
    np.save(tmp_path / "short.npy", np.arange(10, dtype=np.uint16))
    with pytest.raises(ValueError, match="val_data_path has 10 tokens, but context_length=10"):
        load_dataset(tmp_path / "short.npy", context_length=10, key="val_data_path")
    with pytest.raises(FileNotFoundError, match="missing.parquet does not exist; set `train_data_path`"):
        load_dataset(tmp_path / "missing.parquet", context_length=10, key="train_data_path")
    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    with pytest.raises(ValueError, match=r"unsupported suffix '\.parquet'.*\.txt file is tokenized first"):
        load_dataset(tmp_path / "t.parquet", context_length=10)


@pytest.mark.gpu
def test_get_batch_on_cuda_stages_through_pinned_memory_and_matches_cpu():
    dataset = np.random.default_rng(0).integers(0, 65535, size=100_000, dtype=np.uint16)
    x, y = get_batch(dataset, 8, 64, "cuda", generator=np.random.default_rng(3))
    cx, cy = get_batch(dataset, 8, 64, "cpu", generator=np.random.default_rng(3))
    assert x.device.type == "cuda" and x.dtype == torch.int64 and x.is_contiguous() and y.is_contiguous()
    assert torch.equal(x.cpu(), cx) and torch.equal(y.cpu(), cy)
    sampler = BatchSampler(dataset, 8, 64, "cuda", seed=1)
    assert sampler()[0].device.type == "cuda"
