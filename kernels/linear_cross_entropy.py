"""Fused linear cross-entropy: the mean cross-entropy of ``hidden @ weight.T`` without the (tokens, vocab) logits.

Forward, for N tokens with logits ``z_i = W h_i`` (V values) and targets ``t_i``:
``loss = (1/N) sum_i lse(z_i) - z_i[t_i]``, ``lse(z) = log sum_j exp(z_j)``.
Backward: ``dz_i = (softmax(z_i) - onehot(t_i)) / N``, ``dh_i = dz_i W``, ``dW = sum_i dz_i^T h_i``.

Tokens go through in chunks (:func:`lmfast.model.functional.lce_chunk_rows`). Per chunk, cuBLAS makes the logits;
one Triton program per row reads its row twice, once for an online max and sum of ``exp`` (the lse) and the
row's loss, once to overwrite the row in place with ``softmax - onehot``; then cuBLAS folds that into ``dh``
and into an fp32 ``dW`` (the 1/N of the mean rides on the matmuls, so a bf16/fp16 ``dz`` never underflows).
The gradient is made in the forward, as in Liger-Kernel's fused linear cross-entropy, so the backward only
multiplies ``dh`` and ``dW`` by the incoming scalar. Row losses are stored and summed afterwards: no atomics,
the same bits on every run. Never more than one chunk of logits exists at a time.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from lmfast.kernels._launch import (
    FLOAT_DTYPES,
    TRITON_DTYPE,
    AotSpec,
    check_float_dtype,
    check_same_device,
    pointer,
    row_warps,
    wrap_triton,
)
from torch.library import triton_op

from lmfast.model.functional import _check_lce_inputs, lce_chunk_rows, lce_compute_dtype

__all__ = ["linear_cross_entropy", "linear_cross_entropy_fwd", "aot_specs"]

# A program walks its row in blocks of at most this many logits: 16 warps hold 8192 fp32 values in 16
# registers a thread. Smaller vocabularies get one block of the next power of two (at least _MIN_BLOCK_V).
_MAX_BLOCK_V = 8192
_MIN_BLOCK_V = 1024


@triton.jit
def _lce_rows_kernel(
    Z, stride_z,  # this chunk's logits (rows, V) and row stride; overwritten with softmax - onehot if WITH_GRAD
    TARGETS,  # int64 (rows,): target id of each row, in [0, V)
    LOSS,  # fp32 (rows,): lse - z[target] of each row
    V,  # vocabulary size, the row length
    WITH_GRAD: tl.constexpr,  # write the gradient over the logits
    BLOCK_V: tl.constexpr,  # logits per step along the row, a power of two
):
    row = tl.program_id(0).to(tl.int64)
    Z += row * stride_z
    target = tl.load(TARGETS + row)
    # Online softmax statistics: running max m and sum s of exp(z - m), rescaled when m grows.
    m = float("-inf")
    s = 0.0
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        z = tl.load(Z + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(z, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), axis=0)
        m = m_new
    lse = m + tl.log(s)
    # Masked, so a target outside [0, V) never reads outside the row (the trainer's data checks ids < vocab).
    z_target = tl.load(Z + target, mask=(target >= 0) & (target < V), other=0.0).to(tl.float32)
    tl.store(LOSS + row, lse - z_target)
    if WITH_GRAD:
        for start in range(0, V, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            z = tl.load(Z + cols, mask=cols < V, other=0.0).to(tl.float32)
            p = tl.exp(z - lse)
            grad = tl.where(cols == target, p - 1.0, p)
            tl.store(Z + cols, grad.to(Z.dtype.element_ty), mask=cols < V)


def _block_v(vocab: int) -> int:
    return min(_MAX_BLOCK_V, max(_MIN_BLOCK_V, triton.next_power_of_2(vocab)))


def _check_inputs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> None:
    _check_lce_inputs(hidden, weight, targets)
    check_float_dtype("hidden", hidden)
    check_float_dtype("weight", weight)
    check_same_device(hidden=hidden, weight=weight, targets=targets)
    if hidden.dim() != 2:
        raise ValueError(f"linear_cross_entropy_fwd takes hidden as (tokens, d), got {tuple(hidden.shape)}; "
                         "flatten it, or call linear_cross_entropy")


def linear_cross_entropy_fwd(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                             compute_dtype: torch.dtype, chunk_rows: int, want_dh: bool, want_dw: bool
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward launcher: ``(loss, dh, dw)``, the fp32 mean loss and, of that loss, ``d hidden`` (like hidden) and
    ``d weight`` (like weight), each an empty tensor when not wanted.

    hidden: (N, d); weight: (V, d); targets: (N,) integer; the matmuls run in ``compute_dtype``.
    """
    _check_inputs(hidden, weight, targets)
    n, vocab = hidden.shape[0], weight.shape[0]
    h, w = hidden.to(compute_dtype), weight.to(compute_dtype)
    t = targets.to(torch.int64).contiguous()
    dw = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_dw else None
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    dh_parts = []
    block = _block_v(vocab)
    scale = 1.0 / max(n, 1)
    for start in range(0, n, chunk_rows):
        end = min(start + chunk_rows, n)
        h_c = h[start:end]
        logits = h_c @ w.T  # (c, V), contiguous
        losses = torch.empty(end - start, dtype=torch.float32, device=hidden.device)
        wrap_triton(_lce_rows_kernel)[(end - start,)](
            logits, logits.stride(0), t[start:end], losses, vocab, WITH_GRAD=want_dh or want_dw, BLOCK_V=block,
            num_warps=row_warps(block), num_stages=1,
        )
        total = total + losses.sum()
        if want_dh:
            dh_parts.append((logits @ w).mul_(scale).to(hidden.dtype))
        if dw is not None:
            if logits.dtype == torch.float32:
                dw.addmm_(logits.T, h_c, alpha=scale)
            else:  # a mixed-dtype add reads the bf16/fp16 product and accumulates in fp32
                dw.add_(logits.T @ h_c, alpha=scale)
    dh = torch.cat(dh_parts) if dh_parts else hidden.new_empty((0, hidden.shape[1]) if want_dh else (0,))
    return total / n, dh, dw.to(weight.dtype) if dw is not None else weight.new_empty(0)


@triton_op("lmfast::linear_cross_entropy", mutates_args=())
def _lce_op(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, compute_dtype: torch.dtype,
            chunk_rows: int, want_dh: bool, want_dw: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return linear_cross_entropy_fwd(hidden, weight, targets, compute_dtype, chunk_rows, want_dh, want_dw)


# An explicit fake (meta) kernel: the default fake of a triton_op runs its body, whose raw-kernel launch the
# interpreter (TRITON_INTERPRET=1) cannot do on fake tensors. torch.compile still traces into the body.
@_lce_op.register_fake
def _lce_fake(hidden, weight, targets, compute_dtype, chunk_rows, want_dh, want_dw):
    _check_inputs(hidden, weight, targets)
    loss = hidden.new_empty((), dtype=torch.float32)
    dh = hidden.new_empty(hidden.shape if want_dh else (0,))
    dw = weight.new_empty(weight.shape if want_dw else (0,))
    return loss, dh, dw


def _setup_context(ctx, inputs, output) -> None:
    _, dh, dw = output
    _, _, _, _, _, want_dh, want_dw = inputs
    ctx.want = (want_dh, want_dw)
    ctx.save_for_backward(dh, dw)


def _backward(ctx, grad_loss: torch.Tensor, _grad_dh, _grad_dw):
    # dh and dw are internal outputs (the public function returns the loss alone): their gradients are None.
    dh, dw = ctx.saved_tensors
    want_dh, want_dw = ctx.want
    return (dh * grad_loss if want_dh else None, dw * grad_loss if want_dw else None, None, None, None, None, None)


_lce_op.register_autograd(_backward, setup_context=_setup_context)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk_size: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T`` against ``targets``, fused: the Triton twin of
    :func:`lmfast.model.functional.linear_cross_entropy`, with the same arguments, chunks and autocast rule.

    hidden: (..., d) fp32/fp16/bf16; weight: (vocab, d); targets: (...) integer ids in [0, vocab), hidden's
    leading shape. Returns a 0-d fp32 tensor; differentiable in hidden and weight.
    """
    _check_lce_inputs(hidden, weight, targets)
    flat, flat_targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    rows = lce_chunk_rows(flat.shape[0], weight.shape[0], chunk_size)
    grad = torch.is_grad_enabled()
    want_dh, want_dw = grad and hidden.requires_grad, grad and weight.requires_grad
    return _lce_op(flat, weight, flat_targets, lce_compute_dtype(hidden, weight), rows, want_dh, want_dw)[0]


def aot_specs() -> list[AotSpec]:
    """Every kernel configuration the launcher can pick: each block size, logits dtype and with/without gradient."""
    specs = []
    block = _MIN_BLOCK_V
    while block <= _MAX_BLOCK_V:
        for dt in FLOAT_DTYPES:
            for with_grad in (True, False):
                signature = {"Z": pointer(dt), "stride_z": "i32", "TARGETS": "*i64", "LOSS": "*fp32", "V": "i32",
                             "WITH_GRAD": "constexpr", "BLOCK_V": "constexpr"}
                name = f"lce_rows {TRITON_DTYPE[dt]} BLOCK_V={block} WITH_GRAD={int(with_grad)}"
                specs.append(AotSpec(name, _lce_rows_kernel, signature, {"WITH_GRAD": with_grad, "BLOCK_V": block},
                                     row_warps(block), 1))
        block *= 2
    return specs
