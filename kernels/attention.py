"""Causal flash attention in Triton: forward, and a backward with separate dK/dV and dQ passes (no atomics).

Math, per (batch, head), with s = ``scale`` (default ``1 / sqrt(head_dim)``) and causal rows i >= j::

    S = s * Q K^T,   P = softmax_row(S masked to j <= i),   O = P V
    dV = P^T dO,     dP = dO V^T,   dS = P * (dP - delta),   delta_i = sum_d dO_id O_id  (= rowsum(P * dP))
    dQ = s * dS K,   dK = s * dS^T Q

The forward never builds S: it walks key blocks with the online softmax (running row max m and row sum l,
rescaling the accumulator by exp(m_old - m_new)), in base 2 with ``s * log2(e)`` folded into one multiply so
each score costs one FMA and one ``exp2``. Key blocks left of the query block's diagonal need no mask, blocks
right of it are skipped, and only the diagonal block is masked (which also masks the tail keys past ``seq``,
since a valid query row never reaches them). It saves only O and the base-2 log-sum-exp per row,
``lse2_i = m_i + log2(l_i)``, so the backward rebuilds P exactly as ``exp2(s log2(e) q.k - lse2)``.

The backward follows the FlashAttention-2 paper and the Triton tutorial ``06-fused-attention.py``: a pre-pass
computes delta; the dK/dV pass gives each program one key block and walks the query blocks at and below its
diagonal; the dQ pass gives each program one query block and walks the key blocks at and left of its diagonal.
Each output block is owned by one program, so the reductions are deterministic and need no atomics. Rows past
``seq`` load as zeros with ``lse2 = +inf``, so their P is 0 without an extra mask.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from lmfast.kernels._launch import TRITON_DTYPE, AotSpec, cdiv, check_dtype, check_same_device, interpreting, pointer
from torch.library import triton_op, wrap_triton

__all__ = ["attention", "attention_fwd", "attention_bwd", "aot_specs", "HEAD_DIMS"]

HEAD_DIMS = (32, 64, 128)
_LOG2E = 1.4426950408889634  # exp(x) == exp2(x * log2(e))
_MAX_GRID_Y = 65535  # grids are (sequence blocks, batch * heads)


@triton.jit
def _bh_rows(X, off_bh, seq_len, HEAD_DIM: tl.constexpr):
    """The (seq, HEAD_DIM) rows of one (batch, head) in a contiguous tensor, 16-byte aligned (see _aligned)."""
    # The hint gives 16-byte vector loads even where the pointer's alignment is not known at compile time
    # (ahead-of-time builds); without it every element is a separate load with its own 64-bit address.
    return tl.multiple_of(X + off_bh * seq_len * HEAD_DIM, 16)


@triton.jit
def _attn_fwd_inner(acc, l_i, m_i, q,  # running output, row sum, row max (fp32) and the query tile
                    K, V,  # this (batch, head)'s key / value rows, contiguous (seq, HEAD_DIM)
                    offs_m, offs_d, lo, hi, seq_len,  # query rows, head-dim columns, key range [lo, hi)
                    qk_scale,  # scale * log2(e)
                    DIAGONAL: tl.constexpr,  # mask j > i (and keys past seq_len)
                    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr):
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kv_offs = offs_n[:, None] * HEAD_DIM + offs_d[None, :]
        if DIAGONAL:
            k = tl.load(K + kv_offs, mask=(offs_n < seq_len)[:, None], other=0.0)
        else:
            k = tl.load(K + kv_offs)
        qk = tl.dot(q, tl.trans(k))
        if DIAGONAL:
            qk = tl.where(offs_m[:, None] >= offs_n[None, :], qk * qk_scale, float("-inf"))
            m_ij = tl.maximum(m_i, tl.max(qk, 1))
            qk = qk - m_ij[:, None]
        else:
            m_ij = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            qk = qk * qk_scale - m_ij[:, None]
        p = tl.math.exp2(qk)
        alpha = tl.math.exp2(m_i - m_ij)
        l_i = l_i * alpha + tl.sum(p, 1)
        if DIAGONAL:
            v = tl.load(V + kv_offs, mask=(offs_n < seq_len)[:, None], other=0.0)
        else:
            v = tl.load(V + kv_offs)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_ij
    return acc, l_i, m_i


@triton.jit
def _attn_fwd_kernel(Q, K, V, Out,  # (batch * heads, seq, HEAD_DIM), contiguous
                     LSE,  # (batch * heads, seq) fp32: base-2 log-sum-exp of each score row
                     seq_len,  # rows per (batch, head)
                     qk_scale,  # scale * log2(e)
                     HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # Grid (query blocks, batch * heads): programs side by side share one head's K/V in L2, and the last query
    # blocks, which see the most keys, launch first so the tail of the grid is short work.
    start_m = tl.num_programs(0) - 1 - tl.program_id(0)
    off_bh = tl.program_id(1).to(tl.int64)
    Q, K, V, Out = _bh_rows(Q, off_bh, seq_len, HEAD_DIM), _bh_rows(K, off_bh, seq_len, HEAD_DIM), \
        _bh_rows(V, off_bh, seq_len, HEAD_DIM), _bh_rows(Out, off_bh, seq_len, HEAD_DIM)
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < seq_len
    q_offs = offs_m[:, None] * HEAD_DIM + offs_d[None, :]
    q = tl.load(Q + q_offs, mask=row_ok[:, None], other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    diag = start_m * BLOCK_M
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, K, V, offs_m, offs_d, 0, diag, seq_len,
                                    qk_scale, False, HEAD_DIM, BLOCK_N)
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, K, V, offs_m, offs_d, diag,
                                    tl.minimum(diag + BLOCK_M, seq_len), seq_len, qk_scale, True, HEAD_DIM, BLOCK_N)
    tl.store(LSE + off_bh * seq_len + offs_m, m_i + tl.math.log2(l_i), mask=row_ok)
    tl.store(Out + q_offs, (acc / l_i[:, None]).to(Out.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _attn_bwd_preprocess(Out, DO,  # (batch * heads, seq, HEAD_DIM), contiguous
                         DELTA,  # (batch * heads, seq) fp32 out: rowsum(dO * O)
                         seq_len, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    off_bh = tl.program_id(1).to(tl.int64)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs = offs_m[:, None] * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :]
    row_ok = offs_m < seq_len
    o = tl.load(_bh_rows(Out, off_bh, seq_len, HEAD_DIM) + offs, mask=row_ok[:, None], other=0.0).to(tl.float32)
    do = tl.load(_bh_rows(DO, off_bh, seq_len, HEAD_DIM) + offs, mask=row_ok[:, None], other=0.0).to(tl.float32)
    tl.store(DELTA + off_bh * seq_len + offs_m, tl.sum(o * do, 1), mask=row_ok)


@triton.jit
def _attn_bwd_dkdv_inner(dk, dv, k, v,  # fp32 accumulators and this program's key / value tiles
                         Q, DO, LSE, DELTA,  # this (batch, head)'s rows
                         offs_n, offs_d, lo, hi, seq_len, qk_scale,  # key rows, columns, query range [lo, hi)
                         DIAGONAL: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    for start_m in range(lo, hi, BLOCK_M):
        start_m = tl.multiple_of(start_m, BLOCK_M)
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < seq_len
        q_t = tl.load(Q + offs_m[None, :] * HEAD_DIM + offs_d[:, None], mask=row_ok[None, :], other=0.0)
        lse = tl.load(LSE + offs_m, mask=row_ok, other=float("inf"))
        s_t = tl.dot(k, q_t) * qk_scale - lse[None, :]  # (BLOCK_N, BLOCK_M): keys x queries
        if DIAGONAL:
            s_t = tl.where(offs_m[None, :] >= offs_n[:, None], s_t, float("-inf"))
        p_t = tl.math.exp2(s_t)
        do = tl.load(DO + offs_m[:, None] * HEAD_DIM + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        dv = tl.dot(p_t.to(do.dtype), do, dv)
        delta = tl.load(DELTA + offs_m, mask=row_ok, other=0.0)
        dp_t = tl.dot(v, tl.trans(do))
        ds_t = p_t * (dp_t - delta[None, :])
        dk = tl.dot(ds_t.to(q_t.dtype), tl.trans(q_t), dk)
    return dk, dv


@triton.jit
def _attn_bwd_dkdv_kernel(Q, K, V, DO, DK, DV,  # (batch * heads, seq, HEAD_DIM), contiguous
                          LSE, DELTA,  # (batch * heads, seq) fp32, from the forward and the pre-pass
                          seq_len, qk_scale, sm_scale,  # rows; scale * log2(e); scale
                          HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    start_n = tl.program_id(0)  # key block; the first ones see the most queries and launch first
    off_bh = tl.program_id(1).to(tl.int64)
    Q, K, V, DO = _bh_rows(Q, off_bh, seq_len, HEAD_DIM), _bh_rows(K, off_bh, seq_len, HEAD_DIM), \
        _bh_rows(V, off_bh, seq_len, HEAD_DIM), _bh_rows(DO, off_bh, seq_len, HEAD_DIM)
    DK, DV = _bh_rows(DK, off_bh, seq_len, HEAD_DIM), _bh_rows(DV, off_bh, seq_len, HEAD_DIM)
    offs_n = start_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    key_ok = (offs_n < seq_len)[:, None]
    kv_offs = offs_n[:, None] * HEAD_DIM + offs_d[None, :]
    k = tl.load(K + kv_offs, mask=key_ok, other=0.0)
    v = tl.load(V + kv_offs, mask=key_ok, other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    rows = off_bh * seq_len
    diag = start_n * BLOCK_N
    dk, dv = _attn_bwd_dkdv_inner(dk, dv, k, v, Q, DO, LSE + rows, DELTA + rows, offs_n, offs_d, diag,
                                  tl.minimum(diag + BLOCK_N, seq_len), seq_len, qk_scale, True, HEAD_DIM, BLOCK_M)
    dk, dv = _attn_bwd_dkdv_inner(dk, dv, k, v, Q, DO, LSE + rows, DELTA + rows, offs_n, offs_d,
                                  diag + BLOCK_N, seq_len, seq_len, qk_scale, False, HEAD_DIM, BLOCK_M)
    tl.store(DK + kv_offs, (dk * sm_scale).to(DK.dtype.element_ty), mask=key_ok)
    tl.store(DV + kv_offs, dv.to(DV.dtype.element_ty), mask=key_ok)


@triton.jit
def _attn_bwd_dq_inner(dq, q, do, lse, delta,  # fp32 accumulator, this program's query-row tiles
                       K, V,  # this (batch, head)'s key / value rows
                       offs_m, offs_d, lo, hi, seq_len, qk_scale,  # query rows, columns, key range [lo, hi)
                       DIAGONAL: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr):
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kv_t_offs = offs_n[None, :] * HEAD_DIM + offs_d[:, None]
        if DIAGONAL:
            k_t = tl.load(K + kv_t_offs, mask=(offs_n < seq_len)[None, :], other=0.0)
            v_t = tl.load(V + kv_t_offs, mask=(offs_n < seq_len)[None, :], other=0.0)
        else:
            k_t = tl.load(K + kv_t_offs)
            v_t = tl.load(V + kv_t_offs)
        s = tl.dot(q, k_t) * qk_scale - lse[:, None]
        if DIAGONAL:
            s = tl.where(offs_m[:, None] >= offs_n[None, :], s, float("-inf"))
        p = tl.math.exp2(s)
        dp = tl.dot(do, v_t)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k_t.dtype), tl.trans(k_t), dq)
    return dq


@triton.jit
def _attn_bwd_dq_kernel(Q, K, V, DO, DQ,  # (batch * heads, seq, HEAD_DIM), contiguous
                        LSE, DELTA,  # (batch * heads, seq) fp32
                        seq_len, qk_scale, sm_scale,  # rows; scale * log2(e); scale
                        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    start_m = tl.num_programs(0) - 1 - tl.program_id(0)  # heaviest query blocks first, as in the forward
    off_bh = tl.program_id(1).to(tl.int64)
    Q, K, V = _bh_rows(Q, off_bh, seq_len, HEAD_DIM), _bh_rows(K, off_bh, seq_len, HEAD_DIM), \
        _bh_rows(V, off_bh, seq_len, HEAD_DIM)
    DO, DQ = _bh_rows(DO, off_bh, seq_len, HEAD_DIM), _bh_rows(DQ, off_bh, seq_len, HEAD_DIM)
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < seq_len
    q_offs = offs_m[:, None] * HEAD_DIM + offs_d[None, :]
    q = tl.load(Q + q_offs, mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + q_offs, mask=row_ok[:, None], other=0.0)
    lse = tl.load(LSE + off_bh * seq_len + offs_m, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + off_bh * seq_len + offs_m, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    diag = start_m * BLOCK_M
    dq = _attn_bwd_dq_inner(dq, q, do, lse, delta, K, V, offs_m, offs_d, diag,
                            tl.minimum(diag + BLOCK_M, seq_len), seq_len, qk_scale, True, HEAD_DIM, BLOCK_N)
    dq = _attn_bwd_dq_inner(dq, q, do, lse, delta, K, V, offs_m, offs_d, 0, diag, seq_len,
                            qk_scale, False, HEAD_DIM, BLOCK_N)
    tl.store(DQ + q_offs, (dq * sm_scale).to(DQ.dtype.element_ty), mask=row_ok[:, None])


class _Config(NamedTuple):
    """One pass's launch choice: the query / key block sizes, warps and pipeline stages."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


class _Configs(NamedTuple):
    fwd: _Config  # BLOCK_N divides BLOCK_M: the diagonal stage walks whole key blocks
    dkdv: _Config  # BLOCK_M divides BLOCK_N (query steps under one key block)
    dq: _Config  # BLOCK_N divides BLOCK_M
    preprocess: _Config  # block_n unused


# Per GPU generation ("sm80": Ampere/Ada, sized to fit the 99 KiB of shared memory of sm_86/sm_89 too;
# "sm90": Hopper and newer) and head dim, from the Triton tutorial's tuned ranges, then cut down until the AOT
# build (benchmarks/results/aot_registers.md) showed no spills for either target: 4-warp tiles of 128 query
# rows spill on sm_80 at head dim 64 (mma.sync keeps both operands in registers), hence 8 warps there.
_PRE = _Config(64, 0, 4, 1)
_SM80 = {
    32: _Configs(_Config(128, 64, 4, 3), _Config(32, 128, 8, 3), _Config(128, 32, 4, 3), _PRE),
    64: _Configs(_Config(128, 64, 8, 3), _Config(32, 128, 8, 3), _Config(128, 32, 8, 3), _PRE),
    128: _Configs(_Config(128, 64, 8, 2), _Config(32, 64, 8, 2), _Config(64, 32, 4, 2), _PRE),
}
_GPU_CONFIGS: dict[str, dict[int, _Configs]] = {
    "sm80": _SM80,
    "sm90": {  # 228 KiB of shared memory: wider key tiles and deeper pipelines
        32: _SM80[32],
        64: _SM80[64]._replace(fwd=_Config(128, 128, 8, 3)),
        128: _Configs(_Config(128, 64, 8, 3), _Config(32, 64, 8, 3), _Config(64, 32, 4, 3), _PRE),
    },
}
# Under TRITON_INTERPRET=1: small blocks, so that short test sequences still cover several blocks, the
# unmasked off-diagonal stage, a diagonal stage of several steps, and a ragged tail.
_INTERPRETER_CONFIGS = _Configs(_Config(32, 16, 4, 1), _Config(16, 32, 4, 1), _Config(32, 16, 4, 1),
                                _Config(32, 0, 4, 1))


def _generation(device: torch.device) -> str:
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        raise RuntimeError(f"attention kernel needs an sm_80+ GPU (Ampere or newer); {device} is sm_{major}{minor}; "
                           "use the reference backend (lmfast.functional.causal_attention) there")
    return "sm90" if major >= 9 else "sm80"


def _configs(q: torch.Tensor) -> _Configs:
    if q.device.type != "cuda":
        return _INTERPRETER_CONFIGS
    return _GPU_CONFIGS[_generation(q.device)][q.shape[-1]]


def _allowed_dtypes(device: torch.device) -> tuple[torch.dtype, ...]:
    # fp32 only under the interpreter (the exact tests); on a GPU tl.dot would round fp32 to tf32.
    return (torch.float16, torch.bfloat16) if device.type == "cuda" else (torch.float32, torch.float16, torch.bfloat16)


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Raise ValueError unless q, k, v are equal-shape (batch, heads, seq, head_dim) tensors the kernels take."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape (batch, heads, seq, head_dim), got {tuple(t.shape)}; "
                             "reshape it with .view(batch, seq, heads, head_dim).transpose(1, 2)")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must have one shape, got q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}; this kernel is self-attention without grouped heads")
    if q.shape[-1] not in HEAD_DIMS:
        raise ValueError(f"head_dim must be one of {', '.join(map(str, HEAD_DIMS))}, got head_dim={q.shape[-1]}; "
                         "use lmfast.functional.causal_attention for other head dims")
    if q.shape[0] * q.shape[1] > _MAX_GRID_Y:
        raise ValueError(f"batch * heads must be at most {_MAX_GRID_Y} (the CUDA grid's second axis), got "
                         f"{q.shape[0]} * {q.shape[1]}; split the batch into chunks")
    check_same_device(q=q, k=k, v=v)
    if q.device.type != "cuda" and not interpreting():
        raise ValueError(f"the attention kernel runs on CUDA tensors (or CPU ones under TRITON_INTERPRET=1), "
                         f"got {q.device.type}; use lmfast.functional.causal_attention there")
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_dtype(name, t, _allowed_dtypes(q.device))
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}; cast them to one")


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """``t`` contiguous and starting on a 16-byte boundary, as the kernels' ``tl.multiple_of`` hint promises.

    Fresh allocations always are; a contiguous view into a bigger buffer may not be, and is copied.
    """
    t = t.contiguous()
    return t if (t.storage_offset() * t.element_size()) % 16 == 0 else t.clone()


def attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention forward: returns ``(out, lse2)``; out like q, lse2 (batch, heads, seq) fp32 in base 2."""
    _check_inputs(q, k, v)
    q, k, v = _aligned(q), _aligned(k), _aligned(v)
    batch, heads, seq, head_dim = q.shape
    out = torch.empty_like(q)
    lse = torch.empty((batch, heads, seq), device=q.device, dtype=torch.float32)
    if q.numel() == 0:
        return out, lse
    cfg = _configs(q).fwd
    wrap_triton(_attn_fwd_kernel)[(cdiv(seq, cfg.block_m), batch * heads)](
        q, k, v, out, lse, seq, scale * _LOG2E, HEAD_DIM=head_dim, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return out, lse


def attention_bwd(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                  lse: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Causal attention backward from the forward's ``out`` and ``lse2``: returns ``(dq, dk, dv)``."""
    _check_inputs(q, k, v)
    if grad_out.shape != q.shape or out.shape != q.shape or lse.shape != q.shape[:3]:
        raise ValueError(f"grad_out and out must have q's shape {tuple(q.shape)} and lse its first three dims, got "
                         f"{tuple(grad_out.shape)}, {tuple(out.shape)}, {tuple(lse.shape)}")
    q, k, v, out, lse = _aligned(q), _aligned(k), _aligned(v), _aligned(out), _aligned(lse)
    grad_out = _aligned(grad_out.to(q.dtype))  # often an expanded stride-0 tensor
    batch, heads, seq, head_dim = q.shape
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if q.numel() == 0:
        return dq, dk, dv
    cfgs = _configs(q)
    delta = torch.empty_like(lse)
    pre, kv, qc = cfgs.preprocess, cfgs.dkdv, cfgs.dq
    wrap_triton(_attn_bwd_preprocess)[(cdiv(seq, pre.block_m), batch * heads)](
        out, grad_out, delta, seq, HEAD_DIM=head_dim, BLOCK_M=pre.block_m, num_warps=pre.num_warps,
        num_stages=pre.num_stages)
    wrap_triton(_attn_bwd_dkdv_kernel)[(cdiv(seq, kv.block_n), batch * heads)](
        q, k, v, grad_out, dk, dv, lse, delta, seq, scale * _LOG2E, scale, HEAD_DIM=head_dim, BLOCK_M=kv.block_m,
        BLOCK_N=kv.block_n, num_warps=kv.num_warps, num_stages=kv.num_stages)
    wrap_triton(_attn_bwd_dq_kernel)[(cdiv(seq, qc.block_m), batch * heads)](
        q, k, v, grad_out, dq, lse, delta, seq, scale * _LOG2E, scale, HEAD_DIM=head_dim, BLOCK_M=qc.block_m,
        BLOCK_N=qc.block_n, num_warps=qc.num_warps, num_stages=qc.num_stages)
    return dq, dk, dv


def aot_specs() -> list[AotSpec]:
    """Every GPU configuration the launchers can pick (each generation x head dim x dtype x pass), once each."""
    specs: dict[str, AotSpec] = {}
    for by_dim in _GPU_CONFIGS.values():
        for head_dim, cfgs in by_dim.items():
            for dtype in (torch.bfloat16, torch.float16):
                for spec in _aot_specs_for(head_dim, dtype, cfgs):
                    specs.setdefault(spec.name, spec)
    return list(specs.values())


_SCALARS = {"seq_len": "i32", "qk_scale": "fp32", "sm_scale": "fp32"}


def _aot_specs_for(head_dim: int, dtype: torch.dtype, cfgs: _Configs) -> list[AotSpec]:
    def spec(fn, tensors, cfg, blocks):
        types = {**dict.fromkeys(tensors, pointer(dtype)), "LSE": "*fp32", "DELTA": "*fp32", **_SCALARS}
        constexprs = {"HEAD_DIM": head_dim, **blocks}
        signature = {a: "constexpr" if a in constexprs else types[a] for a in fn.arg_names}
        name = " ".join([fn.__name__, TRITON_DTYPE[dtype], *(f"{a}={b}" for a, b in constexprs.items()),
                         f"warps={cfg.num_warps}", f"stages={cfg.num_stages}"])
        return AotSpec(name, fn, signature, constexprs, cfg.num_warps, cfg.num_stages)

    fwd, kv, dq, pre = cfgs.fwd, cfgs.dkdv, cfgs.dq, cfgs.preprocess
    return [
        spec(_attn_fwd_kernel, ("Q", "K", "V", "Out"), fwd, {"BLOCK_M": fwd.block_m, "BLOCK_N": fwd.block_n}),
        spec(_attn_bwd_preprocess, ("Out", "DO"), pre, {"BLOCK_M": pre.block_m}),
        spec(_attn_bwd_dkdv_kernel, ("Q", "K", "V", "DO", "DK", "DV"), kv,
             {"BLOCK_M": kv.block_m, "BLOCK_N": kv.block_n}),
        spec(_attn_bwd_dq_kernel, ("Q", "K", "V", "DO", "DQ"), dq, {"BLOCK_M": dq.block_m, "BLOCK_N": dq.block_n}),
    ]


@triton_op("lmfast::attention", mutates_args=())
def _attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    return attention_fwd(q, k, v, scale)


@triton_op("lmfast::attention_backward", mutates_args=())
def _attention_backward_op(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           out: torch.Tensor, lse: torch.Tensor, scale: float
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return attention_bwd(grad_out, q, k, v, out, lse, scale)


# Explicit fake (meta) kernels: the default fake of a triton_op runs its body, whose raw-kernel launch the
# interpreter (TRITON_INTERPRET=1) cannot do on fake tensors. torch.compile still traces into the bodies.
@_attention_op.register_fake
def _attention_fake(q, k, v, scale):
    _check_inputs(q, k, v)
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty(q.shape[:3], dtype=torch.float32)


@_attention_backward_op.register_fake
def _attention_backward_fake(grad_out, q, k, v, out, lse, scale):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))


def _setup_context(ctx, inputs, output):
    q, k, v, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.scale = scale


def _backward(ctx, grad_out, grad_lse):
    # lse2 is an internal output (the public function drops it), so its gradient is always zero / None.
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = torch.ops.lmfast.attention_backward(grad_out, q, k, v, out, lse, ctx.scale)
    return dq, dk, dv, None


_attention_op.register_autograd(_backward, setup_context=_setup_context)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Causal softmax attention, fused: the Triton twin of :func:`lmfast.functional.causal_attention`.

    q, k, v: (batch, heads, seq, head_dim) with head_dim in 32, 64, 128, all fp16 or bf16 on CUDA (fp32 too on
    CPU under ``TRITON_INTERPRET=1``). ``scale`` multiplies the scores (default ``1 / sqrt(head_dim)``).
    Returns (batch, heads, seq, head_dim) in q's dtype; differentiable in q, k and v.

    >>> out = attention(q, k, v)  # doctest: +SKIP
    """
    _check_inputs(q, k, v)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return torch.ops.lmfast.attention(q, k, v, scale)[0]
