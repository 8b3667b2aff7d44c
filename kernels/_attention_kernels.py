"""The Triton kernels of causal flash attention with grouped heads, document masks and RoPE inside.

Math, per (batch, query head h), with s = ``scale``, kv head g = h // group, and R the RoPE rotation of each row
by its position's angles (identity without RoPE)::

    S = s * (R Q)(R K_g)^T,   P = softmax_row(S masked to doc_start_i <= j <= i),   O = P V_g
    dV_g = sum_h P^T dO,   dP = dO V_g^T,   dS = P * (dP - delta),   delta_i = sum_d dO_id O_id
    dQ = R^T (s dS (R K_g)),   dK_g = R^T (sum_h s dS^T (R Q))

``doc_start_i`` is the first row of row i's document (0 without documents): since documents are contiguous and
ordered, "same document and j <= i" is ``doc_start_i <= j <= i``, one compare more than the causal mask.

The forward never builds S: it walks key blocks with the online softmax in base 2 (``s * log2(e)`` folded into
one multiply) and saves O and ``lse2_i = m_i + log2(l_i)`` per row, from which the backward rebuilds P exactly.
Key blocks wholly left of a query block's first document are skipped, not masked: a query block starts its walk
at the block holding ``doc_start`` of its first row, so a window of d equal documents costs about 1/d of the
causal work (FlexAttention's block sparsity, found here from one load per program). The backward skips alike:
a key block's walk over queries stops at the end of its last key's document.

Grouped-query attention (GQA, MQA) reads kv head ``h // group`` for query head h; nothing is repeated in memory.
The dK/dV program of a kv head walks every query head of its group in turn, so dK and dV are sums taken in one
fixed order by one program: deterministic, no atomics. dQ has its own pass (FlashAttention-2 with atomics would
add dQ from the dK/dV program; here its recompute of S and dP is the price of bitwise-repeatable gradients), run
first so that it also computes delta for its rows from the O and dO it loads anyway (no pre-pass launch).

Every tile of q and k is held as two halves of the head dim (``_attention_tiles.py``): with RoPE, the even and odd
members of each pair, rotated in registers as the tile is loaded; dQ and dK are rotated back (R^T: the opposite
angle) before their one store. So q and k are read once, and no rotated copy is ever written.

Any head dim up to 256 runs: rows are ``HEAD_DIM`` long and held in ``BLOCK_D`` columns, ``HEAD_DIM`` padded to a
power of two >= 32 (each half at least 16, ``tl.dot``'s smallest reduction); padded columns load as zeros.
Tensors are strided views with a unit head-dim stride (q as a view of a (batch, seq, heads, head_dim) projection
needs no copy); offsets of a (batch, head) start are int64.
"""

from __future__ import annotations

import triton
import triton.language as tl
from lmfast.kernels._attention_tiles import _angles, _load_halves, _load_rows, _rows, _store_halves, _visible


@triton.jit
def _attn_fwd_inner(acc, l_i, m_i, qa, qb, starts,  # running output, row sum, row max (fp32); the q halves
                    K, V, COS, SIN, stride_kt, stride_vt, stride_ct,  # this (batch, kv head)'s rows; angle rows
                    offs_m, lo, hi, seq_len, qk_scale,  # query rows, key range [lo, hi), scale * log2(e)
                    CAUSAL: tl.constexpr, DOC: tl.constexpr, ROPE: tl.constexpr,
                    HEAD_DIM: tl.constexpr, HALF: tl.constexpr, BLOCK_N: tl.constexpr):
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_n = start_n + tl.arange(0, BLOCK_N)
        key_ok = offs_n < seq_len
        cos, sin = None, None
        if ROPE:
            cos, sin = _angles(COS, SIN, offs_n, key_ok, stride_ct, HEAD_DIM, HALF)
        ka, kb = _load_halves(K, offs_n, key_ok, stride_kt, cos, sin, HEAD_DIM, HALF, ROPE, CAUSAL)
        qk = tl.dot(qa, tl.trans(ka))
        qk = tl.dot(qb, tl.trans(kb), qk) * qk_scale
        if CAUSAL or DOC:
            qk = tl.where(_visible(offs_m, offs_n, starts, CAUSAL, DOC), qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        # A row of a later document sees none of a tile left of its start: its max stays -inf, and exp2 is taken
        # against 0 instead so that no -inf - -inf makes a NaN (its p and alpha come out 0 and 1 - 1 = 0 alike).
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(qk - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load_rows(V, offs_n, key_ok, stride_vt, HEAD_DIM, 2 * HALF, CAUSAL)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd_kernel(Q, stride_qb, stride_qh, stride_qt,  # (batch, q_heads, seq, head_dim), unit head-dim stride
                     K, stride_kb, stride_kh, stride_kt,  # (batch, kv_heads, seq, head_dim)
                     V, stride_vb, stride_vh, stride_vt,  # like K
                     Out, stride_ob, stride_oh, stride_ot,  # like Q
                     LSE,  # (batch, q_heads, seq) fp32 out: base-2 log-sum-exp of each score row
                     COS, SIN, stride_cb, stride_ct,  # fp32 (batch or 1, seq, head_dim // 2) angles (ROPE)
                     DOC_START,  # int32 (batch, seq): first row of each row's document (DOC)
                     seq_len, q_heads, group,  # rows, query heads, query heads per kv head
                     qk_scale,  # scale * log2(e), any sign
                     HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,  # head dim, padded to a power of two >= 32
                     ROPE: tl.constexpr, DOC: tl.constexpr,  # rotate q and k as loaded; document masks
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):  # BLOCK_N divides BLOCK_M
    # Grid (query blocks, batch * q_heads): the heads of a group sit side by side and share K/V in L2, and the last
    # query blocks, which see the most keys, launch first so the tail of the grid is short work.
    start_m = tl.num_programs(0) - 1 - tl.program_id(0)
    b, h = tl.program_id(1) // q_heads, tl.program_id(1) % q_heads
    HALF: tl.constexpr = BLOCK_D // 2
    Q, Out = _rows(Q, b, h, stride_qb, stride_qh), _rows(Out, b, h, stride_ob, stride_oh)
    K, V = _rows(K, b, h // group, stride_kb, stride_kh), _rows(V, b, h // group, stride_vb, stride_vh)
    COS, SIN = COS + b.to(tl.int64) * stride_cb, SIN + b.to(tl.int64) * stride_cb
    diag = start_m * BLOCK_M
    offs_m = diag + tl.arange(0, BLOCK_M)
    row_ok = offs_m < seq_len
    cos, sin = None, None
    if ROPE:
        cos, sin = _angles(COS, SIN, offs_m, row_ok, stride_ct, HEAD_DIM, HALF)
    qa, qb = _load_halves(Q, offs_m, row_ok, stride_qt, cos, sin, HEAD_DIM, HALF, ROPE, True)
    lo = 0
    starts = None
    if DOC:
        starts = tl.load(DOC_START + b.to(tl.int64) * seq_len + offs_m, mask=row_ok, other=0)
        lo = (tl.load(DOC_START + b.to(tl.int64) * seq_len + diag) // BLOCK_N) * BLOCK_N  # skip earlier documents
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, qa, qb, starts, K, V, COS, SIN, stride_kt, stride_vt, stride_ct,
                                    offs_m, lo, diag, seq_len, qk_scale, False, DOC, ROPE, HEAD_DIM, HALF, BLOCK_N)
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, qa, qb, starts, K, V, COS, SIN, stride_kt, stride_vt, stride_ct,
                                    offs_m, diag, tl.minimum(diag + BLOCK_M, seq_len), seq_len, qk_scale, True, DOC,
                                    ROPE, HEAD_DIM, HALF, BLOCK_N)
    tl.store(LSE + tl.program_id(1).to(tl.int64) * seq_len + offs_m, m_i + tl.math.log2(l_i), mask=row_ok)
    cols = tl.arange(0, BLOCK_D)
    tl.store(Out + offs_m[:, None] * stride_ot + cols[None, :], (acc / l_i[:, None]).to(Out.dtype.element_ty),
             mask=row_ok[:, None] & (cols < HEAD_DIM)[None, :])


@triton.jit
def _attn_bwd_dq_inner(dqa, dqb, qa, qb, do, lse, delta, starts,  # fp32 dQ halves; this query block's tiles
                       K, V, COS, SIN, stride_kt, stride_vt, stride_ct,  # this (batch, kv head)'s rows
                       offs_m, lo, hi, seq_len, qk_scale,  # query rows, key range [lo, hi)
                       CAUSAL: tl.constexpr, DOC: tl.constexpr, ROPE: tl.constexpr,
                       HEAD_DIM: tl.constexpr, HALF: tl.constexpr, BLOCK_N: tl.constexpr):
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_n = start_n + tl.arange(0, BLOCK_N)
        key_ok = offs_n < seq_len
        cos, sin = None, None
        if ROPE:
            cos, sin = _angles(COS, SIN, offs_n, key_ok, stride_ct, HEAD_DIM, HALF)
        ka, kb = _load_halves(K, offs_n, key_ok, stride_kt, cos, sin, HEAD_DIM, HALF, ROPE, CAUSAL)
        v = _load_rows(V, offs_n, key_ok, stride_vt, HEAD_DIM, 2 * HALF, CAUSAL)
        s = tl.dot(qb, tl.trans(kb), tl.dot(qa, tl.trans(ka))) * qk_scale - lse[:, None]
        if CAUSAL or DOC:
            s = tl.where(_visible(offs_m, offs_n, starts, CAUSAL, DOC), s, float("-inf"))
        p = tl.math.exp2(s)
        ds = p * (tl.dot(do, tl.trans(v)) - delta[:, None])
        dqa = tl.dot(ds.to(ka.dtype), ka, dqa)
        dqb = tl.dot(ds.to(kb.dtype), kb, dqb)
    return dqa, dqb


@triton.jit
def _attn_bwd_dq_kernel(Q, stride_qb, stride_qh, stride_qt, K, stride_kb, stride_kh, stride_kt,
                        V, stride_vb, stride_vh, stride_vt, Out, stride_ob, stride_oh, stride_ot,
                        DO, stride_dob, stride_doh, stride_dot,  # like Q: the incoming gradient
                        DQ, stride_dqb, stride_dqh, stride_dqt,  # like Q: out
                        LSE, DELTA,  # (batch, q_heads, seq) fp32: from the forward; out: rowsum(dO * O)
                        COS, SIN, stride_cb, stride_ct, DOC_START, seq_len, q_heads, group,
                        qk_scale, sm_scale,  # scale * log2(e); scale
                        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, ROPE: tl.constexpr, DOC: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):  # BLOCK_N divides BLOCK_M
    start_m = tl.num_programs(0) - 1 - tl.program_id(0)  # heaviest query blocks first, as in the forward
    b, h = tl.program_id(1) // q_heads, tl.program_id(1) % q_heads
    HALF: tl.constexpr = BLOCK_D // 2
    Q, Out = _rows(Q, b, h, stride_qb, stride_qh), _rows(Out, b, h, stride_ob, stride_oh)
    DO, DQ = _rows(DO, b, h, stride_dob, stride_doh), _rows(DQ, b, h, stride_dqb, stride_dqh)
    K, V = _rows(K, b, h // group, stride_kb, stride_kh), _rows(V, b, h // group, stride_vb, stride_vh)
    COS, SIN = COS + b.to(tl.int64) * stride_cb, SIN + b.to(tl.int64) * stride_cb
    diag = start_m * BLOCK_M
    offs_m = diag + tl.arange(0, BLOCK_M)
    row_ok = offs_m < seq_len
    cos, sin = None, None
    if ROPE:
        cos, sin = _angles(COS, SIN, offs_m, row_ok, stride_ct, HEAD_DIM, HALF)
    qa, qb = _load_halves(Q, offs_m, row_ok, stride_qt, cos, sin, HEAD_DIM, HALF, ROPE, True)
    do = _load_rows(DO, offs_m, row_ok, stride_dot, HEAD_DIM, BLOCK_D, True)
    o = _load_rows(Out, offs_m, row_ok, stride_ot, HEAD_DIM, BLOCK_D, True)
    rows = tl.program_id(1).to(tl.int64) * seq_len + offs_m
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + rows, delta, mask=row_ok)
    lse = tl.load(LSE + rows, mask=row_ok, other=float("inf"))  # rows past seq: P = exp2(-inf) = 0
    lo = 0
    starts = None
    if DOC:
        starts = tl.load(DOC_START + b.to(tl.int64) * seq_len + offs_m, mask=row_ok, other=0)
        lo = (tl.load(DOC_START + b.to(tl.int64) * seq_len + diag) // BLOCK_N) * BLOCK_N
    dqa = tl.zeros([BLOCK_M, HALF], tl.float32)
    dqb = tl.zeros([BLOCK_M, HALF], tl.float32)
    dqa, dqb = _attn_bwd_dq_inner(dqa, dqb, qa, qb, do, lse, delta, starts, K, V, COS, SIN, stride_kt, stride_vt,
                                  stride_ct, offs_m, diag, tl.minimum(diag + BLOCK_M, seq_len), seq_len, qk_scale,
                                  True, DOC, ROPE, HEAD_DIM, HALF, BLOCK_N)
    dqa, dqb = _attn_bwd_dq_inner(dqa, dqb, qa, qb, do, lse, delta, starts, K, V, COS, SIN, stride_kt, stride_vt,
                                  stride_ct, offs_m, lo, diag, seq_len, qk_scale, False, DOC, ROPE, HEAD_DIM, HALF,
                                  BLOCK_N)
    if ROPE:  # loaded again rather than held through the loop: registers are what bind this pass
        cos, sin = _angles(COS, SIN, offs_m, row_ok, stride_ct, HEAD_DIM, HALF)
    _store_halves(DQ, offs_m, row_ok, stride_dqt, dqa * sm_scale, dqb * sm_scale, cos, sin, HEAD_DIM, HALF, ROPE)


@triton.jit
def _attn_bwd_dkdv_inner(dka, dkb, dv, ka, kb, v,  # fp32 accumulators; this key block's tiles
                         Q, DO, LSE, DELTA,  # the group's first query head: its rows, lse and delta rows
                         stride_qh, stride_qt, stride_doh, stride_dot, seq_len,  # head and row strides
                         COS, SIN, stride_ct, DOC_START,  # angles; document starts of this batch row
                         offs_n, lo, hi, group, qk_scale,  # key rows, query range [lo, hi), heads in the group
                         CAUSAL: tl.constexpr, DOC: tl.constexpr, ROPE: tl.constexpr,
                         HEAD_DIM: tl.constexpr, HALF: tl.constexpr, BLOCK_M: tl.constexpr):
    # One flat loop over (head of the group, query block): a loop over the heads around the block loop took ~70
    # more registers a thread (sm_90, Triton 3.9), the accumulators being carried through two loop levels.
    tiles = tl.cdiv(hi - lo, BLOCK_M)
    for it in range(0, group * tiles):
        i = it // tiles
        start_m = tl.multiple_of(lo + (it - i * tiles) * BLOCK_M, BLOCK_M)
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < seq_len
        cos, sin = None, None
        if ROPE:
            cos, sin = _angles(COS, SIN, offs_m, row_ok, stride_ct, HEAD_DIM, HALF)
        qa, qb = _load_halves(Q + i.to(tl.int64) * stride_qh, offs_m, row_ok, stride_qt, cos, sin, HEAD_DIM, HALF,
                              ROPE, True)
        rows = i.to(tl.int64) * seq_len + offs_m
        lse = tl.load(LSE + rows, mask=row_ok, other=float("inf"))
        s_t = tl.dot(kb, tl.trans(qb), tl.dot(ka, tl.trans(qa))) * qk_scale - lse[None, :]  # keys x queries
        if CAUSAL or DOC:
            starts = None
            if DOC:
                starts = tl.load(DOC_START + offs_m, mask=row_ok, other=0)
            s_t = tl.where(tl.trans(_visible(offs_m, offs_n, starts, CAUSAL, DOC)), s_t, float("-inf"))
        p_t = tl.math.exp2(s_t)
        do = _load_rows(DO + i.to(tl.int64) * stride_doh, offs_m, row_ok, stride_dot, HEAD_DIM, 2 * HALF, True)
        dv = tl.dot(p_t.to(do.dtype), do, dv)
        delta = tl.load(DELTA + rows, mask=row_ok, other=0.0)
        ds_t = p_t * (tl.dot(v, tl.trans(do)) - delta[None, :])
        dka = tl.dot(ds_t.to(qa.dtype), qa, dka)
        dkb = tl.dot(ds_t.to(qb.dtype), qb, dkb)
    return dka, dkb, dv


@triton.jit
def _attn_bwd_dkdv_kernel(Q, stride_qb, stride_qh, stride_qt, K, stride_kb, stride_kh, stride_kt,
                          V, stride_vb, stride_vh, stride_vt, DO, stride_dob, stride_doh, stride_dot,
                          DK, stride_dkb, stride_dkh, stride_dkt,  # like K: out
                          DV, stride_dvb, stride_dvh, stride_dvt,  # like V: out
                          LSE, DELTA,  # (batch, q_heads, seq) fp32, from the forward and the dQ pass
                          COS, SIN, stride_cb, stride_ct,
                          DOC_START, DOC_END,  # int32 (batch, seq): one past the last row of each row's document
                          seq_len, q_heads, group, qk_scale, sm_scale,
                          HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, ROPE: tl.constexpr, DOC: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):  # BLOCK_M divides BLOCK_N
    # Grid (key blocks, batch * kv_heads); the first key blocks see the most queries and launch first.
    start_n = tl.program_id(0)
    kv_heads = q_heads // group
    b, g = tl.program_id(1) // kv_heads, tl.program_id(1) % kv_heads
    HALF: tl.constexpr = BLOCK_D // 2
    K, V = _rows(K, b, g, stride_kb, stride_kh), _rows(V, b, g, stride_vb, stride_vh)
    DK, DV = _rows(DK, b, g, stride_dkb, stride_dkh), _rows(DV, b, g, stride_dvb, stride_dvh)
    COS, SIN = COS + b.to(tl.int64) * stride_cb, SIN + b.to(tl.int64) * stride_cb
    DOC_START += b.to(tl.int64) * seq_len
    diag = start_n * BLOCK_N
    offs_n = diag + tl.arange(0, BLOCK_N)
    key_ok = offs_n < seq_len
    cos, sin = None, None
    if ROPE:
        cos, sin = _angles(COS, SIN, offs_n, key_ok, stride_ct, HEAD_DIM, HALF)
    ka, kb = _load_halves(K, offs_n, key_ok, stride_kt, cos, sin, HEAD_DIM, HALF, ROPE, True)
    v = _load_rows(V, offs_n, key_ok, stride_vt, HEAD_DIM, BLOCK_D, True)
    hi = seq_len
    if DOC:  # queries past the last key's document see none of these keys: stop there
        hi = tl.load(DOC_END + b.to(tl.int64) * seq_len + tl.minimum(diag + BLOCK_N, seq_len) - 1)
    dka = tl.zeros([BLOCK_N, HALF], tl.float32)
    dkb = tl.zeros([BLOCK_N, HALF], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    h = g * group  # the group's first query head; the walks take its heads in order: a deterministic sum
    Q, DO = _rows(Q, b, h, stride_qb, stride_qh), _rows(DO, b, h, stride_dob, stride_doh)
    rows = (b * q_heads + h).to(tl.int64) * seq_len
    LSE, DELTA = LSE + rows, DELTA + rows
    dka, dkb, dv = _attn_bwd_dkdv_inner(dka, dkb, dv, ka, kb, v, Q, DO, LSE, DELTA, stride_qh, stride_qt, stride_doh,
                                        stride_dot, seq_len, COS, SIN, stride_ct, DOC_START, offs_n, diag,
                                        tl.minimum(diag + BLOCK_N, seq_len), group, qk_scale, True, DOC, ROPE,
                                        HEAD_DIM, HALF, BLOCK_M)
    dka, dkb, dv = _attn_bwd_dkdv_inner(dka, dkb, dv, ka, kb, v, Q, DO, LSE, DELTA, stride_qh, stride_qt, stride_doh,
                                        stride_dot, seq_len, COS, SIN, stride_ct, DOC_START, offs_n, diag + BLOCK_N,
                                        hi, group, qk_scale, False, DOC, ROPE, HEAD_DIM, HALF, BLOCK_M)
    if ROPE:  # loaded again rather than held through the loops
        cos, sin = _angles(COS, SIN, offs_n, key_ok, stride_ct, HEAD_DIM, HALF)
    _store_halves(DK, offs_n, key_ok, stride_dkt, dka * sm_scale, dkb * sm_scale, cos, sin, HEAD_DIM, HALF, ROPE)
    cols = tl.arange(0, BLOCK_D)
    tl.store(DV + offs_n[:, None] * stride_dvt + cols[None, :], dv.to(DV.dtype.element_ty),
             mask=key_ok[:, None] & (cols < HEAD_DIM)[None, :])
