"""Plain-PyTorch reference of every op: the spec each Triton kernel in ``lmfast.kernels`` matches.

These run anywhere PyTorch runs (CPU, CUDA, Apple MPS) and never import Triton. On CPU they are also
the fast path: where a fused PyTorch primitive computes exactly the same function (softmax attention),
the reference calls it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

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

    Stable through logsumexp: ``loss = logsumexp(logits) - logits[target]``, computed in fp32.
    """
    logits = logits.reshape(-1, logits.shape[-1]).float()
    targets = targets.reshape(-1)
    lse = torch.logsumexp(logits, dim=-1)
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (lse - picked).mean()


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """RMSNorm over the last dim: ``x / sqrt(mean(x^2) + eps) * weight``, in fp32, cast back to ``x.dtype``.

    x: (..., d); weight: (d,). Returns (..., d) in ``x.dtype``.
    """
    x32 = x.float()
    rstd = torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (x32 * rstd * weight.float()).to(x.dtype)


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
    Computed in fp32, returned in ``x.dtype``.
    """
    pairs = x.float().unflatten(-1, (-1, 2))
    x0, x1 = pairs[..., 0], pairs[..., 1]
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return out.flatten(-2).to(x.dtype)


def rope(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE on queries and keys together: the reference of the fused ``lmfast::rope`` kernel.

    q, k: (batch, heads, seq, head_dim); cos, sin: (seq, head_dim // 2) or (batch, seq, head_dim // 2).
    """
    if cos.dim() == 3:  # per-batch positions: broadcast over heads
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return apply_rope(q, cos, sin), apply_rope(k, cos, sin)


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
    """
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
