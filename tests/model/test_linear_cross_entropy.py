"""lmfast.functional.linear_cross_entropy equals the unfused loss, holds one chunk of logits at a time, and the
model, the trainer and ``dtype: auto`` use it as the README says."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from _kernel_utils import assert_verbose_allclose
from torch.utils._python_dispatch import TorchDispatchMode

from lmfast import functional
from lmfast.model import TransformerLM, precision

N, D, V = 37, 19, 101  # odd sizes: chunks of 8 leave a ragged tail of 5


def _inputs(dtype=torch.float64, n=N, d=D, v=V, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=gen, dtype=dtype).requires_grad_()
    weight = torch.randn(v, d, generator=gen, dtype=dtype).requires_grad_()
    return hidden, weight, torch.randint(0, v, (n,), generator=gen)


def _loss_and_grads(loss_fn, hidden, weight, targets, upstream=1.0):
    hidden.grad = weight.grad = None
    loss = loss_fn(hidden, weight, targets)
    (loss * upstream).backward()
    return loss.detach(), hidden.grad.clone(), weight.grad.clone()


def _unfused(hidden, weight, targets):
    return functional.cross_entropy(hidden @ weight.T, targets)


@pytest.mark.parametrize("chunk_size", [1, 8, N, 1000, None])
def test_linear_cross_entropy_equals_the_unfused_loss_and_gradients_in_float64(chunk_size):
    h, w, t = _inputs(torch.float64)
    fused = _loss_and_grads(lambda a, b, c: functional.linear_cross_entropy(a, b, c, chunk_size), h, w, t, 3.0)
    expected = _loss_and_grads(_unfused, h, w, t, 3.0)  # the upstream 3 checks backward scales by it
    for name, a, e in zip(("loss", "d hidden", "d weight"), fused, expected, strict=True):
        assert a.dtype == torch.float64
        assert_verbose_allclose(a, e, 1e-12, 1e-12, name)


def test_linear_cross_entropy_equals_the_unfused_loss_and_gradients_in_float32():
    h, w, t = _inputs(torch.float32, seed=1)
    fused = _loss_and_grads(lambda a, b, c: functional.linear_cross_entropy(a, b, c, chunk_size=8), h, w, t)
    expected = _loss_and_grads(_unfused, h, w, t)
    for name, a, e in zip(("loss", "d hidden", "d weight"), fused, expected, strict=True):
        assert_verbose_allclose(a, e, 1e-6, 1e-5, name)


def test_linear_cross_entropy_takes_batched_hidden_states_and_targets():
    h, w, t = _inputs(torch.float64, n=24)
    loss = functional.linear_cross_entropy(h.view(4, 6, D), w, t.view(4, 6), chunk_size=5)
    assert_verbose_allclose(loss, _unfused(h, w, t), 1e-12, 1e-12, "loss")


class _LargestTensor(TorchDispatchMode):
    """Records the most elements of any tensor an op returns."""

    largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("loss_fn, holds_all_logits", [(functional.linear_cross_entropy, False), (_unfused, True)])
def test_linear_cross_entropy_never_holds_more_than_one_chunk_of_logits(loss_fn, holds_all_logits):
    n, d, v, chunk = 64, 8, 1000, 16
    h, w, t = _inputs(torch.float32, n=n, d=d, v=v)
    kwargs = {"chunk_size": chunk} if loss_fn is functional.linear_cross_entropy else {}
    with _LargestTensor() as mode:
        loss_fn(h, w, t, **kwargs).backward()
    # one chunk's logits (16 x 1000) is the largest thing the fused loss makes; d weight (1000 x 8) comes next
    assert mode.largest == (n * v if holds_all_logits else chunk * v)


def test_linear_cross_entropy_under_cpu_bf16_autocast_equals_the_unfused_loss():
    h, w, t = _inputs(torch.float32, n=64, d=32, v=500, seed=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = _loss_and_grads(lambda a, b, c: functional.linear_cross_entropy(a, b, c, chunk_size=16), h, w, t)
        expected = _loss_and_grads(_unfused, h, w, t)
    assert fused[1].dtype == fused[2].dtype == torch.float32  # gradients in the parameters' dtype
    # The same bf16 logits, softmax in fp32: the loss agrees to fp32 rounding. d logits is rounded to bf16 once in
    # both; the fused d weight sums the chunks' products in fp32, so it differs by bf16 rounding of the unfused.
    assert_verbose_allclose(fused[0], expected[0], 1e-6, 1e-6, "loss")
    assert_verbose_allclose(fused[1], expected[1], 1e-3, 1e-2, "d hidden")
    assert_verbose_allclose(fused[2], expected[2], 1e-3, 1e-2, "d weight")


def test_linear_cross_entropy_without_grad_only_computes_the_loss():
    h, w, t = _inputs(torch.float64)
    with torch.no_grad():
        loss = functional.linear_cross_entropy(h, w, t, chunk_size=8)
    assert not loss.requires_grad and h.grad is None
    assert_verbose_allclose(loss, _unfused(h, w, t), 1e-12, 1e-12, "loss")


def test_a_second_backward_through_a_retained_graph_raises_instead_of_reusing_gradients():
    h, w, t = _inputs(torch.float64)
    loss = functional.linear_cross_entropy(h, w, t, chunk_size=8)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize("make, match", [
    (lambda: (torch.randn(4, 8), torch.randn(10, 7), torch.zeros(4, dtype=torch.long)), "weight \\(vocab, d\\)"),
    (lambda: (torch.randn(4, 8), torch.randn(10, 8), torch.zeros(5, dtype=torch.long)), "leading shape"),
    (lambda: (torch.randn(4, 8), torch.randn(10, 8), torch.zeros(4)), "integer token ids"),
])
def test_linear_cross_entropy_rejects_bad_inputs_with_a_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        functional.linear_cross_entropy(*make())


def test_chunks_are_the_given_size_or_even_slices_of_the_logits_budget(monkeypatch):
    assert functional.lce_chunk_rows(100, 50, chunk_size=7) == 7
    monkeypatch.setattr(functional, "LCE_CHUNK_ELEMENTS", 1000)
    assert functional.lce_chunk_rows(100, 50) == 20  # 20 rows of 50 logits fill the budget exactly
    assert functional.lce_chunk_rows(45, 50) == 15  # 45 rows: three chunks of 15, not 20 + 20 + 5
    assert functional.lce_chunk_rows(10, 5000) == 1
    with pytest.raises(ValueError, match="chunk_size must be a positive"):
        functional.lce_chunk_rows(10, 5, chunk_size=0)


# ---------------------------------------------------------------------------------------------- model, trainer


def test_model_given_targets_returns_the_cross_entropy_of_its_logits_fused_or_not():
    torch.manual_seed(0)
    model = TransformerLM(vocab_size=97, context_length=16, d_model=32, num_layers=2, num_heads=4, d_ff=64,
                          rope_theta=10000.0, backend="reference")
    tokens, targets = torch.randint(0, 97, (2, 16)), torch.randint(0, 97, (2, 16))
    expected = torch.nn.functional.cross_entropy(model(tokens).flatten(0, 1), targets.flatten())
    for fused in (True, False):
        loss = model(tokens, targets=targets, fused_loss=fused)
        assert loss.shape == ()
        assert_verbose_allclose(loss, expected, 1e-6, 1e-6, f"loss, fused_loss={fused}")


@pytest.fixture
def trainer(tmp_path):
    from lmfast.train import trainer as trainer_module

    path = tmp_path / "tokens.npy"
    np.save(path, np.random.default_rng(0).integers(0, 256, 4000).astype(np.uint16))
    sets = dict(vocab_size=256, context_length=32, d_model=32, num_layers=1, num_heads=4, d_ff=64, batch_size=4,
                train_data_path=path, val_data_path=path, checkpoint_dir=tmp_path / "ck", log_file="null",
                compile="false", progress="false", dtype="float32")
    args = []
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    return trainer_module.build(args)


def test_trainer_loss_from_hidden_states_equals_the_full_logits_loss_with_the_same_gradients(trainer):
    x, y = trainer.sampler()
    results = {}
    for fused in (True, False):
        trainer.cfg.fused_loss = fused
        trainer.model.zero_grad(set_to_none=True)
        loss = trainer._loss(x, y)
        loss.backward()
        results[fused] = (loss.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters()})
    assert_verbose_allclose(results[True][0], results[False][0], 1e-6, 1e-6, "loss")
    for name, grad in results[True][1].items():
        assert_verbose_allclose(grad, results[False][1][name], 1e-6, 1e-4, name)


@pytest.fixture
def fresh_cpu_report():
    precision.cpu_bf16_native.cache_clear()  # the report is read once per process
    yield
    precision.cpu_bf16_native.cache_clear()


def test_dtype_auto_on_cpu_is_bf16_exactly_where_torch_reports_amx_and_says_why(monkeypatch, fresh_cpu_report):
    for tiles, expected in ((True, torch.bfloat16), (False, None)):
        precision.cpu_bf16_native.cache_clear()
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda tiles=tiles: tiles)
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda tiles=tiles: {"amx_bf16": tiles, "amx_tile": tiles})
        monkeypatch.setattr(torch.cpu, "_init_amx", lambda: True)
        dtype, why = precision.auto_autocast_dtype("cpu")
        assert dtype == expected and "AMX" in why
    precision.cpu_bf16_native.cache_clear()
    monkeypatch.setattr(torch.cpu, "_init_amx", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": True})
    assert precision.auto_autocast_dtype("cpu") == (None, "the CPU has AMX tiles but the OS did not enable them for "
                                                           "this process")


def test_trainer_logs_the_dtype_auto_choice_and_its_reason_once(trainer, caplog):
    trainer.cfg.dtype = "auto"
    with caplog.at_level(logging.INFO, logger="train"):
        chosen = trainer._autocast_dtype()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("dtype auto:")]
    assert len(lines) == 1 and "AMX" in lines[0]
    assert chosen == precision.auto_autocast_dtype("cpu")[0]
