"""Whatever a run reuses is checked by content before it is used: a run's trained tokenizer (its files against the
sha256 saved with them), a checkpoint's tokenizer (its content fingerprint), the token cache (the sha256 of each cached
file) and the id-range memo. A damaged one is refused with one line naming the file, or, for a cache, rebuilt."""

import json

import numpy as np
import pytest
import yaml

from lmfast import generate
from lmfast.data import cache as _cache
from lmfast.data import load_dataset, prepare_tokens
from lmfast.train import trainer as trainer_module

TINY = dict(vocab_size=300, context_length=16, d_model=32, num_layers=1, num_heads=2, d_ff=64, batch_size=4,
            max_steps=3, warmup_iters=1, cosine_cycle_iters=3, checkpoint_interval=0, checkpoint_steps=3,
            log_interval=1, eval_iters=1, compile="false", progress=False, device="cpu", backend="reference",
            dtype="float32", tokenizer="train", val_data_path=None, log_file=None)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def bpe_run(tmp_path, capsys):
    """A run with a BPE trained on its text; returns ``train(*args, **overrides) -> (exit code, last stderr line)``."""
    (tmp_path / "train.txt").write_text("to be or not to be, that is the question\n" * 60)

    def train(*args, **overrides):
        cfg = {**TINY, "train_data_path": str(tmp_path / "train.txt"), "checkpoint_dir": str(tmp_path / "ck"),
               "cache_dir": str(tmp_path / "cache"), **overrides}
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
        capsys.readouterr()
        code = trainer_module.main(["--config", str(tmp_path / "c.yaml"), *args])
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return code, (err.strip().splitlines() or [""])[-1]

    assert train()[0] == 0
    train.dir = tmp_path
    return train


def _cut_merges(folder):
    merges = folder / "merges.txt"
    lines = merges.read_text(encoding="utf-8").splitlines(keepends=True)
    merges.write_text("".join(lines[: len(lines) // 2]), encoding="utf-8")
    return merges


def _swap_two_ids(folder):
    vocab = folder / "vocab.json"
    table = json.loads(vocab.read_text(encoding="utf-8"))
    a, b = list(table)[100:102]
    table[a], table[b] = table[b], table[a]
    vocab.write_text(json.dumps(table, ensure_ascii=False), encoding="utf-8")
    return vocab


@pytest.mark.parametrize("damage", [_cut_merges, _swap_two_ids], ids=["merges-cut-in-half", "two-ids-swapped"])
def test_a_damaged_trained_tokenizer_is_refused_by_resume_and_generate_naming_the_file(bpe_run, capsys, damage):
    changed = damage(bpe_run.dir / "ck" / "tokenizer")
    code, line = bpe_run("--resume", "auto")
    assert code == 2 and f"{changed} changed since this run's tokenizer was saved" in line, line
    code = generate.main(["--checkpoint", str(bpe_run.dir / "ck" / "final_model.pt"), "--max-new-tokens", "2"])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and f"{changed} changed since" in line, line


def test_a_tokenizer_folder_changed_after_training_is_refused_by_resume_and_generate(bpe_run, capsys):
    own = bpe_run.dir / "own-tokenizer"
    (bpe_run.dir / "ck" / "tokenizer").rename(own)
    (own / "trained_for.json").unlink()  # a folder the user gave: no record of its files, only the checkpoint's
    assert bpe_run(tokenizer=str(own), checkpoint_dir=str(bpe_run.dir / "ck2"))[0] == 0
    _swap_two_ids(own)
    code, line = bpe_run("--resume", "auto", tokenizer=str(own), checkpoint_dir=str(bpe_run.dir / "ck2"))
    assert code == 2 and "was trained with another tokenizer than the one this run loads" in line, line
    code = generate.main(["--checkpoint", str(bpe_run.dir / "ck2" / "final_model.pt"), "--max-new-tokens", "2"])
    assert code == 2 and "trained with another tokenizer" in capsys.readouterr().err


@pytest.mark.parametrize("record", ['["not", "a", "dict"]', '{"vocab_size": "300"}', '{"files": [1, 2]}', "{"])
def test_a_trained_for_record_of_the_wrong_shape_is_one_line(bpe_run, record):
    (bpe_run.dir / "ck" / "tokenizer" / "trained_for.json").write_text(record)
    code, line = bpe_run("--resume", "auto")
    assert code == 2 and "trained_for.json" in line and "move" in line, line


# -- the token cache ----------------------------------------------------------------------------------------------


def test_flipped_bytes_in_a_cached_token_file_are_found_and_the_text_tokenized_again(tmp_path, caplog):
    text = tmp_path / "t.txt"
    text.write_bytes(bytes(range(32, 127)) * 40)
    cached = prepare_tokens(text, None, tmp_path / "cache", progress=False)
    first = np.load(cached).copy()
    data = bytearray(cached.read_bytes())
    for i in range(200):
        data[200 + 7 * i] ^= 0xFF
    cached.write_bytes(bytes(data))
    again = prepare_tokens(text, None, tmp_path / "cache", progress=False)
    assert again == cached and np.array_equal(np.load(again), first)
    assert "do not match the checksum they were written with" in caplog.text


def test_an_edited_id_range_memo_cannot_let_out_of_range_ids_through(tmp_path, monkeypatch):
    monkeypatch.setattr(_cache, "_swept", set())
    tokens = tmp_path / "tokens.npy"
    np.save(tokens, np.array([1, 2, 3, 999] * 10, dtype=np.uint16))
    with pytest.raises(ValueError, match="token id 999"):
        load_dataset(tokens, vocab_size=500, cache_dir=tmp_path / "cache", context_length=4)
    np.save(tokens, np.array([1, 2, 3, 4] * 10, dtype=np.uint16))
    load_dataset(tokens, vocab_size=500, cache_dir=tmp_path / "cache", context_length=4)  # memo: [1, 4]
    np.save(tokens, np.array([1, 2, 3, 999] * 10, dtype=np.uint16))
    stat = tokens.stat()
    for memo in (tmp_path / "cache" / "memo").glob("*.json"):  # a memo edited to claim the new file is fine
        record = json.loads(memo.read_text())
        record["stamp"] = {**record["stamp"], "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns,
                           "size": stat.st_size, "ino": stat.st_ino}
        record["value"] = [1, 4]
        memo.write_text(json.dumps(record))
    with pytest.raises(ValueError, match="token id 999"):
        load_dataset(tokens, vocab_size=500, cache_dir=tmp_path / "cache", context_length=4)
