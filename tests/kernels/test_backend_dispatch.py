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
from _kernel_utils import force_fused_ops_on_cpu, force_gpu_generation, requires_triton

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
def test_auto_backend_takes_the_reference_op_where_a_kernel_cannot_take_the_shape(kernel_calls, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="lmfast")
    force_gpu_generation(monkeypatch, "sm90", _table(True))
    model = TransformerLM(**{**SIZES, "d_model": 576, "num_heads": 2}, backend="auto", dtype=torch.float16)
    assert model.ops.name == "auto"
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


@pytest.mark.parametrize("backend, fused", [("reference", False), ("fused", True), ("auto", False)])
def test_trainer_optimizer_follows_the_resolved_backend(monkeypatch, backend, fused):
    # Where the kernels can run (forced here), backend: reference must still take the reference AdamW step:
    # the trainer used to build AdamW without fused=, and fused=None takes the kernel wherever it can run. Under
    # auto the committed table decides: its adamw rows are unmeasured, so the reference step.
    from lmfast.kernels import adamw as adamw_kernel
    from lmfast.train import Trainer

    force_fused_ops_on_cpu(monkeypatch)
    force_gpu_generation(monkeypatch, "sm90")
    model = TransformerLM(**SIZES, backend=backend)
    optimizer = Trainer._build_optimizer(SimpleNamespace(model=model, cfg=TrainConfig()))
    assert {g["fused"] for g in optimizer.param_groups} == {fused}
    launches = []
    monkeypatch.setattr(adamw_kernel, "adamw_step", lambda *a, **kw: launches.append(len(a[0])))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    assert bool(launches) == fused


# ------------------------------------------------------------------------------- backend: auto follows the table


def _table(use_fused: bool, **rows: bool) -> dict:
    """A fused table whose every row says ``use_fused`` except ``rows``, for generation "sm90"."""
    return {"sm90": {op: {"use_fused": rows.get(op, use_fused), "measured": None, "why": f"test row {op}"}
                     for op in ops.FUSED_OPS}, "default": {}}


def test_committed_table_has_every_row_for_every_generation_and_says_why():
    table = ops.fused_table()
    assert {"sm80", "sm90", "default"} <= set(table)
    for generation, rows in table.items():
        assert set(rows) == set(ops.FUSED_OPS), generation
        for op, row in rows.items():
            assert isinstance(row["use_fused"], bool) and row["why"], (generation, op)
            # A kernel is used only where measured faster, or for a feature the reference lacks.
            assert not row["use_fused"] or row["measured"] is not None or row["why"].startswith("feature"), (
                generation, op)


def test_committed_table_takes_document_masked_attention_and_the_reference_elsewhere_until_measured(monkeypatch,
                                                                                                 caplog):
    caplog.set_level(logging.INFO, logger="lmfast")
    force_fused_ops_on_cpu(monkeypatch)
    force_gpu_generation(monkeypatch, "sm90")
    chosen = ops.get_ops("auto", "cpu")
    assert chosen.name == "auto" and chosen.choices["document_attention"] == "fused"
    assert [op for op, c in chosen.choices.items() if c == "fused"] == ["document_attention"]
    assert chosen.rmsnorm is functional.rmsnorm and chosen.optimizer == "reference" and not chosen.fold_clip
    assert "ops auto: rmsnorm takes the reference (fused_table.json sm90/rmsnorm: unmeasured" in caplog.text
    assert "document_attention takes the reference" not in caplog.text


@pytest.mark.parametrize("row", ["rmsnorm", "add_rmsnorm", "rope", "linear_cross_entropy"])
def test_auto_takes_a_kernel_exactly_where_its_table_row_says(monkeypatch, row):
    force_fused_ops_on_cpu(monkeypatch)
    force_gpu_generation(monkeypatch, "sm90", _table(False, **{row: True}))
    chosen, fused = ops.get_ops("auto", "cpu"), ops.get_ops("fused", "cpu")
    for op in ("rmsnorm", "add_rmsnorm", "rope", "linear_cross_entropy"):
        assert getattr(chosen, op) is (getattr(fused, op) if op == row else getattr(ops.REFERENCE, op)), op


def test_auto_attention_rows_route_whole_windows_and_document_masks_apart(kernel_calls, monkeypatch):
    force_gpu_generation(monkeypatch, "sm90", _table(False, document_attention=True))
    chosen = ops.get_ops("auto", "cpu")
    q, k, v = (torch.randn(1, 2, 8, 16, dtype=torch.float16) for _ in range(3))
    chosen.attention(q, k, v)
    assert kernel_calls == []  # attention row: reference
    cos, sin = functional.rope_cos_sin(10000.0, 16, torch.arange(8))
    chosen.rope_attention(q, k, v, cos, sin)
    assert kernel_calls == []  # rope_attention row: rope then the reference attention
    chosen.attention(q, k, v, doc_ids=torch.zeros(1, 8, dtype=torch.int32))
    chosen.rope_attention(q, k, v, cos, sin, doc_ids=torch.zeros(1, 8, dtype=torch.int32))
    assert kernel_calls == [torch.float16, torch.float16]  # document_attention row: the kernel, RoPE inside


def test_auto_optimizer_rows_pick_the_fused_step_and_the_folded_clip(monkeypatch):
    force_fused_ops_on_cpu(monkeypatch)
    force_gpu_generation(monkeypatch, "sm90", _table(False, clip_adamw=True))
    chosen = ops.get_ops("auto", "cpu")
    assert chosen.optimizer == "fused" and chosen.fold_clip
    force_gpu_generation(monkeypatch, "sm90", _table(False, adamw=True))
    chosen = ops.get_ops("auto", "cpu")
    assert chosen.optimizer == "fused" and not chosen.fold_clip


def test_a_generation_the_table_lacks_reads_its_default_rows(monkeypatch):
    force_fused_ops_on_cpu(monkeypatch)
    force_gpu_generation(monkeypatch, "sm120")
    assert ops.get_ops("auto", "cpu").choices == {op: "fused" if r["use_fused"] else "reference"
                                                  for op, r in ops.fused_table()["default"].items()}


def test_fused_backend_forces_every_kernel_and_reference_none(monkeypatch):
    force_fused_ops_on_cpu(monkeypatch)
    fused = ops.get_ops("fused", "cpu")
    assert set(fused.choices.values()) == {"fused"} and fused.optimizer == "fused" and fused.fold_clip
    reference = ops.get_ops("reference", "cpu")
    assert reference is ops.REFERENCE and reference.optimizer == "reference" and not reference.fold_clip
