"""Fused rotary position embedding (RoPE) on queries and keys together, forward and backward.

Adjacent pairs of the head dim rotate by a per-position angle:
``out[2i] = x[2i] cos_i - x[2i+1] sin_i``,  ``out[2i+1] = x[2i] sin_i + x[2i+1] cos_i``.
A rotation's transpose is the rotation by the opposite angle, so backward is the same kernel with
``sin`` negated: ``dx[2i] = dy[2i] cos_i + dy[2i+1] sin_i``,  ``dx[2i+1] = -dy[2i] sin_i + dy[2i+1] cos_i``.

One program takes one (batch, position) and rotates every head of q and then of k there, so the cos/sin
row is read once for all heads and both tensors (the one-launch q+k trick of Liger-Kernel's RoPE). Inputs
may be strided views (the usual ``(B, T, H, D) -> (B, H, T, D)`` transpose): only the head dim must be
contiguous. Computed in fp32, stored in the input dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from lmfast.kernels._launch import (
    FLOAT_DTYPES,
    TRITON_DTYPE,
    AotSpec,
    check_dtype,
    check_float_dtype,
    check_same_device,
    pointer,
    wrap_triton,
)
from torch.library import triton_op

__all__ = ["rope", "rope_fwd", "rope_bwd", "aot_specs", "MAX_HEAD_DIM"]

MAX_HEAD_DIM = 512
_MIN_HALF = 16
_TILE = 2048  # pairs per tile: BLOCK_H * BLOCK_HALF


@triton.jit
def _rope_rotate_heads(
    X, sxb, sxh, sxt,  # input base pointer and strides (batch, head, seq); head-dim stride 1
    Y, syb, syh, syt,  # output, same layout rules
    b, t, H, half,  # this program's batch and position, head count, pairs per head
    cos, sin,  # fp32 (1, BLOCK_HALF) angles of this position
    BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr,
):
    # Each head's row is loaded whole and split into (even, odd) halves in registers, so loads and stores
    # stay contiguous (vectorized) instead of two stride-2 accesses.
    heads = tl.arange(0, BLOCK_H)[:, None]
    cols = tl.arange(0, 2 * BLOCK_HALF)[None, :]
    x_row = X + b * sxb + t * sxt
    y_row = Y + b * syb + t * syt
    for h0 in range(0, H, BLOCK_H):
        mask = ((h0 + heads) < H) & (cols < 2 * half)
        x = tl.load(x_row + (h0 + heads) * sxh + cols, mask=mask, other=0.0).to(tl.float32)
        x0, x1 = tl.split(tl.reshape(x, (BLOCK_H, BLOCK_HALF, 2)))
        y = tl.reshape(tl.join(x0 * cos - x1 * sin, x0 * sin + x1 * cos), (BLOCK_H, 2 * BLOCK_HALF))
        tl.store(y_row + (h0 + heads) * syh + cols, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _rope_fwd_kernel(
    Q, sqb, sqh, sqt,  # queries (B, Hq, T, D) and their batch/head/seq strides
    K, skb, skh, skt,  # keys (B, Hk, T, D)
    QO, sqob, sqoh, sqot,  # rotated queries
    KO, skob, skoh, skot,  # rotated keys
    COS, SIN, scb, sct,  # fp32 (B or 1, T, D // 2) angle tables; scb = 0 shares one table over the batch
    T, Hq, Hk, half,  # sequence length, head counts, pairs per head (D // 2)
    sin_sign,  # +1.0 forward, -1.0 backward (rotation by the opposite angle)
    BLOCK_H: tl.constexpr,  # heads per tile
    BLOCK_HALF: tl.constexpr,  # power of two >= D // 2
):
    pid = tl.program_id(0).to(tl.int64)
    b = pid // T
    t = pid % T
    pairs = tl.arange(0, BLOCK_HALF)[None, :]
    at = b * scb + t * sct + pairs
    cos = tl.load(COS + at, mask=pairs < half, other=0.0)
    sin = tl.load(SIN + at, mask=pairs < half, other=0.0) * sin_sign
    _rope_rotate_heads(Q, sqb, sqh, sqt, QO, sqob, sqoh, sqot, b, t, Hq, half, cos, sin, BLOCK_H, BLOCK_HALF)
    _rope_rotate_heads(K, skb, skh, skt, KO, skob, skoh, skot, b, t, Hk, half, cos, sin, BLOCK_H, BLOCK_HALF)


def _blocks(head_dim: int) -> tuple[int, int]:
    block_half = max(_MIN_HALF, triton.next_power_of_2(head_dim // 2))
    return min(16, _TILE // block_half), block_half


def _warps(block_h: int, block_half: int) -> int:
    return 4 if block_h * block_half <= 1024 else 8


def _check_inputs(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    check_float_dtype("q", q)
    check_dtype("k", k, (q.dtype,))
    check_dtype("cos", cos, (torch.float32,))
    check_dtype("sin", sin, (torch.float32,))
    check_same_device(q=q, k=k, cos=cos, sin=sin)
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(f"rope needs q and k of shape (batch, heads, seq, head_dim), got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}")
    b, _, t, d = q.shape
    if k.shape[0] != b or k.shape[2:] != q.shape[2:]:
        raise ValueError(f"rope needs q and k with the same batch, seq and head_dim, got {tuple(q.shape)} and "
                         f"{tuple(k.shape)}")
    if d % 2 or d > MAX_HEAD_DIM:
        raise ValueError(f"rope needs an even head_dim of at most {MAX_HEAD_DIM}, got {d}")
    allowed = [(t, d // 2), (b, t, d // 2)]
    if tuple(cos.shape) not in allowed or cos.shape != sin.shape:
        raise ValueError(f"rope needs cos and sin of shape {allowed[0]} or {allowed[1]}, got {tuple(cos.shape)} "
                         f"and {tuple(sin.shape)}; build them with lmfast.model.functional.rope_cos_sin")


def _head_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _launch(q, k, cos, sin, sin_sign: float) -> tuple[torch.Tensor, torch.Tensor]:
    _check_inputs(q, k, cos, sin)
    q, k = _head_dim_contiguous(q), _head_dim_contiguous(k)
    cos, sin = cos.contiguous(), sin.contiguous()
    qo, ko = torch.empty(q.shape, dtype=q.dtype, device=q.device), torch.empty(k.shape, dtype=k.dtype, device=k.device)
    b, hq, t, d = q.shape
    if qo.numel() + ko.numel() == 0:
        return qo, ko
    scb = cos.stride(0) if cos.dim() == 3 else 0
    block_h, block_half = _blocks(d)
    wrap_triton(_rope_fwd_kernel)[(b * t,)](
        q, q.stride(0), q.stride(1), q.stride(2), k, k.stride(0), k.stride(1), k.stride(2),
        qo, qo.stride(0), qo.stride(1), qo.stride(2), ko, ko.stride(0), ko.stride(1), ko.stride(2),
        cos, sin, scb, cos.stride(-2), t, hq, k.shape[1], d // 2, sin_sign,
        BLOCK_H=block_h, BLOCK_HALF=block_half, num_warps=_warps(block_h, block_half), num_stages=1,
    )
    return qo, ko


def rope_fwd(q, k, cos, sin) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward launcher: rotated ``(q, k)``, fresh contiguous tensors of the same shapes and dtype."""
    return _launch(q, k, cos, sin, 1.0)


def rope_bwd(dq, dk, cos, sin) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward launcher: ``(dq, dk)`` rotated by the opposite angle (the transpose of the forward)."""
    return _launch(dq, dk, cos, sin, -1.0)


@triton_op("lmfast::rope", mutates_args=())
def _rope_op(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    return rope_fwd(q, k, cos, sin)


@triton_op("lmfast::rope_bwd", mutates_args=())
def _rope_bwd_op(dq: torch.Tensor, dk: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    return rope_bwd(dq, dk, cos, sin)


# Explicit fake (meta) kernels, so torch.compile traces the ops: the default fake of a triton_op runs its body,
# whose launch cannot take fake tensors under the interpreter ("Cannot access data pointer of Tensor").
@_rope_op.register_fake
def _rope_fake(q, k, cos, sin):
    _check_inputs(q, k, cos, sin)
    return torch.empty(q.shape, dtype=q.dtype, device=q.device), torch.empty(k.shape, dtype=k.dtype, device=k.device)


@_rope_bwd_op.register_fake
def _rope_bwd_fake(dq, dk, cos, sin):
    return _rope_fake(dq, dk, cos, sin)


def _setup_context(ctx, inputs, output) -> None:
    _, _, cos, sin = inputs
    ctx.save_for_backward(cos, sin)


def _backward(ctx, dq: torch.Tensor, dk: torch.Tensor):
    cos, sin = ctx.saved_tensors
    dq_in, dk_in = _rope_bwd_op(dq, dk, cos, sin)
    return dq_in, dk_in, None, None


_rope_op.register_autograd(_backward, setup_context=_setup_context)


def rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE on queries and keys in one launch: same function as :func:`lmfast.model.functional.rope`.

    q: (batch, heads_q, seq, head_dim), k: (batch, heads_k, seq, head_dim), one float dtype, head_dim even
    and <= 512; cos, sin: fp32 (seq, head_dim // 2) or (batch, seq, head_dim // 2). Returns rotated
    ``(q, k)``; differentiable in q and k (the angle tables get no gradient).
    """
    return _rope_op(q, k, cos, sin)


def aot_specs() -> list[AotSpec]:
    """Every configuration the launcher can pick: each head-dim block and each dtype (backward shares the kernel)."""
    specs = []
    block_half = _MIN_HALF
    while block_half <= MAX_HEAD_DIM // 2:
        block_h, _ = _blocks(2 * block_half)
        for dt in FLOAT_DTYPES:
            x = pointer(dt)
            sig = {}
            for name in ("Q", "K", "QO", "KO"):
                low = name.lower()
                sig.update({name: x, f"s{low}b": "i32", f"s{low}h": "i32", f"s{low}t": "i32"})
            sig.update({"COS": "*fp32", "SIN": "*fp32", "scb": "i32", "sct": "i32", "T": "i32", "Hq": "i32",
                        "Hk": "i32", "half": "i32", "sin_sign": "fp32", "BLOCK_H": "constexpr",
                        "BLOCK_HALF": "constexpr"})
            const = {"BLOCK_H": block_h, "BLOCK_HALF": block_half}
            specs.append(AotSpec(f"rope {TRITON_DTYPE[dt]} BLOCK_H={block_h} BLOCK_HALF={block_half}", _rope_fwd_kernel,
                                 sig, const, _warps(block_h, block_half), 1))
        block_half *= 2
    return specs
