"""End to end: the trainer on tiny configs — loss falls, checkpoints appear, resume equals never stopping,
and every kind of bad input stops before training with one message and nothing written is lost."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lmfast import generate
from lmfast.train import trainer as trainer_module

TINY = dict(vocab_size=256, context_length=32, d_model=64, num_layers=2, num_heads=4, d_ff=128, batch_size=8,
            max_steps=40, warmup_iters=4, cosine_cycle_iters=40, max_learning_rate=3e-3, min_learning_rate=1e-4,
            checkpoint_interval=1, log_interval=1, eval_iters=2, compile="false", progress=False)


def _text(n_lines=400, seed=0):
    rng = np.random.default_rng(seed)
    words = ["to be", "or not", "that is", "the question", "whether", "tis nobler", "in the mind", "to suffer"]
    return "\n".join(" ".join(rng.choice(words, 6)) for _ in range(n_lines)) + "\n"


@pytest.fixture
def run(tmp_path):
    (tmp_path / "train.txt").write_text(_text())
    (tmp_path / "val.txt").write_text(_text(100, seed=1))

    def _run(*extra, **overrides):
        cfg = {**TINY, "train_data_path": str(tmp_path / "train.txt"), "val_data_path": str(tmp_path / "val.txt"),
               "checkpoint_dir": str(tmp_path / "ck"), "log_file": str(tmp_path / "ck" / "train.log"),
               "cache_dir": str(tmp_path / "cache"), **overrides}
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return trainer_module.main(["--config", str(path), *extra])

    _run.dir = tmp_path
    return _run


def _metrics(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_tiny_run_trains_loss_falls_and_writes_checkpoints(run):
    assert run() == 0
    ck = run.dir / "ck"
    losses = [m["loss"] for m in _metrics(ck / "metrics.jsonl") if "loss" in m]
    assert len(losses) == 40
    assert np.mean(losses[-5:]) < losses[0] - 1.0
    assert {"best_model.pt", "final_model.pt", "checkpoint_epoch_1.pt"} <= {p.name for p in ck.iterdir()}
    log = (ck / "train.log").read_text()
    for line in ["Starting training...", "Model created with", "Epoch 1/1", "Epoch 1, Step 0/", "Loss:", "LR:",
                 "Time:", "Tokens/s:", "Train Loss:", "Val Loss:", "Val PPL:", "New best model saved:"]:
        assert line in log, line
    assert "MFU" not in log and not any("mfu" in m for m in _metrics(ck / "metrics.jsonl"))  # CPU: no known peak
    vals = [m["val_loss"] for m in _metrics(ck / "metrics.jsonl") if "val_loss" in m]
    assert vals and vals[-1] < np.log(256)  # well below a uniform guess over bytes


def test_mfu_is_logged_beside_tokens_per_s_on_a_gpu_of_the_table(run, tmp_path, monkeypatch):
    from lmfast.model import TransformerLM
    from lmfast.train.mfu import peak_flops

    # the run is on CPU; the trainer is told it runs on an H100 (fp32 without tf32: 67 TFLOPS)
    monkeypatch.setattr(trainer_module, "device_peak_flops", lambda device, dtype: peak_flops("NVIDIA H100 80GB HBM3",
                                                                                      dtype or torch.float32))
    assert run(max_steps=3, val_data_path=None, dtype="float32") == 0  # auto would be bf16 on an AMX CPU
    records = [m for m in _metrics(tmp_path / "ck" / "metrics.jsonl") if "loss" in m]
    shape = {k: TINY[k] for k in ("vocab_size", "context_length", "d_model", "num_layers", "num_heads", "d_ff")}
    flops = TransformerLM(**shape, rope_theta=10000.0, device="meta").flops_per_token()
    assert len(records) == 3
    for r in records:
        assert r["mfu"] == pytest.approx(r["tokens_per_s"] * flops / 67e12)
    lines = [x for x in (tmp_path / "ck" / "train.log").read_text().splitlines() if "Tokens/s:" in x]
    assert len(lines) == 3 and all(re.search(r", Tokens/s: [\d,]+, MFU: \d+\.\d%$", x) for x in lines)


def test_resume_continues_the_same_loss_curve(run, tmp_path):
    assert run(max_steps=20, checkpoint_steps=10) == 0
    whole = [m["loss"] for m in _metrics(tmp_path / "ck" / "metrics.jsonl") if "loss" in m]
    # the same run, stopped at step 10 and resumed from its step-10 checkpoint, in another directory
    assert run(max_steps=10, checkpoint_steps=10, checkpoint_dir=str(tmp_path / "ck2")) == 0
    assert run("--resume", str(tmp_path / "ck2" / "checkpoint_step_10.pt"), max_steps=20, checkpoint_steps=10,
               checkpoint_dir=str(tmp_path / "ck2")) == 0
    resumed = [m["loss"] for m in _metrics(tmp_path / "ck2" / "metrics.jsonl") if "loss" in m]
    assert resumed == whole  # bitwise on CPU


def test_resume_auto_takes_the_newest_checkpoint(run, tmp_path):
    assert run(max_steps=6) == 0
    assert run("--resume", "auto", max_steps=9) == 0
    steps = [m["step"] for m in _metrics(tmp_path / "ck" / "metrics.jsonl") if "loss" in m]
    assert steps == list(range(1, 10))
    assert "Resumed from" in (tmp_path / "ck" / "train.log").read_text()


def test_a_fresh_run_moves_an_earlier_runs_files_aside(run, tmp_path):
    assert run(max_steps=3) == 0
    first = (tmp_path / "ck" / "final_model.pt").read_bytes()
    assert run(max_steps=3, seed=7) == 0
    moved = list((tmp_path / "ck").glob("previous-*/final_model.pt"))
    assert len(moved) == 1 and moved[0].read_bytes() == first


def test_training_sample_and_generate_cli_produce_text(run, tmp_path, capsys):
    assert run(sample_prompt="to be", sample_tokens=20) == 0
    assert "Sample:" in (tmp_path / "ck" / "train.log").read_text()
    capsys.readouterr()
    ckpt = str(tmp_path / "ck" / "final_model.pt")
    assert generate.main(["--checkpoint", ckpt, "--prompt", "to be", "--max-new-tokens", "30", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("to be") and len(out) > len("to be")


def _write_tokens(path, array):
    np.save(path, array)
    return str(path)


@pytest.mark.parametrize("case, overrides, args, message", [
    ("missing file", dict(train_data_path="/nonexistent/train.npy"), [], "train_data_path"),
    ("float tokens", "floats", [], "integer"),
    ("ids too large", "big_ids", [], "vocab_size"),
    ("too short", "short", [], "context_length"),
    ("heads", dict(num_heads=5), [], "divisible by num_heads"),
    ("odd head dim", dict(d_model=36, num_heads=4, context_length=32), [], "even head dim"),
    pytest.param("cuda", {}, ["--device", "cuda"], "CUDA is not available", marks=pytest.mark.skipif(
        torch.cuda.is_available(), reason="the cuda case expects a machine without CUDA")),
    ("bad resume", {}, ["--resume", "/nonexistent/c.pt"], "does not exist"),
])
def test_bad_input_stops_before_training_with_one_message(run, tmp_path, capsys, case, overrides, args, message):
    if overrides == "floats":
        overrides = dict(train_data_path=_write_tokens(tmp_path / "f.npy", np.random.rand(1000)))
    elif overrides == "big_ids":
        overrides = dict(train_data_path=_write_tokens(tmp_path / "b.npy", np.full(1000, 300, dtype=np.uint16)))
    elif overrides == "short":
        overrides = dict(train_data_path=_write_tokens(tmp_path / "s.npy", np.zeros(20, dtype=np.uint16)))
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "final_model.pt").write_bytes(b"an earlier run")
    capsys.readouterr()
    assert run(*args, **overrides) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last and "Traceback" not in err
    assert (tmp_path / "ck" / "final_model.pt").read_bytes() == b"an earlier run"


def test_resuming_with_another_model_shape_is_a_clear_error(run, tmp_path, capsys):
    assert run(max_steps=2) == 0
    capsys.readouterr()
    assert run("--resume", "auto", d_model=32) == 2
    assert "another shape" in capsys.readouterr().err


def test_tensorboard_and_wandb_receive_the_same_numbers_as_metrics_jsonl(run, tmp_path, monkeypatch):
    import types

    from lmfast.train import metrics

    scalars, wandb_logs = [], []

    class FakeWriter:
        def __init__(self, log_dir):
            self.log_dir = log_dir

        def add_scalar(self, key, value, global_step):
            scalars.append((key, value, global_step))

        def close(self):
            scalars.append("closed")

    fake_wandb = types.SimpleNamespace(init=lambda **kw: types.SimpleNamespace(
        log=lambda values, step: wandb_logs.append((step, values)), finish=lambda: wandb_logs.append("finished")))
    monkeypatch.setattr(metrics, "_summary_writer", lambda log_dir: FakeWriter(log_dir))
    monkeypatch.setitem(__import__("sys").modules, "wandb", fake_wandb)
    assert run(max_steps=3, tensorboard=True, wandb_project="lmfast-test") == 0
    records = _metrics(tmp_path / "ck" / "metrics.jsonl")
    assert ("loss", records[0]["loss"], 1) in scalars and scalars[-1] == "closed"
    assert wandb_logs[0] == (1, {k: v for k, v in records[0].items() if k != "step"}) and wandb_logs[-1] == "finished"


def test_missing_tensorboard_package_is_an_error_before_training(run, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "torch.utils.tensorboard", None)
    assert run(tensorboard=True) == 2
    assert 'pip install "lmfast[tensorboard]"' in capsys.readouterr().err
    assert not (tmp_path / "ck" / "final_model.pt").exists()
    tomllib = pytest.importorskip("tomllib")  # the extra the message names exists
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert any(d.startswith("tensorboard") for d in pyproject["project"]["optional-dependencies"]["tensorboard"])


def test_a_trained_tokenizer_is_reused_only_for_the_same_settings(run, tmp_path, capsys):
    assert run(max_steps=2, tokenizer="train", vocab_size=300) == 0
    assert run(max_steps=2, tokenizer="train", vocab_size=300) == 0  # a fresh run, same settings: reused
    archived = list((tmp_path / "ck").glob("previous-*/tokenizer/vocab.json"))
    assert len(archived) == 1  # the moved checkpoints keep the tokenizer they name
    capsys.readouterr()
    assert run(max_steps=2, tokenizer="train", vocab_size=320) == 2
    err = capsys.readouterr().err
    assert "holds the BPE tokenizer of an earlier run" in err and "'vocab_size': 300" in err
