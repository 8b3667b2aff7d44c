"""Shared helpers for kernel tests: one dtype -> tolerance table and a verbose allclose."""

from __future__ import annotations

import importlib.util

import pytest
import torch

# (atol, rtol) per dtype, for kernel outputs and gradients against the fp32-internal references.
TOLERANCES = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (1e-2, 1e-2),
}

HAS_TRITON = importlib.util.find_spec("triton") is not None
requires_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (Linux only)")


def kernel_device() -> str:
    """Where kernel tests run: the GPU if there is one, else CPU tensors under TRITON_INTERPRET=1."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def force_cuda_attention_dtypes(monkeypatch) -> None:
    """Make the attention kernel apply CUDA's dtype rule (fp16/bf16 only, no fp32) to CPU tensors too.

    A test-only switch: the unmarked kernel tests run on a GPU under that rule, so running them under it on CPU
    shows, without a GPU, that they build inputs the kernel takes there.
    """
    from lmfast.kernels import attention

    cuda_rule = attention._allowed_dtypes(torch.device("cuda"))
    monkeypatch.setattr(attention, "_allowed_dtypes", lambda device: cuda_rule)


def force_fused_ops_on_cpu(monkeypatch) -> None:
    """Let ``backend: fused`` (and ``AdamW(fused=None)``) pick the Triton kernels for CPU tensors.

    A test-only switch: the kernels then run under the interpreter, so the fused model, its dispatch and its
    torch.compile trace can be tested without a GPU.
    """
    from lmfast.model import ops

    monkeypatch.setattr(ops, "fused_unavailable_reason", lambda device: None)


def assert_verbose_allclose(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float,
                            name: str = "tensor", max_print: int = 5) -> None:
    """Like torch.testing.assert_close, but names the first mismatching indices and their values."""
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    a, e = actual.detach().float().cpu(), expected.detach().float().cpu()
    bad = ~torch.isclose(a, e, atol=atol, rtol=rtol, equal_nan=True)
    if bad.any():
        idx = bad.nonzero()[:max_print]
        rows = [f"  at {tuple(i.tolist())}: got {a[tuple(i)].item():.6g}, expected {e[tuple(i)].item():.6g}"
                for i in idx]
        max_abs = (a - e).abs()[bad].max().item()
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {bad.numel()} elements differ beyond atol={atol}, rtol={rtol} "
            f"(max abs diff {max_abs:.3g}); first mismatches:\n" + "\n".join(rows)
        )


def force_gpu_generation(monkeypatch, generation: str = "sm90", table: dict | None = None) -> None:
    """Make ``backend: auto`` read ``generation``'s rows of the fused table (or of ``table``, {generation: {row:
    {"use_fused", "measured", "why"}}}) for CPU tensors: a test-only switch, with :func:`force_fused_ops_on_cpu`."""
    from lmfast.model import ops

    monkeypatch.setattr(ops, "gpu_generation", lambda device: generation)
    if table is not None:
        monkeypatch.setattr(ops, "fused_table", lambda: table)
