"""``distributed: fsdp`` on CPU with gloo: FSDP2 training equals one process on the same global batch, sharded
checkpoints resume on another world size (1 -> 2 ranks, 2 -> 1) with the same losses, the plain final model is
what generate takes, the optimizer, the gradient clip and torch.compile work on the sharded model, and the loss
the model takes in forward (fused or not) equals the plain model's."""

import copy
import os
import shutil

import numpy as np
import pytest
import torch
import torch.distributed as dist
from _torchrun import BATCH, STEPS, WORLD, make_data, torchrun, write_config
from _torchrun import losses as _losses

from lmfast import optim
from lmfast.checkpoint import load_model_state, read_checkpoint
from lmfast.data import BatchSampler
from lmfast.functional import cross_entropy
from lmfast.model import TransformerLM
from lmfast.optim import AdamW, clip_grad_norm_
from lmfast.train import trainer as trainer_module
from lmfast.train.config import load_config
from lmfast.train.distributed import DistContext
from lmfast.train.lifecycle import LOCK_NAME
from lmfast.train.run_setup import _archive_earlier_run
from lmfast.train.run_state import find_resume
from lmfast.train.sharded import is_sharded, shard_model
from lmfast.train.streams import RankStreams, resume_sampler, saved_streams

RESUME_AT = 6


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory):
    """``one``: one process, ``distributed: fsdp``, batch 2 x 8, 12 steps, a sharded checkpoint every 3 steps, the
    fused loss (the model takes it in forward, where FSDP has gathered the LM head weight).
    ``two``: torchrun with 2 ranks of batch 8 (the same global batch), ``--resume auto`` from one's step-6
    checkpoint, the only thing in its directory. (One launch serves every test here: each costs seconds.)"""
    root = tmp_path_factory.mktemp("fsdp")
    make_data(root)
    common = dict(distributed="fsdp", checkpoint_steps=3, fused_loss=True)
    one = load_config(str(write_config(root, "one.yaml", "one", batch_size=WORLD * BATCH, **common)))
    trainer_module.Trainer(one, torch.device("cpu")).fit()
    (root / "two").mkdir()
    name = f"checkpoint_step_{RESUME_AT}.dcp"
    shutil.copytree(root / "one" / name, root / "two" / name)
    config = write_config(root, "two.yaml", "two", sample_prompt="to be", sample_tokens=8, **common)
    result = torchrun(["-m", "lmfast.train", "--config", str(config), "--resume", "auto"], cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root


@pytest.mark.slow
def test_two_fsdp_ranks_continue_a_one_process_run_with_the_same_losses(fsdp_runs):
    one, two = _losses(fsdp_runs / "one"), _losses(fsdp_runs / "two")
    assert sorted(one) == list(range(1, STEPS + 1)) and sorted(two) == list(range(RESUME_AT + 1, STEPS + 1))
    assert two == pytest.approx({s: one[s] for s in two}, rel=1e-5)
    log = (fsdp_runs / "two" / "train.log").read_text()
    assert f"Resumed from {fsdp_runs / 'two' / f'checkpoint_step_{RESUME_AT}.dcp'}" in log  # --resume auto found it
    assert "new stream" not in log and "Sample:" in log  # the streams continued; rank 0 sampled from the full model


@pytest.mark.slow
def test_an_fsdp_run_writes_sharded_training_checkpoints_and_one_plain_final_model(fsdp_runs):
    two = fsdp_runs / "two"
    sharded = {f"checkpoint_step_{s}.dcp" for s in range(RESUME_AT, STEPS + 1, 3)} | {"checkpoint_epoch_1.dcp"}
    plain = {"best_model.pt", "final_model.pt", "metrics.jsonl", "train.log", LOCK_NAME}
    assert {p.name for p in two.iterdir()} == sharded | plain  # no temporary directory left behind
    assert {p.name for p in (two / "checkpoint_step_9.dcp").iterdir()} == {".metadata", "__0_0.distcp",
                                                                           "__1_0.distcp", "run_state.pt"}
    final = read_checkpoint(two / "final_model.pt")
    assert all(type(t) is torch.Tensor for t in final["model"].values())
    assert final["world_size"] == WORLD and len(final["data"]) == 1  # one stream, shared by the two ranks
    cfg = load_config(str(fsdp_runs / "two.yaml"))
    model = TransformerLM(cfg.vocab_size, cfg.context_length, cfg.d_model, cfg.num_layers, cfg.num_heads, cfg.d_ff,
                          cfg.rope_theta, backend="reference")
    load_model_state(model, final["model"], "final_model.pt")  # as generate and export load it
    one = read_checkpoint(fsdp_runs / "one" / "final_model.pt")
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, one["model"][name], rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
    step = final["optimizer"]["state"][0]["step"]  # the optimizer as one process saves it: keyed by index
    assert step.item() == STEPS and final["optimizer"]["state"].keys() == one["optimizer"]["state"].keys()


@pytest.mark.slow
def test_a_two_rank_fsdp_checkpoint_resumes_in_one_process_with_the_same_losses(fsdp_runs):
    overrides = {"checkpoint_dir": str(fsdp_runs / "three"), "log_file": None}
    cfg = load_config(str(fsdp_runs / "one.yaml"), overrides)
    trainer = trainer_module.Trainer(cfg, torch.device("cpu"), resume=str(fsdp_runs / "two" / "checkpoint_step_9.dcp"))
    trainer.fit()
    one, three = _losses(fsdp_runs / "one"), _losses(fsdp_runs / "three")
    assert sorted(three) == [10, 11, 12]
    assert three == pytest.approx({s: one[s] for s in three}, rel=1e-5)


def test_resume_auto_takes_the_newest_complete_sharded_checkpoint(tmp_path):
    older, newer, incomplete = (tmp_path / n for n in ("checkpoint_step_1.pt", "checkpoint_step_2.dcp",
                                                       "checkpoint_step_3.dcp"))
    older.write_bytes(b"")
    for directory in (newer, incomplete):
        directory.mkdir()
        (directory / ".metadata").write_bytes(b"")
    (newer / "run_state.pt").write_bytes(b"")  # written last: a directory without it is a save that did not finish
    for age, path in enumerate((older, newer, incomplete)):
        os.utime(path, ns=(age * 10**9, age * 10**9))
    assert find_resume("auto", tmp_path) == newer


def test_a_sharded_checkpoint_is_named_to_generate_and_moved_aside_by_a_fresh_run(tmp_path):
    sharded = tmp_path / "checkpoint_step_1.dcp"
    sharded.mkdir()
    (sharded / ".metadata").write_bytes(b"")
    with pytest.raises(ValueError, match="is a sharded checkpoint .* pass the run's final_model.pt"):
        read_checkpoint(sharded)  # what generate and export call
    _archive_earlier_run(tmp_path)
    assert not sharded.exists() and len(list(tmp_path.glob("previous-*/checkpoint_step_1.dcp/.metadata"))) == 1


def test_saved_streams_continue_on_another_world_size_when_the_global_batch_is_kept():
    data = np.arange(1000)

    def new_sampler(batch, seed=None):
        return BatchSampler(data, batch, 8, "cpu", seed=seed)

    two = [new_sampler(4, seed=[0, r]) for r in range(2)]
    one = resume_sampler([s.state_dict() for s in two], 0, 1, 8, new_sampler)  # 2 ranks of 4 -> 1 process of 8
    assert isinstance(one, RankStreams) and torch.equal(one()[0], torch.cat([s()[0] for s in two]))
    single = new_sampler(8, seed=0)
    halves = [resume_sampler(single.state_dict(), r, 2, 4, new_sampler) for r in range(2)]  # 1 of 8 -> 2 of 4
    assert torch.equal(torch.cat([h()[0] for h in halves]), single()[0])
    assert [h.stream_states() for h in halves] == [[single.state_dict()], []]  # the stream is saved once
    assert saved_streams(one, DistContext())[0] == [s.state_dict() for s in two]
    assert resume_sampler(single.state_dict(), 0, 1, 4, new_sampler) is None  # another global batch
    assert resume_sampler([single.state_dict()] * 3, 0, 2, 12, new_sampler) is None  # 2 ranks cannot split 3


@pytest.fixture
def world_of_one():
    """A one-rank gloo process group in this process, for FSDP without launching anything."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield DistContext(0, 1, 0).device_mesh()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_adamw_clip_and_per_block_compile_on_an_fsdp_model_equal_the_plain_model(world_of_one, monkeypatch):
    torch.manual_seed(0)
    plain = TransformerLM(256, 16, 32, 2, 2, 64, 10000.0, backend="reference")
    sharded = copy.deepcopy(plain)
    shard_model(sharded, world_of_one, None, "aot_eager")  # the trainer passes inductor; aot_eager compiles faster
    assert is_sharded(sharded) and not is_sharded(plain)
    kinds = []
    step_fn = optim.adamw_step_fn

    def recording(fused, params):
        kinds.extend(type(p) for p in params)
        return step_fn(fused, params)

    monkeypatch.setattr(optim, "adamw_step_fn", recording)
    x = torch.randint(0, 256, (2, 17), generator=torch.Generator().manual_seed(1))
    results = []
    for model in (plain, sharded):
        optimizer = AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        for _ in range(2):
            loss = model(x[:, :-1], targets=x[:, 1:])  # the trainer's loss: fused, in forward
            loss.backward()
            norm = clip_grad_norm_(list(model.parameters()), 0.5)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            assert type(norm) is torch.Tensor  # the whole norm, not a DTensor
            results += [loss.item(), norm.item()]
    assert results[4:] == pytest.approx(results[:4], rel=1e-6)
    assert torch.Tensor in kinds and not any("DTensor" in k.__name__ for k in kinds)  # the step got local shards
    for name, value in plain.state_dict().items():
        torch.testing.assert_close(sharded.state_dict()[name].full_tensor(), value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fused_loss", [True, False])
def test_an_fsdp_model_given_targets_returns_the_plain_models_loss_and_gradients(world_of_one, fused_loss):
    torch.manual_seed(0)
    plain = TransformerLM(256, 16, 32, 2, 2, 64, 10000.0, backend="reference")
    sharded = copy.deepcopy(plain)
    shard_model(sharded, world_of_one, None, None)
    x, y = torch.randint(0, 256, (2, 2, 16), generator=torch.Generator().manual_seed(1))
    losses = [model(x, targets=y, fused_loss=fused_loss) for model in (plain, sharded)]
    for loss in losses:
        loss.backward()
    torch.testing.assert_close(losses[1], losses[0])
    assert cross_entropy(plain(x), y).item() == pytest.approx(losses[0].item(), rel=1e-6)
    grads = dict(sharded.named_parameters())
    for name, p in plain.named_parameters():
        torch.testing.assert_close(grads[name].grad.full_tensor(), p.grad, rtol=1e-5, atol=1e-6,
                                   msg=lambda m, n=name: f"{n}: {m}")


def test_fsdp_gathers_parameters_in_the_run_dtype_and_keeps_fp32_master_weights(world_of_one):
    torch.manual_seed(0)
    model = TransformerLM(256, 16, 32, 1, 2, 64, 10000.0, backend="reference")
    shard_model(model, world_of_one, torch.bfloat16, None)
    logits = model(torch.zeros(1, 4, dtype=torch.long))
    assert logits.dtype == torch.bfloat16
    logits.float().sum().backward()
    # after backward: the sharded fp32 parameters again, with gradients reduced in fp32
    assert {(p.dtype, p.grad.dtype) for p in model.parameters()} == {(torch.float32, torch.float32)}


@pytest.mark.parametrize("wrap", ["fsdp", "fsdp_compiled_blocks", "ddp"])
def test_activation_checkpointing_under_fsdp_and_ddp_keeps_the_plain_models_loss_and_gradients(world_of_one, wrap):
    torch.manual_seed(0)
    plain = TransformerLM(256, 16, 32, 3, 4, 64, 10000.0, backend="reference", num_kv_heads=2, tie_embeddings=True)
    model = copy.deepcopy(plain)
    model.set_activation_checkpointing("selective" if wrap == "ddp" else "full", 2)
    if wrap == "ddp":
        step_model = torch.nn.parallel.DistributedDataParallel(model)
    else:
        shard_model(model, world_of_one, None, "aot_eager" if wrap == "fsdp_compiled_blocks" else None)
        step_model = model
    x, y = torch.randint(0, 256, (2, 2, 16), generator=torch.Generator().manual_seed(1))
    losses = [m(x, targets=y) for m in (plain, step_model)]
    for loss in losses:
        loss.backward()
    torch.testing.assert_close(losses[1], losses[0])
    grads = dict(model.named_parameters())
    for name, p in plain.named_parameters():
        g = grads[name].grad
        g = g.full_tensor() if hasattr(g, "full_tensor") else g
        torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
