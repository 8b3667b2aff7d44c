"""Data-parallel training under torchrun, on CPU with gloo: two ranks train one model, rank 0 alone writes,
one DDP step equals one single-process step on both ranks' batches, resume continues the same curve, and a
failure on one rank stops every rank instead of hanging them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lmfast import distributed, train
from lmfast.checkpoint import read_checkpoint
from lmfast.config import load_config
from lmfast.data import BatchSampler

WORLD, BATCH, ACCUM, STEPS = 2, 8, 2, 12
TINY = dict(vocab_size=256, context_length=32, d_model=64, num_layers=2, num_heads=4, d_ff=128, batch_size=BATCH,
            gradient_accumulation_steps=ACCUM, max_steps=STEPS, warmup_iters=4, cosine_cycle_iters=40,
            max_learning_rate=3e-3, min_learning_rate=1e-4,
            checkpoint_interval=1, checkpoint_steps=1, log_interval=1, eval_iters=2, compile="false", progress=False)


def _text(n_lines, seed):
    rng = np.random.default_rng(seed)
    words = ["to be", "or not", "that is", "the question", "whether", "tis nobler", "in the mind", "to suffer"]
    return "\n".join(" ".join(rng.choice(words, 6)) for _ in range(n_lines)) + "\n"


def _torchrun(args, cwd, timeout=180):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _config(root: Path, name: str, **overrides) -> Path:
    cfg = {**TINY, "train_data_path": str(root / "train.txt"), "val_data_path": str(root / "val.txt"),
           "checkpoint_dir": str(root / "ck"), "log_file": str(root / "ck" / "train.log"),
           "cache_dir": str(root / "cache"), **overrides}
    path = root / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def _losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert len(steps) == len(set(steps)), f"a step was logged twice (by two ranks?): {steps}"
    return {r["step"]: r["loss"] for r in records if "loss" in r}


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """One torchrun run of two ranks (shared by the tests below: each launch costs seconds)."""
    root = tmp_path_factory.mktemp("ddp")
    (root / "train.txt").write_text(_text(400, seed=0))
    (root / "val.txt").write_text(_text(100, seed=1))
    result = _torchrun(["-m", "lmfast.train", "--config", str(_config(root, "tiny.yaml"))], cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root


@pytest.mark.slow
def test_two_ranks_train_and_rank_zero_alone_writes_one_set_of_files(ddp_run):
    ck = ddp_run / "ck"
    expected = {f"checkpoint_step_{s}.pt" for s in range(1, STEPS + 1)}
    expected |= {"checkpoint_epoch_1.pt", "best_model.pt", "final_model.pt", "metrics.jsonl", "train.log"}
    assert {p.name for p in ck.iterdir()} == expected
    losses = _losses(ck)
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert np.mean([losses[s] for s in range(STEPS - 2, STEPS + 1)]) < losses[1] - 1.0
    log = (ck / "train.log").read_text()
    assert log.count("Starting training...") == 1 and f"x {WORLD} ranks" in log
    tokens = len((ddp_run / "train.txt").read_bytes())  # byte-level: one token per byte
    assert f"({tokens // (BATCH * 32 * ACCUM * WORLD)} per epoch of {tokens:,} tokens)" in log
    final = read_checkpoint(ck / "final_model.pt")
    assert final["world_size"] == WORLD and len(final["data"]) == WORLD
    assert final["data"][0]["rng"] != final["data"][1]["rng"]  # each rank draws its own batches
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in final["model"])


def _one_process_trainer(root: Path, resume: Path, batch_size: int = WORLD * BATCH) -> train.Trainer:
    """A single-process trainer whose micro-batch holds both ranks' batches, resumed from a DDP checkpoint."""
    cfg = load_config(str(root / "tiny.yaml"), {"batch_size": batch_size, "checkpoint_dir": str(root / "one")})
    trainer = train.Trainer(cfg, torch.device("cpu"), resume=str(resume))
    samplers = []
    for state in read_checkpoint(resume)["data"]:
        sampler = BatchSampler(trainer.train_data, BATCH, cfg.context_length, "cpu")
        sampler.load_state_dict(state)
        samplers.append(sampler)

    def both_ranks():
        xs, ys = zip(*(s() for s in samplers), strict=True)
        return torch.cat(xs), torch.cat(ys)

    trainer.sampler = both_ranks
    return trainer


@pytest.mark.slow
def test_one_ddp_step_equals_one_process_step_on_both_ranks_batches(ddp_run):
    """Both ranks' micro-batches side by side, with the same gradient accumulation (no_sync on all but the last)."""
    ck = ddp_run / "ck"
    # from step 1 (not 0: warmup gives step 0 a learning rate of 0, which would leave the weights unchanged)
    trainer = _one_process_trainer(ddp_run, ck / "checkpoint_step_1.pt")
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    loss, _, lr = trainer.train_step(1)
    assert lr > 0
    assert loss.item() == pytest.approx(_losses(ck)[2], rel=1e-5)  # logged loss = mean over the ranks
    ddp = read_checkpoint(ck / "checkpoint_step_2.pt")["model"]
    for name, value in trainer.model.state_dict().items():
        assert not torch.equal(before[name], ddp[name]), name
        torch.testing.assert_close(value, ddp[name], rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.slow
def test_validation_under_torchrun_equals_one_process_on_the_same_batches(ddp_run):
    ck = ddp_run / "ck"
    records = [json.loads(line) for line in (ck / "metrics.jsonl").read_text().splitlines()]
    val_loss = [r["val_loss"] for r in records if "val_loss" in r][-1]
    trainer = _one_process_trainer(ddp_run, ck / "final_model.pt", batch_size=BATCH)
    # eval_iters=2: rank 0 took batch 0 of the validation stream and rank 1 batch 1, as one process takes both
    assert trainer.evaluate() == pytest.approx(val_loss, rel=1e-6)


@pytest.mark.slow
def test_resuming_with_another_world_size_warns_and_reseeds_each_rank(ddp_run, caplog):
    cfg = load_config(str(ddp_run / "tiny.yaml"), {"checkpoint_dir": str(ddp_run / "one")})
    trainer = train.Trainer(cfg, torch.device("cpu"), resume=str(ddp_run / "ck" / "checkpoint_step_6.pt"))
    assert "holds the data-sampler state of 2 rank(s) but this run has 1" in caplog.text
    assert trainer.progress.step == 6
    expected = BatchSampler(trainer.train_data, BATCH, cfg.context_length, "cpu", seed=[cfg.seed, 0, 6])
    assert torch.equal(trainer.sampler()[0], expected()[0])


@pytest.mark.slow
def test_resume_under_torchrun_continues_the_same_loss_curve(ddp_run):
    ck, ck2 = ddp_run / "ck", ddp_run / "ck2"
    config = _config(ddp_run, "resume.yaml", checkpoint_dir=str(ck2), log_file=str(ck2 / "train.log"),
                     checkpoint_steps=0)
    result = _torchrun(["-m", "lmfast.train", "--config", str(config), "--resume", str(ck / "checkpoint_step_6.pt")],
                       cwd=ddp_run)
    assert result.returncode == 0, result.stderr[-3000:]
    whole, resumed = _losses(ck), _losses(ck2)
    assert sorted(resumed) == list(range(7, STEPS + 1))
    assert resumed == {s: whole[s] for s in resumed}  # bitwise on CPU
    assert "Resumed from" in (ck2 / "train.log").read_text()


_FAILING_RANK = """
import sys
import torch
from lmfast import distributed

ctx = distributed.from_env()
ctx.init(torch.device("cpu"))
outcome = []

def rank_one_fails():
    if ctx.rank == 1:
        raise ValueError("bad input on rank 1")
    return "ok"

for phase in (lambda: ctx.agree(rank_one_fails), lambda: ctx.main_first(rank_one_fails)):
    try:
        phase()
        outcome.append("ok")
    except distributed.PeerFailedError:
        outcome.append("peer")
    except ValueError:
        outcome.append("own")
distributed.shutdown()
with open(f"rank{ctx.rank}.txt", "w") as f:  # a file per rank: lines printed by two ranks can interleave
    f.write(" ".join(outcome))
"""


@pytest.mark.slow
def test_a_failure_on_one_rank_stops_every_rank_instead_of_hanging(tmp_path):
    script = tmp_path / "failing_rank.py"
    script.write_text(_FAILING_RANK)
    result = _torchrun([str(script)], cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    # agree: rank 1 raises its own error, rank 0 learns of it; main_first: rank 0 has not run fn when rank 1 fails
    outcomes = [(tmp_path / f"rank{rank}.txt").read_text() for rank in (0, 1)]
    assert outcomes == ["peer peer", "own own"]


def test_the_torchrun_environment_is_read_and_bad_values_name_the_fix():
    assert not distributed.from_env({}).enabled
    ctx = distributed.from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.enabled, ctx.is_main) == (1, 2, 1, True, False)
    with pytest.raises(ValueError, match="RANK in \\[0, 2\\)"):
        distributed.from_env({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="not an integer.*torchrun"):
        distributed.from_env({"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="MPS"):
        ctx.resolve_device(torch.device("mps"))


def test_a_world_of_one_runs_everything_in_place_without_a_process_group():
    ctx = distributed.DistContext()
    value = torch.tensor(3.0)
    assert ctx.all_reduce_mean(value) is value
    assert ctx.agree(lambda x: x + 1, 1) == 2 and ctx.main_first(lambda: "done") == "done"
    assert ctx.gather_object({"a": 1}) == [{"a": 1}]
    assert ctx.resolve_device(torch.device("cpu")) == torch.device("cpu")
