"""A Hugging Face folder that cannot be used is one error line from ``--init-from`` (exit code 2), never a traceback:
a zero or null field in config.json, a truncated or corrupt model.safetensors, an index without a weight_map."""

import json

import pytest
import torch
import yaml

from lmfast.export import save_hf
from lmfast.model import TransformerLM
from lmfast.train import trainer as trainer_module

SHAPE = dict(vocab_size=256, context_length=16, d_model=32, num_layers=1, num_heads=2, d_ff=64)


@pytest.fixture
def folder(tmp_path):
    torch.manual_seed(0)
    model = TransformerLM(**SHAPE, rope_theta=10000.0, backend="reference")
    return save_hf(model, tmp_path / "hf")


def _init_from(tmp_path, folder, capsys) -> tuple[int, str]:
    (tmp_path / "train.txt").write_text("to be or not to be, that is the question\n" * 20)
    cfg = {**SHAPE, "train_data_path": str(tmp_path / "train.txt"), "val_data_path": None, "max_steps": 1,
           "batch_size": 2, "warmup_iters": 0, "checkpoint_dir": str(tmp_path / "ck"), "log_file": None,
           "cache_dir": str(tmp_path / "cache"), "compile": "false", "progress": False, "device": "cpu"}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    code = trainer_module.main(["--config", str(tmp_path / "c.yaml"), "--init-from", str(folder)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err.strip().splitlines()[-1]


def _edit_config(folder, **fields):
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **fields}))


@pytest.mark.parametrize("fields", [{"num_attention_heads": 0}, {"rope_theta": None}, {"rope_theta": "fast"}],
                         ids=["zero-heads", "null-rope-theta", "text-rope-theta"])
def test_a_config_json_field_that_is_zero_or_null_is_one_line(tmp_path, folder, capsys, fields):
    _edit_config(folder, **fields)
    code, line = _init_from(tmp_path, folder, capsys)
    assert code == 2 and line.startswith("error: ") and "config.json" in line, line


@pytest.mark.parametrize("damage", ["truncated", "corrupt-header"])
def test_a_truncated_or_corrupt_model_safetensors_is_one_line_naming_it(tmp_path, folder, capsys, damage):
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\xff" * 8 + data[8:])
    code, line = _init_from(tmp_path, folder, capsys)
    assert code == 2 and "model.safetensors cannot be read as safetensors" in line, line


@pytest.mark.parametrize("index", [{}, {"weight_map": ["a"]}, {"weight_map": {"x": "../../etc/passwd"}}],
                         ids=["no-weight-map", "a-list", "outside-the-folder"])
def test_a_sharded_index_without_a_usable_weight_map_is_one_line(tmp_path, folder, capsys, index):
    (folder / "model.safetensors").rename(folder / "model-00001-of-00001.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    code, line = _init_from(tmp_path, folder, capsys)
    assert code == 2 and ("model.safetensors.index.json" in line or "is listed in" in line), line
