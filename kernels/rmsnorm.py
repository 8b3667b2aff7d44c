"""Fused RMSNorm forward and backward over the last dim.

Forward, per row x of length N:  ``rstd = 1 / sqrt(mean(x^2) + eps)``,  ``y = x * rstd * w``.
Backward, with ``g = dy * w``:  ``dx = rstd * g - x * rstd^3 * mean(g * x)``,  ``dw = sum_rows(dy * x * rstd)``.

One program normalizes one row held whole in registers (the Triton layer-norm tutorial), in fp32, and
saves ``rstd`` (fp32, one per row) for backward. The weight gradient is reduced deterministically, as in
Liger-Kernel's RMSNorm: a fixed number of backward programs each walk a contiguous run of rows, keep an
fp32 partial of ``dw`` in registers, and store it; the partials are summed afterwards. No atomics, so the
same input gives the same bits on every run.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from lmfast.kernels._launch import (
    FLOAT_DTYPES,
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
from torch.library import triton_op

__all__ = ["rmsnorm", "rmsnorm_fwd", "rmsnorm_bwd", "aot_specs", "MAX_HIDDEN", "AOT_SPILLS_ALLOWED"]

MAX_HIDDEN = 16384  # the longest row a program holds in registers
# Backward keeps x, dy, w and the dw partial of a whole row per program. At 16384 columns in 1024 threads that
# exceeds the 64 registers a thread may use, and ptxas spills ~250 bytes a thread to (L1-cached) local memory;
# at 8192 columns in 512 threads sm_80 spills 16 bytes (sm_90 none). See benchmarks/results/aot_registers_triton-*.md.
# Hidden sizes up to 4096 (every bundled config) compile without spills on both targets.
AOT_SPILLS_ALLOWED = {
    **{f"rmsnorm_bwd {t} BLOCK_N=16384": "hidden 8193-16384 only: 4 fp32 rows of 16384 in 1024 threads exceed the "
       "64 registers a thread may use" for t in ("fp32", "fp16", "bf16")},
    **{f"rmsnorm_bwd {t} BLOCK_N=8192": "hidden 4097-8192 only: 16 bytes on sm_80 at 128 registers, none on sm_90"
       for t in ("fp32", "fp16", "bf16")},
}
# No software pipelining: the forward has no loop, and in backward a second stage of x and dy buffers
# would need 128 KiB of shared memory at the longest rows.
_STAGES = 1
_MIN_BLOCK = 256  # smaller rows still get a 256 block: fewer variants to compile, masked lanes cost nothing


@triton.jit
def _rmsnorm_fwd_kernel(
    X, stride_x,  # input rows (M, N), row stride
    Y, stride_y,  # output rows (M, N), same dtype as X
    W,  # weight (N,)
    RSTD,  # fp32 (M,): 1 / rms of each row, saved for backward
    N,  # row length
    eps,  # added to mean(x^2) before the square root
    BLOCK_N: tl.constexpr,  # power of two >= N
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / N + eps)
    tl.store(RSTD + row, rstd)
    tl.store(Y + row * stride_y + cols, (x * rstd * w).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _rmsnorm_bwd_kernel(
    DY, stride_dy,  # incoming gradient rows (M, N)
    X, stride_x,  # forward input rows (M, N)
    DX, stride_dx,  # input gradient rows (M, N), same dtype as X
    W,  # weight (N,)
    RSTD,  # fp32 (M,) from forward
    DW_PARTIAL,  # fp32 (programs, N): this program's share of dw
    M, N,  # rows, row length
    rows_per_program,  # each program walks rows [pid * rows_per_program, (pid + 1) * rows_per_program)
    BLOCK_N: tl.constexpr,  # power of two >= N
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    dw = tl.zeros((BLOCK_N,), dtype=tl.float32)
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    # Walk rows by advancing 64-bit pointers, so row * stride never overflows int32.
    first = row_start.to(tl.int64)
    X += first * stride_x
    DY += first * stride_dy
    DX += first * stride_dx
    RSTD += first
    for _ in range(row_start, row_end):
        x = tl.load(X + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD)
        # w is re-read per row (an L1 hit) rather than held: at N = 16384 holding it too would spill.
        g = dy * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        dx = rstd * g - x * (rstd * rstd * rstd) * (tl.sum(g * x, axis=0) / N)
        tl.store(DX + cols, dx.to(DX.dtype.element_ty), mask=mask)
        dw += dy * x * rstd
        X += stride_x
        DY += stride_dy
        DX += stride_dx
        RSTD += 1
    tl.store(DW_PARTIAL + pid.to(tl.int64) * N + cols, dw, mask=mask)


def _check_inputs(x: torch.Tensor, weight: torch.Tensor) -> None:
    check_float_dtype("x", x)
    check_float_dtype("weight", weight)
    check_same_device(x=x, weight=weight)
    if weight.dim() != 1 or x.dim() == 0 or x.shape[-1] != weight.shape[0]:
        raise ValueError(
            f"rmsnorm needs weight of shape (d,) matching the last dim of x, got x {tuple(x.shape)} and "
            f"weight {tuple(weight.shape)}"
        )
    if x.shape[-1] > MAX_HIDDEN:
        raise ValueError(f"rmsnorm supports hidden sizes up to {MAX_HIDDEN}, got {x.shape[-1]}; use the reference")


def _weight_for(weight: torch.Tensor) -> torch.Tensor:
    # The kernel reads the weight in fp32 (mixed precision keeps fp32 weights anyway); a bf16/fp16 weight is
    # cast, exactly, at the cost of one d-element copy, so the compiled variants stay few.
    return weight.contiguous() if weight.dtype == torch.float32 else weight.float()


def _bwd_warps(block: int) -> int:
    # Backward holds x, dy, w and the dw partial per thread, so long rows need more warps than the forward:
    # 16 keep BLOCK_N=8192 at 127 registers without spills on sm_80/sm_90, and 16384 needs all 32
    # (benchmarks/results/aot_registers_triton-*.md).
    return {4096: 16, 8192: 16, 16384: 32}.get(block, row_warps(block))


def _bwd_programs(device: torch.device, rows: int) -> int:
    # A fixed count per device keeps the dw reduction order, and so its bits, the same from run to run.
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    return max(1, min(rows, 8 * sms))


def rmsnorm_fwd(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward launcher: returns ``y`` (same shape and dtype as ``x``) and ``rstd`` (fp32, one per row)."""
    _check_inputs(x, weight)
    n = x.shape[-1]
    x2 = x.reshape(-1, n).contiguous()
    w = _weight_for(weight)
    y = torch.empty_like(x2)
    rstd = torch.empty(x2.shape[0], dtype=torch.float32, device=x.device)
    if x2.shape[0] > 0:
        block = max(_MIN_BLOCK, row_block(n, MAX_HIDDEN))
        wrap_triton(_rmsnorm_fwd_kernel)[(x2.shape[0],)](
            x2, x2.stride(0), y, y.stride(0), w, rstd, n, eps, BLOCK_N=block, num_warps=row_warps(block),
            num_stages=_STAGES,
        )
    return y.view(x.shape), rstd


def rmsnorm_bwd(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward launcher: returns ``dx`` (like ``x``) and ``dw`` (like ``weight``)."""
    n = x.shape[-1]
    x2 = x.reshape(-1, n).contiguous()
    dy2 = dy.reshape(-1, n).to(x.dtype).contiguous()  # the incoming gradient is often an expanded stride-0 view
    w = _weight_for(weight)
    m = x2.shape[0]
    dx = torch.empty_like(x2)
    programs = _bwd_programs(x.device, m)
    partial = torch.empty((programs, n), dtype=torch.float32, device=x.device)
    if m > 0:
        block = max(_MIN_BLOCK, row_block(n, MAX_HIDDEN))
        wrap_triton(_rmsnorm_bwd_kernel)[(programs,)](
            dy2, dy2.stride(0), x2, x2.stride(0), dx, dx.stride(0), w, rstd, partial,
            m, n, cdiv(m, programs), BLOCK_N=block, num_warps=_bwd_warps(block), num_stages=_STAGES,
        )
    else:
        partial.zero_()
    return dx.view(x.shape), partial.sum(0).to(weight.dtype)


@triton_op("lmfast::rmsnorm_fwd", mutates_args=())
def _rmsnorm_op(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    return rmsnorm_fwd(x, weight, eps)


@triton_op("lmfast::rmsnorm_bwd", mutates_args=())
def _rmsnorm_bwd_op(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    return rmsnorm_bwd(dy, x, weight, rstd)


# Explicit fake (meta) kernels, so torch.compile traces the ops: the default fake of a triton_op runs its body,
# whose launch cannot take fake tensors under the interpreter ("Cannot access data pointer of Tensor").
@_rmsnorm_op.register_fake
def _rmsnorm_fake(x, weight, eps):
    _check_inputs(x, weight)
    return torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty(x.shape[:-1].numel(),
                                                                                   dtype=torch.float32)


@_rmsnorm_bwd_op.register_fake
def _rmsnorm_bwd_fake(dy, x, weight, rstd):
    return torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(weight)


def _setup_context(ctx, inputs, output) -> None:
    x, weight, _ = inputs
    ctx.save_for_backward(x, weight, output[1])


def _backward(ctx, dy: torch.Tensor, _drstd: torch.Tensor | None):
    x, weight, rstd = ctx.saved_tensors
    dx, dw = _rmsnorm_bwd_op(dy, x, weight, rstd)
    return dx, dw, None


_rmsnorm_op.register_autograd(_backward, setup_context=_setup_context)


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """RMSNorm over the last dim, fused: same function as :func:`lmfast.model.functional.rmsnorm`.

    x: (..., d) fp32/fp16/bf16 with d <= 16384; weight: (d,) fp32/fp16/bf16. Returns (..., d) in
    ``x.dtype``; differentiable in ``x`` and ``weight``.
    """
    return _rmsnorm_op(x, weight, eps)[0]


def aot_specs() -> list[AotSpec]:
    """Every kernel configuration the launchers can pick: each block size and each x dtype (weights read as fp32)."""
    specs = []
    block = _MIN_BLOCK
    while block <= MAX_HIDDEN:
        for dt in FLOAT_DTYPES:
            x = pointer(dt)
            fwd_sig = {"X": x, "stride_x": "i32", "Y": x, "stride_y": "i32", "W": "*fp32", "RSTD": "*fp32",
                       "N": "i32", "eps": "fp32", "BLOCK_N": "constexpr"}
            bwd_sig = {"DY": x, "stride_dy": "i32", "X": x, "stride_x": "i32", "DX": x, "stride_dx": "i32",
                       "W": "*fp32", "RSTD": "*fp32", "DW_PARTIAL": "*fp32", "M": "i32", "N": "i32",
                       "rows_per_program": "i32", "BLOCK_N": "constexpr"}
            label, const = f"{TRITON_DTYPE[dt]} BLOCK_N={block}", {"BLOCK_N": block}
            fwd = AotSpec(f"rmsnorm_fwd {label}", _rmsnorm_fwd_kernel, fwd_sig, const, row_warps(block), _STAGES)
            bwd = AotSpec(f"rmsnorm_bwd {label}", _rmsnorm_bwd_kernel, bwd_sig, const, _bwd_warps(block), _STAGES)
            specs += [fwd, bwd]
        block *= 2
    return specs
