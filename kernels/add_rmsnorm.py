"""The residual add before a pre-norm and the RMSNorm, fused: one read of the branch output and the residual, writes
of their sum and of the normed output in the dtype its consumer takes.

Forward, per row of length N: ``h = x + r``;  ``rstd = 1 / sqrt(mean(h^2) + eps)``;  ``y = h * rstd * w``.
Backward, with dh the gradient reaching h from the residual stream and ``g = dy * w``:
``dh_total = dh + rstd * g - h * rstd^3 * mean(g * h)`` is the gradient of both x and r (one pass merges the two
paths); ``dw = sum_rows(dy * h * rstd)``.

Why fuse what inductor could: a ``triton_op`` is opaque to inductor, so an unfused RMSNorm kernel would cut the
residual add before it and the cast after it off from any fusion (three passes over the activations where the
compiled reference makes one or two). Taking the add and the cast in, the kernel reads x and r once and writes h
and y once, the traffic of the compiled reference, with RMSNorm's hand-written backward in one pass over h, dy and
dh. Under autocast h stays fp32 (the residual stream) and y is written in bf16, what the q/k/v or w1/w3 projections
read, instead of fp32 then a cast. Whether that beats ``torch.compile`` of the reference is measured on a GPU
(``benchmarks/bench_add_rmsnorm.py``); ``backend: auto`` follows that measurement (lmfast/model/fused_table.json).

One program per row in the forward (the Triton layer-norm tutorial); the backward's dw is reduced as in
``rmsnorm.py``: a fixed number of programs each keep an fp32 partial over a run of rows, summed afterwards. No
atomics: the same input gives the same bits on every run.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from lmfast.kernels._launch import (
    TRITON_DTYPE,
    AotSpec,
    cdiv,
    check_float_dtype,
    check_same_device,
    pointer,
    row_block,
    row_warps,
    wrap_triton,
)
from lmfast.kernels.rmsnorm import MAX_HIDDEN, _bwd_programs, _bwd_warps, _weight_for
from torch.library import triton_op

__all__ = ["add_rmsnorm", "add_rmsnorm_fwd", "add_rmsnorm_bwd", "aot_specs", "AOT_SPILLS_ALLOWED"]

# Backward keeps h, dy, dh, w and the dw partial of a whole row: at the longest rows ptxas spills, as rmsnorm_bwd.
_COMBO_LABELS = ("bf16 x, fp32 residual, bf16 y", "fp16 x, fp32 residual, fp16 y", "bf16 x, bf16 residual, bf16 y",
                 "fp32 x, fp32 residual, fp32 y")
AOT_SPILLS_ALLOWED = {
    **{f"add_rmsnorm_bwd {combo}, BLOCK_N=16384": "hidden 8193-16384 only: 5 fp32 rows of 16384 in 1024 threads "
       "exceed the 64 registers a thread may use" for combo in _COMBO_LABELS},
    **{f"add_rmsnorm_bwd {combo}, BLOCK_N=8192": "hidden 4097-8192 only: a few bytes at 128 registers"
       for combo in _COMBO_LABELS},
}
_MIN_BLOCK = 256


@triton.jit
def _add_rmsnorm_fwd_kernel(
    X, stride_x,  # branch output rows (M, N)
    R, stride_r,  # residual rows (M, N)
    H, stride_h,  # out: h = x + r, in the promoted dtype of X and R
    Y, stride_y,  # out: rmsnorm(h) in the consumer's dtype
    W,  # fp32 weight (N,)
    RSTD,  # fp32 (M,) out: 1 / rms of each row of h
    N,  # row length
    eps,
    BLOCK_N: tl.constexpr,  # power of two >= N
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    r = tl.load(R + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32)
    h = (x + r).to(H.dtype.element_ty)
    tl.store(H + row * stride_h + cols, h, mask=mask)
    h = h.to(tl.float32)  # the norm reads h as stored, as the reference normalises the rounded sum
    rstd = 1.0 / tl.sqrt(tl.sum(h * h, axis=0) / N + eps)
    tl.store(RSTD + row, rstd)
    w = tl.load(W + cols, mask=mask, other=0.0)
    tl.store(Y + row * stride_y + cols, (h * rstd * w).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _add_rmsnorm_bwd_kernel(
    DY, stride_dy,  # gradient of y (M, N)
    DH, stride_dh,  # gradient reaching h from the residual stream (M, N); unread unless HAS_DH
    H, stride_h,  # the forward's h (M, N)
    DX, stride_dx,  # out: gradient of x, in x's dtype
    DR, stride_dr,  # out: gradient of r, in r's dtype (unwritten unless TWO_GRADS: then dx serves both)
    W, RSTD,  # fp32 weight (N,), fp32 (M,) from the forward
    DW_PARTIAL,  # fp32 (programs, N) out: this program's share of dw
    M, N, rows_per_program,  # rows, row length, rows each program walks
    HAS_DH: tl.constexpr, TWO_GRADS: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    dw = tl.zeros((BLOCK_N,), dtype=tl.float32)
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    first = row_start.to(tl.int64)  # walk rows by 64-bit pointers: row * stride never overflows int32
    DY += first * stride_dy
    DH += first * stride_dh
    H += first * stride_h
    DX += first * stride_dx
    DR += first * stride_dr
    RSTD += first
    for _ in range(row_start, row_end):
        h = tl.load(H + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD)
        g = dy * tl.load(W + cols, mask=mask, other=0.0)
        d = rstd * g - h * (rstd * rstd * rstd) * (tl.sum(g * h, axis=0) / N)
        if HAS_DH:
            d += tl.load(DH + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + cols, d.to(DX.dtype.element_ty), mask=mask)
        if TWO_GRADS:
            tl.store(DR + cols, d.to(DR.dtype.element_ty), mask=mask)
        dw += dy * h * rstd
        DY += stride_dy
        DH += stride_dh
        H += stride_h
        DX += stride_dx
        DR += stride_dr
        RSTD += 1
    tl.store(DW_PARTIAL + pid.to(tl.int64) * N + cols, dw, mask=mask)


def _check_inputs(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor) -> None:
    check_float_dtype("x", x)
    check_float_dtype("residual", residual)
    check_float_dtype("weight", weight)
    check_same_device(x=x, residual=residual, weight=weight)
    if residual.shape != x.shape:
        raise ValueError(f"add_rmsnorm needs x and residual of one shape, got {tuple(x.shape)} and "
                         f"{tuple(residual.shape)}")
    if weight.dim() != 1 or x.dim() == 0 or x.shape[-1] != weight.shape[0]:
        raise ValueError(f"add_rmsnorm needs weight of shape (d,) matching the last dim of x, got x {tuple(x.shape)} "
                         f"and weight {tuple(weight.shape)}")
    if x.shape[-1] > MAX_HIDDEN:
        raise ValueError(f"add_rmsnorm supports hidden sizes up to {MAX_HIDDEN}, got {x.shape[-1]}; use the reference")


def _rows(t: torch.Tensor) -> torch.Tensor:
    t = t.reshape(-1, t.shape[-1])
    return t if t.stride(-1) == 1 else t.contiguous()


def _block(n: int) -> int:
    return max(_MIN_BLOCK, row_block(n, MAX_HIDDEN))


def add_rmsnorm_fwd(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                    out_dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward launcher: ``(h, y, rstd)``; h in the promoted dtype of x and residual, y in ``out_dtype`` (default
    h's), rstd fp32 per row."""
    _check_inputs(x, residual, weight)
    n = x.shape[-1]
    x2, r2 = _rows(x), _rows(residual)
    h_dtype = torch.promote_types(x.dtype, residual.dtype)
    h = torch.empty(x2.shape, dtype=h_dtype, device=x.device)
    y = torch.empty(x2.shape, dtype=out_dtype or h_dtype, device=x.device)
    rstd = torch.empty(x2.shape[0], dtype=torch.float32, device=x.device)
    if x2.shape[0] > 0:
        block = _block(n)
        wrap_triton(_add_rmsnorm_fwd_kernel)[(x2.shape[0],)](
            x2, x2.stride(0), r2, r2.stride(0), h, h.stride(0), y, y.stride(0), _weight_for(weight), rstd, n, eps,
            BLOCK_N=block, num_warps=row_warps(block), num_stages=1)
    return h.view(x.shape), y.view(x.shape), rstd


def add_rmsnorm_bwd(dh: torch.Tensor | None, dy: torch.Tensor, h: torch.Tensor, weight: torch.Tensor,
                    rstd: torch.Tensor, x_dtype: torch.dtype, r_dtype: torch.dtype
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward launcher: ``(dx, dresidual, dw)``; dx and dresidual are one tensor when their dtypes agree."""
    n = h.shape[-1]
    h2, dy2 = _rows(h), _rows(dy)
    dh2 = _rows(dh) if dh is not None else h2
    m = h2.shape[0]
    dx = torch.empty(h2.shape, dtype=x_dtype, device=h.device)
    two = r_dtype != x_dtype
    dr = torch.empty(h2.shape, dtype=r_dtype, device=h.device) if two else dx
    programs = _bwd_programs(h.device, m)
    partial = torch.empty((programs, n), dtype=torch.float32, device=h.device)
    if m > 0:
        block = _block(n)
        wrap_triton(_add_rmsnorm_bwd_kernel)[(programs,)](
            dy2, dy2.stride(0), dh2, dh2.stride(0), h2, h2.stride(0), dx, dx.stride(0), dr, dr.stride(0),
            _weight_for(weight), rstd, partial, m, n, cdiv(m, programs), HAS_DH=dh is not None, TWO_GRADS=two,
            BLOCK_N=block, num_warps=_bwd_warps(block), num_stages=1)
    else:
        partial.zero_()
    return dx.view(h.shape), dr.view(h.shape), partial.sum(0).to(weight.dtype)


@triton_op("lmfast::add_rmsnorm", mutates_args=())
def _add_rmsnorm_op(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                    out_dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return add_rmsnorm_fwd(x, residual, weight, eps, out_dtype)


@triton_op("lmfast::add_rmsnorm_bwd", mutates_args=())
def _add_rmsnorm_bwd_op(dh: torch.Tensor | None, dy: torch.Tensor, h: torch.Tensor, weight: torch.Tensor,
                        rstd: torch.Tensor, x_dtype: torch.dtype, r_dtype: torch.dtype
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dx, dr, dw = add_rmsnorm_bwd(dh, dy, h, weight, rstd, x_dtype, r_dtype)
    # An op's outputs may not alias one another: where dx serves both, dresidual comes back empty.
    return dx, dr if r_dtype != x_dtype else dx.new_empty(0), dw


# Explicit fake (meta) kernels, so torch.compile traces the ops (see rmsnorm.py).
@_add_rmsnorm_op.register_fake
def _add_rmsnorm_fake(x, residual, weight, eps, out_dtype):
    _check_inputs(x, residual, weight)
    h_dtype = torch.promote_types(x.dtype, residual.dtype)
    return (x.new_empty(x.shape, dtype=h_dtype), x.new_empty(x.shape, dtype=out_dtype or h_dtype),
            x.new_empty(x.shape[:-1].numel(), dtype=torch.float32))


@_add_rmsnorm_bwd_op.register_fake
def _add_rmsnorm_bwd_fake(dh, dy, h, weight, rstd, x_dtype, r_dtype):
    dr = h.new_empty(h.shape if r_dtype != x_dtype else 0, dtype=r_dtype)
    return h.new_empty(h.shape, dtype=x_dtype), dr, torch.empty_like(weight)


def _setup_context(ctx, inputs, output) -> None:
    x, residual, weight, _, _ = inputs
    h, _, rstd = output
    ctx.save_for_backward(h, weight, rstd)
    ctx.dtypes = x.dtype, residual.dtype


def _backward(ctx, dh, dy, _drstd):
    h, weight, rstd = ctx.saved_tensors
    dx, dr, dw = _add_rmsnorm_bwd_op(dh, dy, h, weight, rstd, *ctx.dtypes)
    return dx, dr if dr.numel() or not dx.numel() else dx, dw, None, None


_add_rmsnorm_op.register_autograd(_backward, setup_context=_setup_context)


def add_rmsnorm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5,
                out_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``h = residual + x`` and ``y = rmsnorm(h) * weight`` in one pass: the twin of
    :func:`lmfast.model.functional.add_rmsnorm`.

    x, residual: (..., d) fp32/fp16/bf16, one shape, d <= 16384; weight: (d,). Returns ``(h, y)``: h in the promoted
    dtype of x and residual, y in ``out_dtype`` (default h's); differentiable in x, residual and weight.
    """
    h, y, _ = _add_rmsnorm_op(x, residual, weight, eps, out_dtype)
    return h, y


_COMBOS = ((torch.bfloat16, torch.float32, torch.bfloat16), (torch.float16, torch.float32, torch.float16),
           (torch.bfloat16, torch.bfloat16, torch.bfloat16), (torch.float32, torch.float32, torch.float32))


def aot_specs() -> list[AotSpec]:
    """Every block size for the dtype combinations a model makes: (x, residual, y) = (bf16, fp32, bf16) and
    (fp16, fp32, fp16) under autocast, all bf16, all fp32 (the weight read as fp32)."""
    specs = []
    block = _MIN_BLOCK
    while block <= MAX_HIDDEN:
        for xd, rd, yd in _COMBOS:
            x, r, h, y = pointer(xd), pointer(rd), pointer(torch.promote_types(xd, rd)), pointer(yd)
            fwd_sig = {"X": x, "stride_x": "i32", "R": r, "stride_r": "i32", "H": h, "stride_h": "i32", "Y": y,
                       "stride_y": "i32", "W": "*fp32", "RSTD": "*fp32", "N": "i32", "eps": "fp32",
                       "BLOCK_N": "constexpr"}
            bwd_sig = {"DY": y, "stride_dy": "i32", "DH": h, "stride_dh": "i32", "H": h, "stride_h": "i32",
                       "DX": x, "stride_dx": "i32", "DR": r, "stride_dr": "i32", "W": "*fp32", "RSTD": "*fp32",
                       "DW_PARTIAL": "*fp32", "M": "i32", "N": "i32", "rows_per_program": "i32",
                       "HAS_DH": "constexpr", "TWO_GRADS": "constexpr", "BLOCK_N": "constexpr"}
            label = f"{TRITON_DTYPE[xd]} x, {TRITON_DTYPE[rd]} residual, {TRITON_DTYPE[yd]} y, BLOCK_N={block}"
            specs.append(AotSpec(f"add_rmsnorm_fwd {label}", _add_rmsnorm_fwd_kernel, fwd_sig, {"BLOCK_N": block},
                                 row_warps(block), 1))
            specs.append(AotSpec(f"add_rmsnorm_bwd {label}", _add_rmsnorm_bwd_kernel, bwd_sig,
                                 {"HAS_DH": True, "TWO_GRADS": xd != rd, "BLOCK_N": block}, _bwd_warps(block), 1))
        block *= 2
    return specs
