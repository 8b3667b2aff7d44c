import io
import struct
import zipfile

import pytest
import torch

from lmfast.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from lmfast.model import TransformerLM
from lmfast.optim import AdamW


def _model(d_model=32, seed=0):
    torch.manual_seed(seed)
    return TransformerLM(64, 16, d_model, 2, 4, 48, 10000.0, backend="reference")


def _trained(model):
    opt = AdamW(model.parameters(), lr=1e-2)
    loss = model(torch.randint(0, 64, (2, 8))).sum()
    loss.backward()
    opt.step()
    return opt


def test_save_and_load_round_trip_restores_model_optimizer_and_iteration(tmp_path):
    src = _model()
    opt = _trained(src)
    save_checkpoint(src, opt, 7, tmp_path / "c.pt")
    dst = _model(seed=1)
    dst_opt = AdamW(dst.parameters(), lr=1e-2)
    assert load_checkpoint(tmp_path / "c.pt", dst, dst_opt) == 7
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert str(dst_opt.state_dict()) == str(opt.state_dict())


def test_checkpoint_works_with_binary_file_objects():
    src = _model()
    opt = _trained(src)
    buf = io.BytesIO()
    save_checkpoint(src, opt, 3, buf)
    buf.seek(0)
    assert load_checkpoint(buf, _model(seed=1), AdamW(_model().parameters())) == 3


def test_compiled_model_saves_uncompiled_keys(tmp_path):
    model = _model()
    save_checkpoint(torch.compile(model), None, 0, tmp_path / "c.pt")
    keys = read_checkpoint(tmp_path / "c.pt")["model"].keys()
    assert "token_embeddings.weight" in keys and not any(k.startswith("_orig_mod") for k in keys)


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(_model(), None, 1, path)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(_model(), None, 2, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_checkpoint_from_another_model_shape_is_a_clear_error(tmp_path):
    save_checkpoint(_model(d_model=32), None, 1, tmp_path / "c.pt")
    with pytest.raises(ValueError, match="saved from a model of another shape.*token_embeddings.weight"):
        load_checkpoint(tmp_path / "c.pt", _model(d_model=16))


def test_missing_and_corrupt_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt", _model())
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read"):
        load_checkpoint(tmp_path / "bad.pt", _model())
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an lmfast checkpoint"):
        load_checkpoint(tmp_path / "other.pt", _model())


def _flip_a_byte_of_tensor_data(path, member_index=0, offset=5):
    """Flip one bit inside the stored bytes of a tensor, leaving the zip and pickle intact."""
    data = bytearray(path.read_bytes())
    members = [i for i in zipfile.ZipFile(path).infolist() if "/data/" in i.filename and "serialization" not in
               i.filename]
    info = members[member_index]
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    data[info.header_offset + 30 + name_len + extra_len + offset] ^= 0x01
    path.write_bytes(data)


def test_a_flipped_byte_in_a_checkpoint_is_detected_on_load_naming_the_tensor(tmp_path):
    src = _model()
    save_checkpoint(src, _trained(src), 7, tmp_path / "c.pt")
    assert torch.load(tmp_path / "c.pt", weights_only=True)["checksum"]  # written with every checkpoint
    _flip_a_byte_of_tensor_data(tmp_path / "c.pt")
    assert torch.load(tmp_path / "c.pt", weights_only=True)["step"] == 7  # torch alone loads it without a word
    with pytest.raises(ValueError, match=r"c\.pt' is corrupt: (model|optimizer)/\S+ differ.*another checkpoint"):
        load_checkpoint(tmp_path / "c.pt", _model())


def test_a_checkpoint_without_checksums_from_an_older_lmfast_still_loads(tmp_path):
    src = _model()
    torch.save({"model": src.state_dict(), "optimizer": None, "step": 3}, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt", _model(seed=1)) == 3
