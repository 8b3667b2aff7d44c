"""The fused backend's dispatch, exercised on CPU as it runs on CUDA: which op implementation each call takes.

On CUDA the fused Ops send fp32 attention to PyTorch's SDPA (tl.dot would round it to tf32) and fp16/bf16 to the
Triton kernel; a shape a kernel does not take runs the reference under ``backend: auto`` and is refused under an
explicit ``fused``; and the optimizer step follows the backend like every other op. A test-only switch
(tests/_kernel_utils.py) lets the fused backend build for CPU tensors, so these rules run without a GPU; the
attention kernel itself is replaced by a recorder here (bf16 cannot run under the interpreter, whose bf16 tl.dot
is wrong: triton issue 11584).
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from _kernel_utils import force_fused_ops_on_cpu, requires_triton

from lmfast.model import TransformerLM, functional, ops
from lmfast.train.config import TrainConfig

pytestmark = requires_triton
# These run the RMSNorm and RoPE kernels on CPU tensors, which only the interpreter can; a GPU runs the fused
# model natively in tests/model/test_fused_model.py.
interpreter_only = pytest.mark.skipif(torch.cuda.is_available(), reason="runs kernels on CPU tensors")

SIZES = dict(vocab_size=64, context_length=16, d_model=64, num_layers=1, num_heads=4, d_ff=96, rope_theta=10000.0)


@pytest.fixture
def kernel_calls(monkeypatch):
    """The dtypes of the q tensors the attention kernel's forward launcher saw (it returns the reference's out)."""
    from lmfast.kernels import attention as attn_mod

    force_fused_ops_on_cpu(monkeypatch)
    calls = []

    def record(q, k, v, scale, *rope_and_documents):
        calls.append(q.dtype)
        out = functional.causal_attention(q.float(), k.float(), v.float(), scale).to(q.dtype)
        return out, q.new_zeros(q.shape[:3], dtype=torch.float32)

    monkeypatch.setattr(attn_mod, "attention_fwd", record)
    return calls


@pytest.mark.parametrize("dtype, takes_kernel", [(torch.float32, False), (torch.float16, True),
                                                 (torch.bfloat16, True)])
def test_fused_attention_sends_fp32_to_sdpa_and_half_precision_to_the_kernel(kernel_calls, dtype, takes_kernel):
    attention = ops.get_ops("fused", "cpu").attention
    q, k, v = (torch.randn(1, 2, 8, 16, dtype=dtype) for _ in range(3))
    out = attention(q, k, v)
    assert out.dtype == dtype and out.shape == q.shape
    assert kernel_calls == ([dtype] if takes_kernel else [])


def test_fused_attention_beyond_the_kernels_head_dims_runs_sdpa(kernel_calls):
    attention = ops.get_ops("fused", "cpu").attention
    q, k, v = (torch.randn(1, 1, 8, 288, dtype=torch.float16) for _ in range(3))
    expected = functional.causal_attention(q.float(), k.float(), v.float()).half()
    torch.testing.assert_close(attention(q, k, v), expected, atol=2e-3, rtol=2e-3)
    assert kernel_calls == []


@interpreter_only
def test_fused_model_of_any_even_head_dim_up_to_256_builds_and_runs_the_kernel(kernel_calls):
    # 80 is neither 32, 64 nor 128: the kernel used to raise "head_dim must be one of 32, 64, 128" on it.
    model = TransformerLM(**{**SIZES, "d_model": 160, "num_heads": 2}, backend="fused", dtype=torch.float16)
    logits = model(torch.zeros(1, 8, dtype=torch.long))
    assert logits.shape == (1, 8, 64) and kernel_calls == [torch.float16]


@interpreter_only
def test_auto_backend_takes_the_reference_op_where_a_kernel_cannot_take_the_shape(kernel_calls, caplog):
    caplog.set_level(logging.INFO, logger="lmfast")
    model = TransformerLM(**{**SIZES, "d_model": 576, "num_heads": 2}, backend="auto", dtype=torch.float16)
    assert model.ops.name == "fused"
    assert "reference where the attention kernel takes head dims up to 256, got 288" in caplog.text
    model(torch.zeros(1, 8, dtype=torch.long))
    assert kernel_calls == []


def test_explicit_fused_backend_refuses_a_shape_its_kernels_cannot_take(monkeypatch):
    force_fused_ops_on_cpu(monkeypatch)
    with pytest.raises(ValueError, match="attention kernel takes head dims up to 256, got 288.*backend: auto"):
        TransformerLM(**{**SIZES, "d_model": 576, "num_heads": 2}, backend="fused")


@interpreter_only
def test_fused_backend_where_it_cannot_run_is_a_value_error_naming_why():
    # A ValueError, so the trainer prints it as one line with exit code 2 instead of a traceback.
    with pytest.raises(ValueError, match="backend 'fused' cannot run here: .*CUDA.*Use backend: reference"):
        TransformerLM(**SIZES, backend="fused", device="cpu")


@pytest.mark.parametrize("backend, fused", [("reference", False), ("fused", True), ("auto", True)])
def test_trainer_optimizer_follows_the_resolved_backend(monkeypatch, backend, fused):
    # Where the kernels can run (forced here), backend: reference must still take the reference AdamW step:
    # the trainer used to build AdamW without fused=, and fused=None takes the kernel wherever it can run.
    from lmfast.kernels import adamw as adamw_kernel
    from lmfast.train import Trainer

    force_fused_ops_on_cpu(monkeypatch)
    model = TransformerLM(**SIZES, backend=backend)
    optimizer = Trainer._build_optimizer(SimpleNamespace(model=model, cfg=TrainConfig()))
    assert {g["fused"] for g in optimizer.param_groups} == {fused}
    launches = []
    monkeypatch.setattr(adamw_kernel, "adamw_step", lambda *a, **kw: launches.append(len(a[0])))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    assert bool(launches) == fused
