"""The trainer's arithmetic against independent computations: the learning rate each step applies (warmup,
cosine, floor, after a resume), gradient accumulation against one batch k times larger in float64, gradient
clipping, and which parameters AdamW decays."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _kernel_utils import assert_verbose_allclose

from lmfast.data import BatchSampler
from lmfast.model import RMSNorm
from lmfast.optim import cosine_lr
from lmfast.train import Trainer
from lmfast.train.config import load_config

VOCAB = 64
TINY = dict(vocab_size=VOCAB, context_length=16, d_model=32, num_layers=2, num_heads=2, d_ff=64, batch_size=4,
            max_learning_rate=3e-3, min_learning_rate=3e-4, warmup_iters=3, cosine_cycle_iters=8,
            weight_decay=0.05, betas=[0.9, 0.95], eps=1e-8, log_interval=1, checkpoint_interval=0, val_data_path=None,
            compile="false", backend="reference", device="cpu", progress=False, log_file=None,
            dtype="float32")  # exact comparisons: fp32 even on CPUs where dtype auto picks bf16 (AMX)


@pytest.fixture
def tokens(tmp_path):
    path = tmp_path / "train.npy"
    np.save(path, np.random.default_rng(0).integers(0, VOCAB, 5000, dtype=np.uint16))
    return path


def _trainer(tokens, run_dir, resume=None, **overrides) -> Trainer:
    cfg = load_config(None, {**TINY, "train_data_path": str(tokens), "checkpoint_dir": str(run_dir), **overrides})
    return Trainer(cfg, torch.device("cpu"), resume=resume)


class _StepRecorder:
    """Wraps ``trainer.optimizer.step`` to record, at each optimizer step, the groups' lr, the gradients the
    optimizer sees, and every parameter before and after together with its AdamW state."""

    def __init__(self, trainer: Trainer):
        self.trainer, self.steps = trainer, []
        self._step = trainer.optimizer.step
        trainer.optimizer.step = self

    def __call__(self, *args, **kwargs):
        opt = self.trainer.optimizer
        params = [p for g in opt.param_groups for p in g["params"]]
        before = [p.detach().clone() for p in params]
        grads = [p.grad.detach().clone() for p in self.trainer.model.parameters()]  # in the model's order
        out = self._step(*args, **kwargs)
        self.steps.append(dict(
            lrs=[g["lr"] for g in opt.param_groups], grads=grads, before=before,
            after=[p.detach().clone() for p in params],
            wd=[g["weight_decay"] for g in opt.param_groups for _ in g["params"]],
            state=[(opt.state[p]["exp_avg"].clone(), opt.state[p]["exp_avg_sq"].clone(), opt.state[p]["step"].item())
                   for p in params]))
        return out


def _schedule(step: int) -> float:
    return cosine_lr(step, TINY["max_learning_rate"], TINY["min_learning_rate"], TINY["warmup_iters"],
                     TINY["cosine_cycle_iters"])


def _metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _assert_adamw_applied(record: dict, lr: float, step: int) -> None:
    """Each parameter moved by exactly ``p <- p (1 - lr wd) - lr m_hat / (sqrt(v_hat) + eps)`` with ``lr``: the
    learning rate read back from the parameters themselves, not from the optimizer's bookkeeping."""
    beta1, beta2 = TINY["betas"]
    for i, (p0, p1, wd, (m, v, t)) in enumerate(zip(record["before"], record["after"], record["wd"], record["state"],
                                                     strict=True)):
        p0, m, v = p0.double(), m.double(), v.double()
        update = (m / (1 - beta1**t)) / ((v / (1 - beta2**t)).sqrt() + TINY["eps"])
        expected = p0 * (1 - lr * wd) - lr * update
        assert_verbose_allclose(p1, expected, 1e-7, 1e-6, f"step {step} parameter {i}")


def test_every_step_applies_the_scheduled_lr_to_every_group_through_warmup_cosine_and_floor(tokens, tmp_path):
    run_dir = tmp_path / "ck"
    trainer = _trainer(tokens, run_dir, max_steps=10)  # steps 0-2 warm up, 3-8 decay, 9 sits on the floor
    rec = _StepRecorder(trainer)
    trainer.fit()
    expected = [_schedule(s) for s in range(10)]
    assert expected[0] == 0.0 and expected[3] == TINY["max_learning_rate"] and expected[9] == TINY["min_learning_rate"]
    assert [r["lrs"] for r in rec.steps] == [[lr, lr] for lr in expected]
    logged = [(m["step"], m["lr"]) for m in _metrics(run_dir) if "lr" in m]
    assert logged == [(s + 1, lr) for s, lr in enumerate(expected)]  # the record of step index s says step s + 1
    for s, (record, lr) in enumerate(zip(rec.steps, expected, strict=True)):
        _assert_adamw_applied(record, lr, s)


def test_a_resumed_run_applies_and_logs_the_lr_and_numbers_of_a_run_never_stopped(tokens, tmp_path):
    whole = _trainer(tokens, tmp_path / "whole", max_steps=10)
    whole.fit()
    first = _trainer(tokens, tmp_path / "ck", max_steps=6, checkpoint_steps=3)
    first.fit()  # leaves checkpoint_step_3.pt, checkpoint_step_6.pt and final_model.pt
    resumed = _trainer(tokens, tmp_path / "ck", resume="auto", max_steps=10)
    assert resumed.progress.step == 6  # the newest checkpoint, not checkpoint_step_3.pt
    rec = _StepRecorder(resumed)
    resumed.fit()
    assert [r["lrs"][0] for r in rec.steps] == [_schedule(s) for s in range(6, 10)]
    for s, record in enumerate(rec.steps, start=6):
        _assert_adamw_applied(record, _schedule(s), s)
    volatile = {"time", "tokens_per_s"}
    strip = lambda records: [{k: v for k, v in m.items() if k not in volatile} for m in records]  # noqa: E731
    assert strip(_metrics(tmp_path / "ck")) == strip(_metrics(tmp_path / "whole"))  # loss, lr, norm, tokens_seen


def _float64_twin_steps(trainer: Trainer, twin: torch.nn.Module, steps: int, clip: float):
    """Train ``twin`` (a float64 copy of the trainer's model before training) the textbook way, one big batch per
    step: the trainer's k micro-batches of b sequences (its sampler's stream, drawn afresh) stacked into one batch
    of k*b, ``F.cross_entropy`` over all of it, torch's clipping and ``torch.optim.AdamW``.

    Yields (loss, gradients after clipping, norm before clipping) of each step.
    """
    cfg = trainer.cfg
    sampler = BatchSampler(trainer.train_data, cfg.batch_size, cfg.context_length, seed=cfg.seed)
    gains = {id(m.weight) for m in twin.modules() if isinstance(m, RMSNorm)}
    params = list(twin.parameters())
    opt = torch.optim.AdamW([{"params": [p for p in params if id(p) not in gains]},
                             {"params": [p for p in params if id(p) in gains], "weight_decay": 0.0}],
                            lr=0.0, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    for step in range(steps):
        batches = [sampler() for _ in range(cfg.gradient_accumulation_steps)]
        x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
        loss = F.cross_entropy(twin(x).flatten(0, 1), y.flatten())
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
        grads = [p.grad.clone() for p in params]
        for group in opt.param_groups:
            group["lr"] = trainer.lr_at(step)
        opt.step()
        opt.zero_grad()
        yield loss.item(), grads, norm.item()


@pytest.mark.parametrize("clip", [0.0, 0.05], ids=["no-clipping", "clipping"])
def test_accumulated_micro_batches_give_the_gradients_and_step_of_one_batch_k_times_larger(tokens, tmp_path, clip):
    trainer = _trainer(tokens, tmp_path / "ck", max_steps=3, batch_size=2, gradient_accumulation_steps=4,
                       warmup_iters=0, grad_clip_norm=clip)
    trainer.model.double()  # in place: the optimizer keeps these parameters; gradients exact to ~1e-15
    twin = copy.deepcopy(trainer.model)
    rec = _StepRecorder(trainer)
    trainer.fit()
    logged = [m for m in _metrics(tmp_path / "ck") if "loss" in m]
    reference = list(_float64_twin_steps(trainer, twin, 3, clip))
    assert len(rec.steps) == len(logged) == len(reference) == 3
    for step, (record, log, (loss, grads, norm)) in enumerate(zip(rec.steps, logged, reference, strict=True)):
        if clip:
            assert norm > 2 * clip, "the clipping case must actually clip"
        assert log["loss"] == pytest.approx(loss, rel=1e-6), f"step {step}: logged loss is not the big batch's"
        assert log["grad_norm"] == pytest.approx(norm, rel=1e-6), f"step {step}: logged norm (before clipping)"
        assert log["tokens_seen"] == (step + 1) * 4 * 2 * TINY["context_length"]  # k micro-batches of b sequences
        scale = max(g.abs().max().item() for g in grads)
        for i, (ours, ref) in enumerate(zip(record["grads"], grads, strict=True)):
            assert_verbose_allclose(ours, ref, 1e-8 * scale, 1e-6, f"step {step} gradient {i}")
    for i, (ours, ref) in enumerate(zip(trainer.model.parameters(), twin.parameters(), strict=True)):
        assert_verbose_allclose(ours, ref, 1e-8, 1e-6, f"parameter {i} after 3 steps")


def test_adamw_decays_the_matrices_by_the_configs_weight_decay_and_never_the_rmsnorm_gains(tokens, tmp_path):
    trainer = _trainer(tokens, tmp_path / "ck", weight_decay=0.037, betas=[0.8, 0.97], eps=3e-7)
    model = trainer.model
    gains = [m.weight for m in model.modules() if isinstance(m, RMSNorm)]
    matrix_names = ("_proj.weight", "w1.weight", "w2.weight", "w3.weight", "embeddings.weight", "head.weight")
    matrices = [p for n, p in model.named_parameters() if n.endswith(matrix_names)]
    assert len(gains) == 2 * TINY["num_layers"] + 1 and len(matrices) == 7 * TINY["num_layers"] + 2
    assert len(gains) + len(matrices) == len(list(model.parameters()))
    groups = {g["weight_decay"]: {id(p) for p in g["params"]} for g in trainer.optimizer.param_groups}
    assert groups == {0.037: {id(p) for p in matrices}, 0.0: {id(p) for p in gains}}
    for g in trainer.optimizer.param_groups:
        assert g["betas"] == (0.8, 0.97) and g["eps"] == 3e-7


def test_validation_is_the_mean_loss_over_the_same_eval_iters_batches_every_time(tokens, tmp_path):
    trainer = _trainer(tokens, tmp_path / "ck", val_data_path=str(tokens), eval_iters=3)
    first = trainer.evaluate()
    trainer.sampler()  # training draws in between must not move the validation batches
    assert trainer.evaluate() == first
    sampler = BatchSampler(trainer.val_data, TINY["batch_size"], TINY["context_length"], seed=[trainer.cfg.seed, 1])
    with torch.no_grad():
        losses = [F.cross_entropy(trainer.model(x).flatten(0, 1), y.flatten()).item()
                  for x, y in (sampler() for _ in range(3))]
    assert first == pytest.approx(np.mean(losses), rel=1e-6)


def test_validation_reads_the_validation_split_never_the_training_data(tokens, tmp_path):
    val = tmp_path / "val.npy"
    np.save(val, np.random.default_rng(1).integers(0, VOCAB // 2, 3000, dtype=np.uint16))  # other tokens than train's
    trainer = _trainer(tokens, tmp_path / "ck", val_data_path=str(val), eval_iters=2)

    def mean_loss(path) -> float:  # the file as it is on disk, not through the trainer's own handles
        sampler = BatchSampler(np.load(path), TINY["batch_size"], TINY["context_length"], seed=[trainer.cfg.seed, 1])
        with torch.no_grad():
            return float(np.mean([F.cross_entropy(trainer.model(x).flatten(0, 1), y.flatten()).item()
                                  for x, y in (sampler() for _ in range(2))]))

    got = trainer.evaluate()
    assert got == pytest.approx(mean_loss(val), rel=1e-6) and got != pytest.approx(mean_loss(tokens), rel=1e-3)
