"""Plain-PyTorch reference of every op: the spec each Triton kernel in ``lmfast.kernels`` matches.

These run anywhere PyTorch runs (CPU, CUDA, Apple MPS) and never import Triton. On CPU they are also
the fast path: where a fused PyTorch primitive computes exactly the same function (softmax attention),
the reference calls it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = [
    "softmax",
    "silu",
    "cross_entropy",
    "rmsnorm",
    "rope_cos_sin",
    "apply_rope",
    "rope",
    "scaled_dot_product_attention",
    "causal_attention",
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


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """RMSNorm over the last dim: ``x / sqrt(mean(x^2) + eps) * weight``, in fp32 (fp64 stays fp64).

    x: (..., d); weight: (d,). Returns (..., d) in ``x.dtype``.
    """
    x32 = _at_least_fp32(x)
    rstd = torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (x32 * rstd * weight.to(x32.dtype)).to(x.dtype)


def rope_cos_sin(
    theta: float, head_dim: int, positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for RoPE at integer ``positions`` (any shape P): each (*P, head_dim // 2), fp32.

    Pair i rotates by angle ``pos * theta ** (-2i / head_dim)``.
    """
    if head_dim % 2 != 0:
        raise ValueError(f"RoPE needs an even head dim, got {head_dim}; pick d_model / num_heads even")
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64, device=positions.device) / head_dim)
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


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Causal softmax attention: the reference of the fused ``lmfast::attention`` kernel.

    q, k, v: (batch, heads, seq, head_dim). Uses PyTorch's fused SDPA, which computes the same function
    as :func:`scaled_dot_product_attention` with a lower-triangular mask (the tests hold the two equal).
    A scale <= 0 takes SDPA's math backend: its fused CPU kernel returns NaN for one (torch 2.13).
    """
    if scale is not None and scale <= 0:
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
