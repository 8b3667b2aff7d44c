"""The export folder is whole or not there: an export stopped midway leaves ``--out`` as it was (never new weights
beside an old config.json), the files get the usual permissions, and every bad ``--out`` or stop is one line."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from lmfast import export
from lmfast.checkpoint import save_checkpoint
from lmfast.model import TransformerLM
from lmfast.train.config import TrainConfig


def _checkpoint(folder, seed: int, d_ff: int):
    cfg = TrainConfig(vocab_size=256, context_length=16, d_model=32, num_layers=1, num_heads=2, d_ff=d_ff)
    torch.manual_seed(seed)
    model = TransformerLM(cfg.vocab_size, cfg.context_length, cfg.d_model, cfg.num_layers, cfg.num_heads, cfg.d_ff,
                          cfg.rope_theta, backend="reference")
    path = folder / f"model-{seed}.pt"
    save_checkpoint(model, None, 0, path, config=cfg.to_dict(), meta={"tokenizer": "bytes"})
    return str(path)


@pytest.fixture
def two(tmp_path):
    """Two checkpoints of models of different shapes (so a mixed folder would not even load)."""
    return _checkpoint(tmp_path, 0, 64), _checkpoint(tmp_path, 1, 128)


def _run(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    code = export.main(list(args))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, (err.strip().splitlines() or [""])[-1]


def _files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.mark.parametrize("stop", [KeyboardInterrupt, SystemExit])
def test_an_export_stopped_after_the_weights_leaves_the_earlier_folder_whole(two, tmp_path, capsys, monkeypatch, stop):
    out = tmp_path / "exported"
    assert _run(capsys, "--checkpoint", two[0], "--out", str(out))[0] == 0
    before = _files(out)
    real_write = type(out).write_text

    def write_text(self, *args, **kwargs):  # the weights are written; then the stop comes
        assert (self.parent / "model.safetensors").is_file()
        raise stop()

    monkeypatch.setattr(type(out), "write_text", write_text)
    with pytest.raises(stop) if stop is SystemExit else _no_raise():
        code, line = _run(capsys, "--checkpoint", two[1], "--out", str(out))
        assert code == 130 and "is as it was before the export" in line
    monkeypatch.setattr(type(out), "write_text", real_write)
    assert _files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp folder left


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_a_temp_folder_a_killed_export_left_is_removed_by_the_next_and_the_folder_replaced_whole(two, tmp_path,
                                                                                                capsys):
    out = tmp_path / "exported"
    assert _run(capsys, "--checkpoint", two[0], "--out", str(out))[0] == 0
    left = tmp_path / ".exported.0123abcd.tmp"
    left.mkdir()
    (left / "model.safetensors").write_bytes(b"half")
    assert _run(capsys, "--checkpoint", two[1], "--out", str(out))[0] == 0
    assert not left.exists() and '"intermediate_size": 128' in (out / "config.json").read_text()


def test_exported_files_and_folder_get_the_umasks_permissions_not_0600(two, tmp_path, capsys):
    old = os.umask(0o022)
    try:
        assert _run(capsys, "--checkpoint", two[0], "--out", str(tmp_path / "exported"))[0] == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "exported").stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "exported").iterdir()} == {0o644}
    assert {p.name for p in (tmp_path / "exported").iterdir()} == set(export.EXPORT_FILES)


@pytest.mark.parametrize("where, message", [
    ("a-file", "is a file; give a folder path"),
    ("under-a-file", "cannot be created: '{tmp}/a-file' is a file"),
    ("foreign", "holds files an export does not write (notes.md)"),
])
def test_a_bad_out_is_one_line_before_the_checkpoint_is_read(two, tmp_path, capsys, where, message):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.md").write_text("mine")
    out = {"a-file": tmp_path / "a-file", "under-a-file": tmp_path / "a-file" / "out",
           "foreign": tmp_path / "foreign"}[where]
    code, line = _run(capsys, "--checkpoint", two[0], "--out", str(out))
    assert code == 2 and line.startswith("error: ") and message.format(tmp=tmp_path) in line, line
    assert (tmp_path / "foreign" / "notes.md").read_text() == "mine"


def test_a_read_only_out_is_one_line(two, read_only_dir, capsys):
    code, line = _run(capsys, "--checkpoint", two[0], "--out", str(read_only_dir / "exported"))
    assert code == 2 and "cannot write the export" in line, line


def test_a_full_disk_is_one_line_and_keeps_the_earlier_export(two, full_disk, capsys):
    out = full_disk / "exported"
    out.mkdir()
    (out / "config.json").write_text("{}")
    code, line = _run(capsys, "--checkpoint", two[1], "--out", str(out))
    assert code == 2 and "cannot write the export" in line and "No space left on device" in line, line
    assert (out / "config.json").read_text() == "{}"


def test_the_help_names_the_command_as_it_was_started(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["/venv/bin/lmfast-export", "--help"])
    with pytest.raises(SystemExit):
        export.main(["--help"])
    assert capsys.readouterr().out.startswith("usage: lmfast-export ")
