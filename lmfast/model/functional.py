"""Plain-PyTorch reference of every op: the spec each Triton kernel in ``lmfast.kernels`` matches.

These run anywhere PyTorch runs (CPU, CUDA, Apple MPS) and never import Triton. On CPU they are also
the fast path: where a fused PyTorch primitive computes exactly the same function (softmax attention),
the reference calls it.
"""

from __future__ import annotations

import math
import threading

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = [
    "softmax",
    "silu",
    "cross_entropy",
    "linear_cross_entropy",
    "lce_compute_dtype",
    "lce_chunk_rows",
    "lce_release_workspace",
    "rmsnorm",
    "add_rmsnorm",
    "rope_inv_freq",
    "rope_cos_sin",
    "apply_rope",
    "rope",
    "rope_attention",
    "scaled_dot_product_attention",
    "causal_attention",
    "document_ids",
    "document_positions",
    "document_mask",
]


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in fp32, or as it is when already fp32/fp64: low precision is upcast, float64 is never truncated
    (so float64 inputs get float64 results, which ``torch.autograd.gradcheck`` needs)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Numerically stable softmax along ``dim`` (the max is subtracted before ``exp``)."""
    shifted = x - x.amax(dim=dim, keepdim=True)
    e = torch.exp(shifted)
    return e / e.sum(dim=dim, keepdim=True)


def silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU / swish: ``x * sigmoid(x)``."""
    return x * torch.sigmoid(x)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` (..., vocab) against integer ``targets`` (...).

    Stable through log-softmax: ``loss = logsumexp(logits) - logits[target]``, computed in fp32
    (fp64 logits stay fp64).
    """
    logits = _at_least_fp32(logits.reshape(-1, logits.shape[-1]))
    return _CrossEntropy.apply(logits, targets.reshape(-1))


class _CrossEntropy(torch.autograd.Function):
    """Cross-entropy with a hand-written backward ``(softmax - onehot) / N``.

    Performance note: autograd through ``logsumexp - gather`` made ~10 passes over the (N, vocab) logits
    (sub, exp, sum, mul, zero-filled scatter, add); ``F.cross_entropy`` ~8. Saving the log-softmax and
    writing the gradient as ``exp(log_softmax)``, one indexed subtract and one in-place scale takes ~5: forward +
    backward of 2048 x 4096 fp32 logits on one CPU core went 133 ms -> 65 ms (``F.cross_entropy``: 84 ms).
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        log_probs = torch.log_softmax(logits, dim=-1)
        ctx.save_for_backward(log_probs, targets)
        return -log_probs.gather(-1, targets.unsqueeze(-1)).mean()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss: torch.Tensor) -> tuple[torch.Tensor, None]:
        log_probs, targets = ctx.saved_tensors
        rows = log_probs.shape[0]
        grad = torch.exp(log_probs)
        grad[torch.arange(rows, device=grad.device), targets] -= 1.0
        grad.mul_(grad_loss / rows)
        return grad, None


# Logits of one chunk of tokens hold at most this many elements (128 MiB in fp32). Measured on 2 CPU cores at
# N = 8192, d = 768, V = 50257 (benchmarks/results/loss_memory_cpu.md): smaller chunks re-read the (V, d)
# weight-gradient accumulator more often; larger ones only add memory.
LCE_CHUNK_ELEMENTS = 1 << 25


def lce_chunk_rows(rows: int, vocab: int, chunk_size: int | None = None) -> int:
    """Tokens per chunk of :func:`linear_cross_entropy`: ``chunk_size``, or the most whose logits fit in
    ``LCE_CHUNK_ELEMENTS``, evened out so the last chunk is not a sliver."""
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive number of tokens, got {chunk_size}")
        return chunk_size
    most = max(1, LCE_CHUNK_ELEMENTS // max(vocab, 1))
    chunks = max(1, -(-rows // most))
    return max(1, -(-rows // chunks))


def lce_compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype the logits matmul runs in: autocast's where it is on (as ``F.linear`` would), else the inputs'.

    fp64 inputs stay fp64, as autocast leaves them.
    """
    dtype = torch.promote_types(hidden.dtype, weight.dtype)
    device = hidden.device.type
    if dtype != torch.float64 and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return dtype


def _check_lce_inputs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> None:
    if weight.dim() != 2 or hidden.dim() == 0 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear_cross_entropy needs hidden (..., d) and weight (vocab, d), got hidden "
                         f"{tuple(hidden.shape)} and weight {tuple(weight.shape)}")
    if targets.shape != hidden.shape[:-1]:
        raise ValueError(f"targets must have hidden's leading shape {tuple(hidden.shape[:-1])}, got "
                         f"{tuple(targets.shape)}")
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise ValueError(f"targets must be integer token ids, got dtype {targets.dtype}")


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk_size: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of the logits ``hidden @ weight.T`` against ``targets``, never holding all the logits.

    hidden: (..., d); weight: (vocab, d); targets: (...) integer ids in [0, vocab), hidden's leading shape.
    Returns a 0-d tensor equal to ``cross_entropy(hidden @ weight.T, targets)``: fp32 (fp64 for fp64 inputs).
    Tokens go through in chunks of ``chunk_size`` (default: see :func:`lce_chunk_rows`); each chunk's logits are
    made, turned into the loss and, when a gradient is wanted, straight into its share of ``d hidden`` and
    ``d weight`` (fp32 accumulators), then dropped. Backward only scales those by the incoming gradient.
    Under autocast the matmuls run in the autocast dtype, as ``F.linear`` would, and the softmax in fp32.

    >>> h, w, t = torch.randn(6, 4), torch.randn(10, 4), torch.randint(0, 10, (6,))
    >>> torch.allclose(linear_cross_entropy(h, w, t, chunk_size=4), cross_entropy(h @ w.T, t))
    True
    """
    _check_lce_inputs(hidden, weight, targets)
    flat = hidden.reshape(-1, hidden.shape[-1])
    rows = lce_chunk_rows(flat.shape[0], weight.shape[0], chunk_size)
    dtype = lce_compute_dtype(hidden, weight)
    return _LinearCrossEntropy.apply(flat, weight, targets.reshape(-1), dtype, rows, torch.is_grad_enabled())


class _LinearCrossEntropy(torch.autograd.Function):
    """Chunked linear + cross-entropy whose gradient is made in the forward (as Liger-Kernel's fused linear
    cross-entropy does on GPUs), so backward only scales it.

    Per chunk of c tokens: ``logits = h_c W^T`` (c, V); ``log_softmax`` in fp32 gives the loss; its ``exp``,
    minus 1 at the targets, is ``d logits`` (the 1/N of the mean goes into the two matmuls that follow):
    ``d h_c = d logits @ W``, ``d W += d logits^T @ h_c``. Three matmuls in all, as the unfused loss.

    Performance notes (2 CPU cores, N = 8192, d = 768, V = 50257; benchmarks/results/loss_memory_cpu.md):
    recomputing the logits in backward instead would lower no peak (d W is allocated either way) and cost a
    fourth matmul. The chunk buffers are allocated once and reused through ``out=``: fresh ones cost a page
    fault per 4 KiB on every chunk (glibc maps each allocation over 32 MiB anew), and reusing them took bf16
    forward+backward from 12.6 to 8.6 s of CPU time. ``d logits`` overwrites the logits buffer in the matmul
    dtype, rounded once from fp32, as the unfused loss under autocast rounds it.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, dtype, rows, grad_enabled):
        want_dh = grad_enabled and ctx.needs_input_grad[0]
        want_dw = grad_enabled and ctx.needs_input_grad[1]
        with torch.autocast(hidden.device.type, enabled=False):
            total, dh, dw = _lce_forward(hidden, weight, targets, dtype, rows, want_dh, want_dw)
        ctx.save_for_backward(dh, dw)
        return total / hidden.shape[0]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        dh, dw = ctx.saved_tensors
        # In place: the forward made these for this backward alone. A second backward through a retained graph
        # fails autograd's saved-tensor version check rather than hand out gradients scaled twice.
        dh = dh.mul_(grad_loss) if dh is not None else None
        dw = dw.mul_(grad_loss) if dw is not None else None
        return dh, dw, None, None, None, None


def _lce_forward(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype, rows: int,
                 want_dh: bool, want_dw: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Summed loss, and ``d hidden`` / ``d weight`` of the mean loss when wanted (else None), chunk by chunk."""
    n = hidden.shape[0]
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    narrow = dtype != acc  # bf16/fp16 matmuls: logits and d logits in that dtype, the softmax widened to fp32
    device = hidden.device
    h, w = hidden.to(dtype), weight.to(dtype)  # once, not per chunk as autocast would
    dh = torch.empty(hidden.shape, dtype=hidden.dtype, device=device) if want_dh else None
    dw = torch.empty(weight.shape, dtype=acc, device=device) if want_dw else None
    logits_buf, wide_buf, log_probs_buf, dw_part = _lce_buffers(max(1, min(rows, n)), weight.shape, dtype, acc, device)
    total = torch.zeros((), dtype=acc, device=device)
    scale = 1.0 / max(n, 1)
    for start in range(0, n, rows):
        end = min(start + rows, n)
        h_c, t_c = h[start:end], targets[start:end]
        logits = torch.mm(h_c, w.T, out=logits_buf[: end - start])
        wide = wide_buf[: end - start].copy_(logits) if narrow else logits
        log_probs = torch.log_softmax(wide, dim=-1, out=log_probs_buf[: end - start])
        target_lp = log_probs.gather(1, t_c.unsqueeze(1)).squeeze(1)
        total -= target_lp.sum()
        if not (want_dh or want_dw):
            continue
        grad = logits.copy_(log_probs.exp_()) if narrow else torch.exp(log_probs, out=logits)
        grad[torch.arange(end - start, device=device), t_c] = (target_lp.exp() - 1.0).to(dtype)
        if want_dh:
            torch.mul(grad @ w, scale, out=dh[start:end])
        if want_dw and narrow:
            _add_widened(dw, torch.mm(grad.T, h_c, out=dw_part), wide_buf.view(-1), scale, first=start == 0)
        elif want_dw:  # beta=0 on the first chunk: dw starts uninitialised, and is not read
            torch.addmm(dw, grad.T, h_c, beta=0.0 if start == 0 else 1.0, alpha=scale, out=dw)
    if want_dw and n == 0:
        dw.zero_()
    return total, dh, dw.to(weight.dtype) if want_dw else None


_workspace = threading.local()


def _lce_buffers(rows: int, weight_shape: torch.Size, dtype: torch.dtype, acc: torch.dtype, device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """The chunk buffers (logits, their fp32 copy when narrow, log-probs, a narrow d-weight product).

    On CPU they are kept per thread from call to call while the shapes repeat (a training run calls with one shape
    every step): glibc maps each allocation over 32 MiB afresh, and first touching its pages costs more than the
    work done in them (an exp over 2048 x 10000 fp32: 62 ms into a fresh tensor, 17 ms into a reused one). The
    buffers hold only scratch; nothing returned aliases them. :func:`lce_release_workspace` frees them.
    """
    key = (rows, tuple(weight_shape), dtype, device)
    keep = device.type == "cpu" and not torch.compiler.is_compiling()
    cached = getattr(_workspace, "lce", None)
    if keep and cached is not None and cached[0] == key:
        return cached[1]
    narrow, vocab = dtype != acc, weight_shape[0]
    buffers = (torch.empty(rows, vocab, dtype=dtype, device=device),
               torch.empty(rows, vocab, dtype=acc, device=device) if narrow else None,
               torch.empty(rows, vocab, dtype=acc, device=device),
               torch.empty(weight_shape, dtype=dtype, device=device) if narrow else None)
    if keep:
        _workspace.lce = (key, buffers)
    return buffers


def lce_release_workspace() -> None:
    """Free the chunk buffers :func:`linear_cross_entropy` keeps on CPU for this thread."""
    _workspace.lce = None


def _add_widened(acc: torch.Tensor, part: torch.Tensor, scratch: torch.Tensor, scale: float, first: bool) -> None:
    """``acc += scale * part`` (``acc = scale * part`` when ``first``) for an fp32 ``acc`` and a bf16/fp16 ``part``,
    widened through ``scratch`` (fp32).

    CPU has no mixed-precision addmm, and ``acc.add_(part)`` would allocate an fp32 copy of ``part`` (V x d, a
    fresh mapping and its page faults) every chunk; the chunk's softmax buffer is free by now, so the widening
    goes through it, a slice of rows at a time.
    """
    rows = max(1, scratch.numel() // part.shape[1])
    for start in range(0, part.shape[0], rows):
        end = min(start + rows, part.shape[0])
        stage = scratch[: (end - start) * part.shape[1]].view(end - start, part.shape[1]).copy_(part[start:end])
        if first:
            torch.mul(stage, scale, out=acc[start:end])
        else:
            acc[start:end].add_(stage, alpha=scale)


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """RMSNorm over the last dim: ``x / sqrt(mean(x^2) + eps) * weight``, in fp32 (fp64 stays fp64).

    x: (..., d); weight: (d,). Returns (..., d) in ``x.dtype``.
    """
    if torch.compiler.is_compiling():  # inductor fuses the formula into a loop or two
        x32 = _at_least_fp32(x)
        rstd = torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps)
        return (x32 * rstd * weight.to(x32.dtype)).to(x.dtype)
    return _RMSNorm.apply(x, weight, eps)


class _RMSNorm(torch.autograd.Function):
    """RMSNorm with a hand-written backward: with ``xhat = x * rstd`` and ``g = dy * w``,
    ``dx = rstd * (g - xhat * mean(g * xhat))`` and ``dw = sum_rows(dy * xhat)``.

    Performance note: autograd through ``pow, mean, rsqrt, mul, mul`` made ~11 passes over the activations
    (a full-size ``x^2`` among them); ``vector_norm`` (no temporary), in-place products and this backward make
    ~8. Forward + backward of (8, 256, 512) fp32 on one CPU core: 16.7 -> 12.8 ms (nine of them per step of
    the d512 benchmark model).
    """

    @staticmethod
    def forward(ctx, x, weight, eps):
        x32 = _at_least_fp32(x)
        w = weight.to(x32.dtype)
        rstd = torch.linalg.vector_norm(x32, dim=-1, keepdim=True).square_().div_(x.shape[-1]).add_(eps).rsqrt_()
        ctx.save_for_backward(x, w, rstd)
        ctx.weight_dtype = weight.dtype
        return (x32 * rstd).mul_(w).to(x.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, w, rstd = ctx.saved_tensors
        x32, dy = _at_least_fp32(x), dy.to(w.dtype)  # one widening of a bf16 dy, not one per product
        g = dy * w
        xhat = x32 * rstd
        mean_gx = (g * xhat).mean(dim=-1, keepdim=True)
        dw = xhat.mul_(dy).sum(dim=tuple(range(dy.dim() - 1))) if ctx.needs_input_grad[1] else None
        dx = g.addcmul_(x32 * rstd, mean_gx, value=-1.0).mul_(rstd).to(x.dtype) if ctx.needs_input_grad[0] else None
        return dx, None if dw is None else dw.to(ctx.weight_dtype), None


def add_rmsnorm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5,
                out_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual add before a pre-norm and the norm: ``h = residual + x``, ``y = rmsnorm(h)``; the reference of
    the fused ``lmfast::add_rmsnorm`` (one read of both, writes of h and y).

    x, residual: (..., d), any float dtypes (h takes their promoted dtype, e.g. fp32 for a bf16 branch output on an
    fp32 residual stream under autocast); weight: (d,). Returns ``(h, y)``, y in ``out_dtype`` (default h's dtype):
    the dtype the layers reading y take, so no separate cast follows.
    """
    h = residual + x
    y = rmsnorm(h, weight, eps)
    return h, y if out_dtype is None else y.to(out_dtype)


def rope_inv_freq(theta: float, head_dim: int, scaling: dict | None = None, device=None) -> torch.Tensor:
    """RoPE's (head_dim // 2,) fp64 inverse frequencies ``theta ** (-2i / head_dim)``, optionally rescaled.

    ``scaling`` None is plain RoPE; ``{"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
    "original_max_position_embeddings"}`` is Llama-3.1's: wavelengths longer than ``original / low_freq_factor``
    are divided by ``factor``, shorter than ``original / high_freq_factor`` kept, and those between interpolated
    (transformers' ``_compute_llama3_parameters``, the same formula).
    """
    if head_dim % 2 != 0:
        raise ValueError(f"RoPE needs an even head dim, got {head_dim}; pick d_model / num_heads even")
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim)
    if scaling is None:
        return inv_freq
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind != "llama3":
        raise ValueError(f"rope_scaling type {kind!r} is not implemented; use llama3, or null for plain RoPE")
    factor, low, high = (float(scaling[k]) for k in ("factor", "low_freq_factor", "high_freq_factor"))
    original = float(scaling["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > original / low, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= original / high) & (wavelen <= original / low)
    return torch.where(medium, smoothed, scaled)


def rope_cos_sin(
    theta: float, head_dim: int, positions: torch.Tensor, scaling: dict | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for RoPE at integer ``positions`` (any shape P): each (*P, head_dim // 2), fp32.

    Pair i rotates by angle ``pos * theta ** (-2i / head_dim)`` (rescaled by ``scaling``: see :func:`rope_inv_freq`).
    """
    inv_freq = rope_inv_freq(theta, head_dim, scaling, positions.device)
    angles = positions.to(torch.float64).unsqueeze(-1) * inv_freq
    return torch.cos(angles).float(), torch.sin(angles).float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (x0, x1), (x2, x3), ... of the last dim of ``x`` by the given angles.

    x: (..., seq, head_dim); cos, sin: broadcastable to (..., seq, head_dim // 2), fp32.
    ``out[2i] = x[2i] cos_i - x[2i+1] sin_i``, ``out[2i+1] = x[2i] sin_i + x[2i+1] cos_i``.
    Computed in fp32 (fp64 stays fp64), returned in ``x.dtype``.
    """
    if torch.compiler.is_compiling():
        return _apply_rope_pairs(x, cos, sin)
    return _apply_rope_complex(x, torch.complex(cos, sin))


def _apply_rope_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # The formula as written; under torch.compile inductor fuses it into one loop (it handles complex views
    # poorly, and the stride checks of the eager path would break the graph).
    pairs = _at_least_fp32(x).unflatten(-1, (-1, 2))
    x0, x1 = pairs[..., 0], pairs[..., 1]
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2).to(x.dtype)


def _apply_rope_complex(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    # Adjacent pairs as complex numbers z = x[2i] + i x[2i+1] times rotation = cos + i sin: the real part is
    # x0 cos - x1 sin and the imaginary part x0 sin + x1 cos, the pairwise formula above, and PyTorch's complex
    # multiply agrees with it to fp32 rounding (bit-equal in its vectorised loop; the scalar tail may fuse a
    # multiply-add). Performance note: one vectorised complex multiply each way instead of 6 strided products
    # plus a stack (or a pair swap through ``flip``, slow on the transposed head views): forward+backward of
    # (16, 8, 128, 32) on one CPU core went 4.3 ms -> 0.6 ms.
    x32 = _at_least_fp32(x)
    if not _complex_viewable(x32):
        x32 = x32.clone(memory_format=torch.contiguous_format)  # fresh, even strides and offset
    z = torch.view_as_complex(x32.unflatten(-1, (-1, 2)))
    return torch.view_as_real(z * rotation).flatten(-2).to(x.dtype)


def _complex_viewable(x: torch.Tensor) -> bool:
    return x.stride(-1) == 1 and x.storage_offset() % 2 == 0 and all(s % 2 == 0 for s in x.stride()[:-1])


def rope(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE on queries and keys together: the reference of the fused ``lmfast::rope`` kernel.

    q, k: (batch, heads, seq, head_dim); cos, sin: (seq, head_dim // 2) or (batch, seq, head_dim // 2).
    """
    if cos.dim() == 3:  # per-batch positions: broadcast over heads
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    if torch.compiler.is_compiling():
        return _apply_rope_pairs(q, cos, sin), _apply_rope_pairs(k, cos, sin)
    rotation = torch.complex(cos, sin)
    return _apply_rope_complex(q, rotation), _apply_rope_complex(k, rotation)


def rope_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   scale: float | None = None, *, doc_ids: torch.Tensor | None = None) -> torch.Tensor:
    """RoPE on q and k, then causal attention: the reference of the fused ``lmfast::attention`` with RoPE inside.

    q: (batch, q_heads, seq, head_dim); k, v: (batch, kv_heads, seq, head_dim); cos, sin: (seq, head_dim // 2) or
    (batch, seq, head_dim // 2), e.g. :func:`rope_cos_sin` at :func:`document_positions`; ``doc_ids`` as in
    :func:`causal_attention`.
    """
    q, k = rope(q, k, cos, sin)
    return causal_attention(q, k, v, scale, doc_ids=doc_ids)


def scaled_dot_product_attention(
    Q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Softmax attention ``softmax(Q K^T / sqrt(d_k)) V`` written out; ``mask`` is boolean, True = attend.

    Q: (..., queries, d_k); K: (..., keys, d_k); V: (..., keys, d_v); mask: (..., queries, keys).
    """
    scores = Q @ K.transpose(-2, -1) / math.sqrt(Q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return softmax(scores, dim=-1) @ V


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None, *,
                     doc_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Causal softmax attention, with grouped-query heads and document masking: the reference of the fused
    ``lmfast::attention`` kernel.

    q: (batch, q_heads, seq, head_dim); k, v: (batch, kv_heads, seq, head_dim) with ``q_heads % kv_heads == 0``:
    query head ``h`` reads kv head ``h // (q_heads // kv_heads)`` (the layout of transformers' ``repeat_kv``).
    ``doc_ids``: None, or (batch, seq) int32/int64, non-decreasing along seq; token i then attends token j iff
    ``j <= i and doc_ids[b, i] == doc_ids[b, j]`` (:func:`document_ids` makes them). Returns (batch, q_heads, seq,
    head_dim). Uses PyTorch's fused SDPA (``enable_gqa``, so K/V are never repeated where SDPA can avoid it), which
    computes the same function as :func:`scaled_dot_product_attention` with the mask written out (the tests hold
    the two equal). A scale <= 0 takes SDPA's math backend: its fused CPU kernel returns NaN for one (torch 2.13).
    """
    _check_attention_heads(q, k, v, doc_ids)
    out_dtype = _cpu_attention_in_fp32(q)
    if out_dtype is not None:
        with torch.autocast("cpu", enabled=False):
            return causal_attention(q.float(), k.float(), v.float(), scale, doc_ids=doc_ids).to(out_dtype)
    gqa = {"enable_gqa": True} if k.shape[1] != q.shape[1] else {}
    mask = {"is_causal": True} if doc_ids is None else {"attn_mask": document_mask(doc_ids)}
    if scale is not None and scale <= 0:
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, scale=scale, **mask, **gqa)
    return F.scaled_dot_product_attention(q, k, v, scale=scale, **mask, **gqa)


def _check_attention_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, doc_ids: torch.Tensor | None) -> None:
    if k.shape != v.shape or q.dim() != 4 or k.dim() != 4 or k.shape[1] == 0 or q.shape[1] % k.shape[1]:
        raise ValueError(f"causal_attention needs q (batch, q_heads, seq, head_dim) and k, v (batch, kv_heads, seq, "
                         f"head_dim) with q_heads divisible by kv_heads, got q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    if doc_ids is not None and (doc_ids.shape != (q.shape[0], q.shape[2]) or doc_ids.dtype.is_floating_point):
        raise ValueError(f"doc_ids must be integer (batch, seq) = {(q.shape[0], q.shape[2])}, got "
                         f"{doc_ids.dtype} {tuple(doc_ids.shape)}")


def document_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """The boolean (batch, 1, seq, seq) mask of causal attention within documents: True where ``j <= i`` and
    ``doc_ids[b, i] == doc_ids[b, j]`` (SDPA's convention, True = attend). The diagonal is always True."""
    seq = doc_ids.shape[-1]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=doc_ids.device).tril()
    return ((doc_ids.unsqueeze(-1) == doc_ids.unsqueeze(-2)) & causal).unsqueeze(1)


def document_ids(tokens: torch.Tensor, eot_id: int) -> torch.Tensor:
    """Which document each token of a packed (batch, seq) window belongs to: (batch, seq) int32, from 0 in each row.

    A new document starts right after each end-of-text token ``eot_id``; the EOT token belongs to the document it
    ends. ``[[5, 7, EOT, 9, EOT, EOT, 3]] -> [[0, 0, 0, 1, 1, 2, 3]]``.
    """
    is_eot = (tokens == eot_id).to(torch.int32)
    return (torch.cumsum(is_eot, dim=-1, dtype=torch.int32) - is_eot).to(torch.int32)


def document_positions(doc_ids: torch.Tensor) -> torch.Tensor:
    """Each token's position inside its document: (batch, seq) int64, restarting at 0 where ``doc_ids`` changes.

    Feed them to :func:`rope_cos_sin` (any shape of positions) and :func:`rope` (per-batch tables), so RoPE sees
    every document as if it started the window.
    """
    seq = doc_ids.shape[-1]
    idx = torch.arange(seq, device=doc_ids.device).expand_as(doc_ids)
    new = torch.ones_like(doc_ids, dtype=torch.bool)
    new[..., 1:] = doc_ids[..., 1:] != doc_ids[..., :-1]
    start = torch.where(new, idx, torch.zeros_like(idx)).cummax(dim=-1).values
    return idx - start


def _cpu_attention_in_fp32(q: torch.Tensor) -> torch.dtype | None:
    """The dtype to return when half-precision attention on CPU should run in fp32 instead; None to run as is.

    Performance note: PyTorch's CPU flash attention is slower in bf16 than in fp32 below head dim 64, on AMX
    Xeons too (torch 2.13, one core, forward + backward, causal, (batch, heads, seq) = (8, 16, 256)): head dim
    16: 128 vs 64 ms, 32: 99 vs 72 ms (at (16, 8, 128): 57 vs 20 ms), 48: 153 vs 96 ms; at 64 and 128 bf16
    wins (51 vs 75 ms) where the CPU multiplies bf16 natively. The fp32 run is also the more accurate one.
    """
    if q.device.type != "cpu":
        return None
    if q.dtype in (torch.bfloat16, torch.float16):
        low = q.dtype
    elif q.dtype == torch.float32 and torch.is_autocast_enabled("cpu"):
        low = torch.get_autocast_dtype("cpu")  # autocast would run SDPA in it
    else:
        return None
    from lmfast.model.precision import cpu_bf16_native

    return low if q.shape[-1] < 64 or not cpu_bf16_native()[0] else None
