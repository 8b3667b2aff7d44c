"""Data-parallel training under torchrun, on CPU with gloo: two ranks train one model, rank 0 alone writes,
DDP steps equal single-process steps on both ranks' batches, resume continues the same curve, and a failure on
one rank stops every rank instead of hanging them. (FSDP: tests/train/test_fsdp.py.)"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _torchrun import ACCUM, BATCH, STEPS, WORLD, make_data, torchrun, write_config
from _torchrun import losses as _losses

from lmfast.checkpoint import read_checkpoint
from lmfast.data import BatchSampler
from lmfast.train import distributed
from lmfast.train import trainer as trainer_module
from lmfast.train.config import load_config
from lmfast.train.lifecycle import LOCK_NAME
from lmfast.train.streams import RankStreams


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """One torchrun run of two ranks (shared by the tests below: each launch costs seconds)."""
    root = tmp_path_factory.mktemp("ddp")
    make_data(root)
    result = torchrun(["-m", "lmfast.train", "--config", str(write_config(root, "tiny.yaml"))], cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root


@pytest.mark.slow
def test_two_ranks_train_and_rank_zero_alone_writes_one_set_of_files(ddp_run):
    ck = ddp_run / "ck"
    expected = {f"checkpoint_step_{s}.pt" for s in range(1, STEPS + 1)}
    expected |= {"checkpoint_epoch_1.pt", "best_model.pt", "final_model.pt", "metrics.jsonl", "config.yaml",
                 "train.log", LOCK_NAME}
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


def _one_process_trainer(root: Path, resume: Path, batch_size: int = WORLD * BATCH, run_dir: str = "one",
                         **overrides) -> trainer_module.Trainer:
    """A single-process trainer resumed from a DDP checkpoint; with the ranks' batches together in its batch (the
    default), it draws both ranks' saved streams side by side (lmfast.train.streams)."""
    cfg = load_config(str(root / "tiny.yaml"), {"batch_size": batch_size, "checkpoint_dir": str(root / run_dir),
                                                "log_file": None, **overrides})
    return trainer_module.Trainer(cfg, torch.device("cpu"), resume=str(resume))


@pytest.mark.slow
def test_one_ddp_step_equals_one_process_step_on_both_ranks_batches(ddp_run):
    """Both ranks' micro-batches side by side, with the same gradient accumulation (no_sync on all but the last)."""
    ck = ddp_run / "ck"
    # from step 1 (not 0: warmup gives step 0 a learning rate of 0, which would leave the weights unchanged)
    trainer = _one_process_trainer(ddp_run, ck / "checkpoint_step_1.pt")
    assert isinstance(trainer.sampler, RankStreams) and len(trainer.sampler.samplers) == WORLD
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    loss, _, lr = trainer.train_step(1)
    assert lr > 0
    assert loss.item() == pytest.approx(_losses(ck)[2], rel=1e-5)  # logged loss = mean over the ranks
    ddp = read_checkpoint(ck / "checkpoint_step_2.pt")["model"]
    for name, value in trainer.model.state_dict().items():
        assert not torch.equal(before[name], ddp[name]), name
        torch.testing.assert_close(value, ddp[name], rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.slow
def test_the_same_global_batch_gives_the_same_loss_curve_under_ddp_as_in_one_process(ddp_run):
    ddp = _losses(ddp_run / "ck")
    trainer = _one_process_trainer(ddp_run, ddp_run / "ck" / "checkpoint_step_1.pt", run_dir="curve",
                                   checkpoint_steps=0, checkpoint_interval=0)
    trainer.fit()
    one = _losses(ddp_run / "curve")
    assert sorted(one) == list(range(2, STEPS + 1))
    assert one == pytest.approx({s: ddp[s] for s in one}, rel=1e-5)


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
    trainer = trainer_module.Trainer(cfg, torch.device("cpu"), resume=str(ddp_run / "ck" / "checkpoint_step_6.pt"))
    assert "holds the data-sampler state of 2 stream(s) of batch 8 but this run has 1 rank(s) of batch_size 8" \
        in caplog.text
    assert trainer.progress.step == 6
    expected = BatchSampler(trainer.train_data, BATCH, cfg.context_length, "cpu", seed=[cfg.seed, 0, 6])
    assert torch.equal(trainer.sampler()[0], expected()[0])


@pytest.mark.slow
def test_resume_under_torchrun_continues_the_same_loss_curve(ddp_run):
    ck, ck2 = ddp_run / "ck", ddp_run / "ck2"
    config = write_config(ddp_run, "resume.yaml", "ck2", checkpoint_steps=0)
    result = torchrun(["-m", "lmfast.train", "--config", str(config), "--resume", str(ck / "checkpoint_step_6.pt")],
                       cwd=ddp_run)
    assert result.returncode == 0, result.stderr[-3000:]
    whole, resumed = _losses(ck), _losses(ck2)
    assert sorted(resumed) == list(range(7, STEPS + 1))
    assert resumed == {s: whole[s] for s in resumed}  # bitwise on CPU
    assert "Resumed from" in (ck2 / "train.log").read_text()


_FAILING_RANK = """
import sys
import torch
from lmfast.train import distributed

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
    result = torchrun([str(script)], cwd=tmp_path, timeout=120)
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
