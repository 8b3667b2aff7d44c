"""The Triton kernels of causal flash attention: forward, and a backward with separate dK/dV and dQ passes.

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

Any head dim up to 256 runs: rows are ``HEAD_DIM`` long (a constexpr, so row offsets stay provably aligned) and
the kernels hold them in ``BLOCK_D`` columns, ``HEAD_DIM`` padded to a power of two; when the two differ
(``EVEN_D`` false) the padded columns are masked, load as zeros and add nothing to any dot product. Powers of two
(64, 128) compile without those masks. The launcher keeps the scale non-negative (see ``attention_fwd``).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _bh_rows(X, off_bh, seq_len, HEAD_DIM: tl.constexpr):
    """The (seq, HEAD_DIM) rows of one (batch, head) in a contiguous tensor."""
    rows = X + off_bh * seq_len * HEAD_DIM
    if HEAD_DIM % 8 == 0:
        # Rows of a multiple of 8 (16 bytes in half precision) start 16-byte aligned (see _aligned). The hint gives
        # 16-byte vector loads even where the alignment is not known at compile time (ahead-of-time builds);
        # without it every element is a separate load with its own 64-bit address.
        rows = tl.multiple_of(rows, 16)
    return rows


@triton.jit
def _tile(start, seq_len, HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
    """Rows ``start .. start + BLOCK`` of one (batch, head): their indices, the padded column indices, which rows
    (BLOCK,) and columns (1, BLOCK_D) are real, and each element's offset in the contiguous (seq, HEAD_DIM) rows."""
    offs = start + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, BLOCK_D)
    return offs, offs_d, offs < seq_len, (offs_d < HEAD_DIM)[None, :], offs[:, None] * HEAD_DIM + offs_d[None, :]


@triton.jit
def _load(ptrs, rows_ok, cols_ok, MASK_ROWS: tl.constexpr, EVEN_D: tl.constexpr):
    """A tile load masked only as the constexpr flags ask: rows past seq_len, columns past head_dim (zeros)."""
    if EVEN_D:
        if MASK_ROWS:
            x = tl.load(ptrs, mask=rows_ok, other=0.0)
        else:
            x = tl.load(ptrs)
    else:
        if MASK_ROWS:
            x = tl.load(ptrs, mask=rows_ok & cols_ok, other=0.0)
        else:
            x = tl.load(ptrs, mask=cols_ok, other=0.0)
    return x


@triton.jit
def _store_mask(rows_ok, cols_ok, EVEN_D: tl.constexpr):
    if EVEN_D:
        mask = rows_ok
    else:
        mask = rows_ok & cols_ok
    return mask


@triton.jit
def _attn_fwd_inner(acc, l_i, m_i, q,  # running output, row sum, row max (fp32) and the query tile
                    K, V,  # this (batch, head)'s key / value rows, contiguous (seq, stride)
                    offs_m, offs_d, lo, hi, seq_len,  # query rows, columns, key range [lo, hi)
                    qk_scale,  # scale * log2(e), >= 0
                    DIAGONAL: tl.constexpr,  # mask j > i (and keys past seq_len)
                    HEAD_DIM: tl.constexpr, EVEN_D: tl.constexpr, BLOCK_N: tl.constexpr):
    d_ok = (offs_d < HEAD_DIM)[None, :]
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kv_offs = offs_n[:, None] * HEAD_DIM + offs_d[None, :]
        key_ok = (offs_n < seq_len)[:, None]
        k = _load(K + kv_offs, key_ok, d_ok, DIAGONAL, EVEN_D)
        qk = tl.dot(q, tl.trans(k))
        if DIAGONAL:
            qk = tl.where(offs_m[:, None] >= offs_n[None, :], qk * qk_scale, float("-inf"))
            m_ij = tl.maximum(m_i, tl.max(qk, 1))
            qk = qk - m_ij[:, None]
        else:
            # max(qk) * scale is the max of the scaled row only for scale >= 0 (the launcher sees to it).
            m_ij = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            qk = qk * qk_scale - m_ij[:, None]
        p = tl.math.exp2(qk)
        alpha = tl.math.exp2(m_i - m_ij)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load(V + kv_offs, key_ok, d_ok, DIAGONAL, EVEN_D)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_ij
    return acc, l_i, m_i


@triton.jit
def _attn_fwd_kernel(Q, K, V, Out,  # (batch * heads, seq, head_dim), contiguous
                     LSE,  # (batch * heads, seq) fp32: base-2 log-sum-exp of each score row
                     seq_len,  # rows per (batch, head)
                     qk_scale,  # scale * log2(e), >= 0
                     HEAD_DIM: tl.constexpr,  # the head dim: each row's length
                     BLOCK_D: tl.constexpr,  # HEAD_DIM padded to a power of two >= 16; the columns past it are masked
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # Grid (query blocks, batch * heads): programs side by side share one head's K/V in L2, and the last query
    # blocks, which see the most keys, launch first so the tail of the grid is short work.
    start_m = tl.num_programs(0) - 1 - tl.program_id(0)
    off_bh = tl.program_id(1).to(tl.int64)
    EVEN_D: tl.constexpr = HEAD_DIM == BLOCK_D  # no column masks
    Q, K = _bh_rows(Q, off_bh, seq_len, HEAD_DIM), _bh_rows(K, off_bh, seq_len, HEAD_DIM)
    V, Out = _bh_rows(V, off_bh, seq_len, HEAD_DIM), _bh_rows(Out, off_bh, seq_len, HEAD_DIM)
    offs_m, offs_d, row_ok, d_ok, q_offs = _tile(start_m * BLOCK_M, seq_len, HEAD_DIM, BLOCK_M, BLOCK_D)
    q = _load(Q + q_offs, row_ok[:, None], d_ok, True, EVEN_D)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    diag = start_m * BLOCK_M
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, K, V, offs_m, offs_d, 0, diag, seq_len,
                                    qk_scale, False, HEAD_DIM, EVEN_D, BLOCK_N)
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, K, V, offs_m, offs_d, diag, tl.minimum(diag + BLOCK_M, seq_len),
                                    seq_len, qk_scale, True, HEAD_DIM, EVEN_D, BLOCK_N)
    tl.store(LSE + off_bh * seq_len + offs_m, m_i + tl.math.log2(l_i), mask=row_ok)
    tl.store(Out + q_offs, (acc / l_i[:, None]).to(Out.dtype.element_ty), mask=_store_mask(row_ok[:, None], d_ok,
                                                                                           EVEN_D))


@triton.jit
def _attn_bwd_preprocess(Out, DO,  # (batch * heads, seq, head_dim), contiguous
                         DELTA,  # (batch * heads, seq) fp32 out: rowsum(dO * O)
                         seq_len, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    off_bh = tl.program_id(1).to(tl.int64)
    EVEN_D: tl.constexpr = HEAD_DIM == BLOCK_D  # no column masks
    offs_m, _, row_ok, d_ok, offs = _tile(tl.program_id(0) * BLOCK_M, seq_len, HEAD_DIM, BLOCK_M, BLOCK_D)
    o = _load(_bh_rows(Out, off_bh, seq_len, HEAD_DIM) + offs, row_ok[:, None], d_ok, True, EVEN_D)
    do = _load(_bh_rows(DO, off_bh, seq_len, HEAD_DIM) + offs, row_ok[:, None], d_ok, True, EVEN_D)
    tl.store(DELTA + off_bh * seq_len + offs_m, tl.sum(o.to(tl.float32) * do.to(tl.float32), 1), mask=row_ok)


@triton.jit
def _attn_bwd_dkdv_inner(dk, dv, k, v,  # fp32 accumulators and this program's key / value tiles
                         Q, DO, LSE, DELTA,  # this (batch, head)'s rows
                         offs_n, offs_d, lo, hi, seq_len, qk_scale,  # query range [lo, hi)
                         DIAGONAL: tl.constexpr, HEAD_DIM: tl.constexpr, EVEN_D: tl.constexpr,
                         BLOCK_M: tl.constexpr):
    d_ok = offs_d < HEAD_DIM
    for start_m in range(lo, hi, BLOCK_M):
        start_m = tl.multiple_of(start_m, BLOCK_M)
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < seq_len
        q_t = _load(Q + offs_m[None, :] * HEAD_DIM + offs_d[:, None], row_ok[None, :], d_ok[:, None], True, EVEN_D)
        lse = tl.load(LSE + offs_m, mask=row_ok, other=float("inf"))
        s_t = tl.dot(k, q_t) * qk_scale - lse[None, :]  # (BLOCK_N, BLOCK_M): keys x queries
        if DIAGONAL:
            s_t = tl.where(offs_m[None, :] >= offs_n[:, None], s_t, float("-inf"))
        p_t = tl.math.exp2(s_t)
        do = _load(DO + offs_m[:, None] * HEAD_DIM + offs_d[None, :], row_ok[:, None], d_ok[None, :], True, EVEN_D)
        dv = tl.dot(p_t.to(do.dtype), do, dv)
        delta = tl.load(DELTA + offs_m, mask=row_ok, other=0.0)
        dp_t = tl.dot(v, tl.trans(do))
        ds_t = p_t * (dp_t - delta[None, :])
        dk = tl.dot(ds_t.to(q_t.dtype), tl.trans(q_t), dk)
    return dk, dv


@triton.jit
def _attn_bwd_dkdv_kernel(Q, K, V, DO, DK, DV,  # (batch * heads, seq, head_dim), contiguous
                          LSE, DELTA,  # (batch * heads, seq) fp32, from the forward and the pre-pass
                          seq_len, qk_scale, sm_scale,  # rows; real head dim; scale * log2(e); scale
                          HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    start_n = tl.program_id(0)  # key block; the first ones see the most queries and launch first
    off_bh = tl.program_id(1).to(tl.int64)
    EVEN_D: tl.constexpr = HEAD_DIM == BLOCK_D  # no column masks
    Q, K = _bh_rows(Q, off_bh, seq_len, HEAD_DIM), _bh_rows(K, off_bh, seq_len, HEAD_DIM)
    V, DO = _bh_rows(V, off_bh, seq_len, HEAD_DIM), _bh_rows(DO, off_bh, seq_len, HEAD_DIM)
    DK, DV = _bh_rows(DK, off_bh, seq_len, HEAD_DIM), _bh_rows(DV, off_bh, seq_len, HEAD_DIM)
    offs_n, offs_d, key_rows, d_ok, kv_offs = _tile(start_n * BLOCK_N, seq_len, HEAD_DIM, BLOCK_N, BLOCK_D)
    key_ok = key_rows[:, None]
    k = _load(K + kv_offs, key_ok, d_ok, True, EVEN_D)
    v = _load(V + kv_offs, key_ok, d_ok, True, EVEN_D)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    rows = off_bh * seq_len
    diag = start_n * BLOCK_N
    dk, dv = _attn_bwd_dkdv_inner(dk, dv, k, v, Q, DO, LSE + rows, DELTA + rows, offs_n, offs_d, diag,
                                  tl.minimum(diag + BLOCK_N, seq_len), seq_len, qk_scale, True,
                                  HEAD_DIM, EVEN_D, BLOCK_M)
    dk, dv = _attn_bwd_dkdv_inner(dk, dv, k, v, Q, DO, LSE + rows, DELTA + rows, offs_n, offs_d, diag + BLOCK_N,
                                  seq_len, seq_len, qk_scale, False, HEAD_DIM, EVEN_D, BLOCK_M)
    mask = _store_mask(key_ok, d_ok, EVEN_D)
    tl.store(DK + kv_offs, (dk * sm_scale).to(DK.dtype.element_ty), mask=mask)
    tl.store(DV + kv_offs, dv.to(DV.dtype.element_ty), mask=mask)


@triton.jit
def _attn_bwd_dq_inner(dq, q, do, lse, delta,  # fp32 accumulator, this program's query-row tiles
                       K, V,  # this (batch, head)'s key / value rows
                       offs_m, offs_d, lo, hi, seq_len, qk_scale,  # key range [lo, hi)
                       DIAGONAL: tl.constexpr, HEAD_DIM: tl.constexpr, EVEN_D: tl.constexpr,
                       BLOCK_N: tl.constexpr):
    d_ok = (offs_d < HEAD_DIM)[:, None]
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kv_t_offs = offs_n[None, :] * HEAD_DIM + offs_d[:, None]
        key_ok = (offs_n < seq_len)[None, :]
        k_t = _load(K + kv_t_offs, key_ok, d_ok, DIAGONAL, EVEN_D)
        v_t = _load(V + kv_t_offs, key_ok, d_ok, DIAGONAL, EVEN_D)
        s = tl.dot(q, k_t) * qk_scale - lse[:, None]
        if DIAGONAL:
            s = tl.where(offs_m[:, None] >= offs_n[None, :], s, float("-inf"))
        p = tl.math.exp2(s)
        dp = tl.dot(do, v_t)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k_t.dtype), tl.trans(k_t), dq)
    return dq


@triton.jit
def _attn_bwd_dq_kernel(Q, K, V, DO, DQ,  # (batch * heads, seq, head_dim), contiguous
                        LSE, DELTA,  # (batch * heads, seq) fp32
                        seq_len, qk_scale, sm_scale,  # rows; real head dim; scale * log2(e); scale
                        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    start_m = tl.num_programs(0) - 1 - tl.program_id(0)  # heaviest query blocks first, as in the forward
    off_bh = tl.program_id(1).to(tl.int64)
    EVEN_D: tl.constexpr = HEAD_DIM == BLOCK_D  # no column masks
    Q, K = _bh_rows(Q, off_bh, seq_len, HEAD_DIM), _bh_rows(K, off_bh, seq_len, HEAD_DIM)
    V, DO = _bh_rows(V, off_bh, seq_len, HEAD_DIM), _bh_rows(DO, off_bh, seq_len, HEAD_DIM)
    DQ = _bh_rows(DQ, off_bh, seq_len, HEAD_DIM)
    offs_m, offs_d, row_ok, d_ok, q_offs = _tile(start_m * BLOCK_M, seq_len, HEAD_DIM, BLOCK_M, BLOCK_D)
    q = _load(Q + q_offs, row_ok[:, None], d_ok, True, EVEN_D)
    do = _load(DO + q_offs, row_ok[:, None], d_ok, True, EVEN_D)
    lse = tl.load(LSE + off_bh * seq_len + offs_m, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + off_bh * seq_len + offs_m, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    diag = start_m * BLOCK_M
    dq = _attn_bwd_dq_inner(dq, q, do, lse, delta, K, V, offs_m, offs_d, diag, tl.minimum(diag + BLOCK_M, seq_len),
                            seq_len, qk_scale, True, HEAD_DIM, EVEN_D, BLOCK_N)
    dq = _attn_bwd_dq_inner(dq, q, do, lse, delta, K, V, offs_m, offs_d, 0, diag, seq_len,
                            qk_scale, False, HEAD_DIM, EVEN_D, BLOCK_N)
    tl.store(DQ + q_offs, (dq * sm_scale).to(DQ.dtype.element_ty), mask=_store_mask(row_ok[:, None], d_ok, EVEN_D))
