"""Tile helpers of the attention kernels (``_attention_kernels.py``): base pointers, RoPE angles, q/k tiles as two
halves of the head dim (rotated as they are loaded with RoPE, rotated back as they are stored), whole rows, and the
causal / same-document mask.

A q or k tile is held as two (BLOCK, HALF) halves and ``S = Qa Ka^T + Qb Kb^T``. Without RoPE the halves are the first
and second half of the columns; with RoPE they are the even and odd members of each rotated pair (``x[2i]``,
``x[2i+1]``): the row is loaded whole (one vectorised load), split in registers, rotated in fp32 and rounded to the
input dtype as ``functional.rope`` rounds it. The dot product does not care in which order the head dim is summed, so
the pairs never need interleaving again until a gradient is stored.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _rows(X, b, h, stride_b, stride_h):
    """The base pointer of one (batch, head)'s rows, in int64 (batch * stride can pass 2**31)."""
    return X + b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h


@triton.jit
def _angles(COS, SIN, rows, row_ok, stride_t, HEAD_DIM: tl.constexpr, HALF: tl.constexpr):
    """cos and sin (BLOCK, HALF) fp32 of ``rows``' positions (zeros past the rows and pairs that exist)."""
    pairs = tl.arange(0, HALF)
    at = rows[:, None] * stride_t + pairs[None, :]
    ok = row_ok[:, None] & (pairs < HEAD_DIM // 2)[None, :]
    return tl.load(COS + at, mask=ok, other=0.0), tl.load(SIN + at, mask=ok, other=0.0)


@triton.jit
def _load_halves(X, rows, row_ok, stride_t, cos, sin,
                 HEAD_DIM: tl.constexpr, HALF: tl.constexpr, ROPE: tl.constexpr, MASK_ROWS: tl.constexpr):
    """A (BLOCK, HEAD_DIM) tile as two (BLOCK, HALF) halves: column halves, or with ROPE the rotated pairs."""
    EVEN_D: tl.constexpr = HEAD_DIM == 2 * HALF
    if ROPE:
        cols = tl.arange(0, 2 * HALF)
        ptrs = X + rows[:, None] * stride_t + cols[None, :]
        if EVEN_D and not MASK_ROWS:
            x = tl.load(ptrs)
        else:
            x = tl.load(ptrs, mask=row_ok[:, None] & (cols < HEAD_DIM)[None, :], other=0.0)
        x0, x1 = tl.split(tl.reshape(x, (x.shape[0], HALF, 2)))
        x0, x1 = x0.to(tl.float32), x1.to(tl.float32)
        a = (x0 * cos - x1 * sin).to(x.dtype)
        b = (x0 * sin + x1 * cos).to(x.dtype)
    else:
        cols = tl.arange(0, HALF)
        ptrs = X + rows[:, None] * stride_t + cols[None, :]
        if EVEN_D and not MASK_ROWS:
            a = tl.load(ptrs)
            b = tl.load(ptrs + HALF)
        else:
            a = tl.load(ptrs, mask=row_ok[:, None] & (cols < HEAD_DIM)[None, :], other=0.0)
            b = tl.load(ptrs + HALF, mask=row_ok[:, None] & (cols + HALF < HEAD_DIM)[None, :], other=0.0)
    return a, b


@triton.jit
def _store_halves(X, rows, row_ok, stride_t, a, b, cos, sin,
                  HEAD_DIM: tl.constexpr, HALF: tl.constexpr, ROPE: tl.constexpr):
    """Store fp32 halves (a, b) as rows of X, rotated back by R^T first with ROPE (the gradient of the rotation)."""
    if ROPE:
        cols = tl.arange(0, 2 * HALF)
        x = tl.reshape(tl.join(a * cos + b * sin, b * cos - a * sin), (a.shape[0], 2 * HALF))
        tl.store(X + rows[:, None] * stride_t + cols[None, :], x.to(X.dtype.element_ty),
                 mask=row_ok[:, None] & (cols < HEAD_DIM)[None, :])
    else:
        cols = tl.arange(0, HALF)
        ptrs = X + rows[:, None] * stride_t + cols[None, :]
        tl.store(ptrs, a.to(X.dtype.element_ty), mask=row_ok[:, None] & (cols < HEAD_DIM)[None, :])
        tl.store(ptrs + HALF, b.to(X.dtype.element_ty), mask=row_ok[:, None] & (cols + HALF < HEAD_DIM)[None, :])


@triton.jit
def _load_rows(X, rows, row_ok, stride_t, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, MASK_ROWS: tl.constexpr):
    """A whole (BLOCK, BLOCK_D) tile (v, o, dO: never rotated)."""
    cols = tl.arange(0, BLOCK_D)
    ptrs = X + rows[:, None] * stride_t + cols[None, :]
    if HEAD_DIM == BLOCK_D and not MASK_ROWS:
        return tl.load(ptrs)
    return tl.load(ptrs, mask=row_ok[:, None] & (cols < HEAD_DIM)[None, :], other=0.0)


@triton.jit
def _visible(offs_m, offs_n, starts, CAUSAL: tl.constexpr, DOC: tl.constexpr):
    """(BLOCK_M, BLOCK_N): may query row m see key n (n <= m when CAUSAL, n >= its document's start when DOC)."""
    if CAUSAL:
        ok = offs_m[:, None] >= offs_n[None, :]
        if DOC:
            ok = ok & (offs_n[None, :] >= starts[:, None])
    else:
        ok = offs_n[None, :] >= starts[:, None]
    return ok
