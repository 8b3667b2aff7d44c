"""Pick the reference or fused (Triton) implementation of each op, once, when the model is built.

``auto`` means fused on CUDA when Triton imports, reference everywhere else. An explicit ``fused`` on a
machine that cannot run it, or for a model shape its kernels do not take, is an error that says why, never a
silent fallback. Under ``auto`` an op whose kernel does not take the model's shape (attention beyond head dim 256,
say) runs its reference, and the one log line of the choice says so. A feature no kernel takes yet (grouped-query
heads, document masks) runs the reference op on ``fused`` and ``auto`` alike, with that same log line. The same
rules on every op: the fused Ops are the kernels only where the CUDA dtype rule allows (attention in fp32 keeps
PyTorch's exact SDPA), and the trainer's AdamW follows the resolved backend too.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from lmfast.model import functional

__all__ = ["Ops", "BACKENDS", "resolve_backend", "get_ops", "fused_unavailable_reason", "fused_shape_limits",
           "fused_feature_gaps"]

BACKENDS = ("auto", "reference", "fused")
_log = logging.getLogger("lmfast")


@dataclass(frozen=True)
class Ops:
    """The ops a model calls: ``self.ops.rmsnorm(x, w, eps)`` reads the same on either backend (and the trainer's
    loss, ``ops.linear_cross_entropy``)."""

    name: str
    rmsnorm: Callable  # (x, weight, eps) -> y
    rope: Callable  # (q, k, cos, sin) -> (q_rot, k_rot)
    attention: Callable  # (q, k, v, scale=None, *, doc_ids=None) -> causal attention output (GQA by k/v's heads)
    # (hidden, weight, targets) -> mean cross-entropy of hidden @ weight.T, never holding all the logits
    linear_cross_entropy: Callable = functional.linear_cross_entropy


REFERENCE = Ops("reference", functional.rmsnorm, functional.rope, functional.causal_attention)


def fused_unavailable_reason(device: torch.device | str) -> str | None:
    """Why the fused Triton kernels cannot run on ``device``, or None when they can."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"fused Triton kernels run on CUDA GPUs only, and the device is {device.type!r}"
    if not torch.cuda.is_available():
        return "fused Triton kernels need CUDA, and torch.cuda.is_available() is False"
    if importlib.util.find_spec("triton") is None:
        return "fused Triton kernels need the `triton` package: pip install triton (Linux only)"
    return None


# The largest sizes the fused kernels take, checked where the model is built (kernels/*.py hold the same limits).
_MAX_HIDDEN, _MAX_ROPE_HEAD_DIM, _MAX_ATTENTION_HEAD_DIM = 16384, 512, 256


def fused_shape_limits(d_model: int | None, head_dim: int | None) -> list[str]:
    """The fused ops that cannot take a model of this shape, each as a sentence; empty when all can."""
    limits = []
    if d_model is not None and d_model > _MAX_HIDDEN:
        limits.append(f"the RMSNorm kernel takes d_model up to {_MAX_HIDDEN}, got {d_model}")
    if head_dim is not None and head_dim > _MAX_ROPE_HEAD_DIM:
        limits.append(f"the RoPE kernel takes head dims up to {_MAX_ROPE_HEAD_DIM}, got {head_dim}")
    if head_dim is not None and head_dim > _MAX_ATTENTION_HEAD_DIM:
        limits.append(f"the attention kernel takes head dims up to {_MAX_ATTENTION_HEAD_DIM}, got {head_dim}")
    return limits


def fused_feature_gaps(num_heads: int | None = None, num_kv_heads: int | None = None,
                       document_masking: bool = False) -> list[str]:
    """The model features no fused kernel takes yet, each as a sentence: those ops run their reference."""
    gaps = []
    if num_kv_heads is not None and num_heads is not None and num_kv_heads != num_heads:
        gaps.append(f"the attention kernel takes no grouped-query heads yet ({num_heads} query, {num_kv_heads} "
                    "key/value heads)")
    if document_masking:
        gaps.append("the attention kernel takes no document masks yet")
    return gaps


def resolve_backend(backend: str, device: torch.device | str, d_model: int | None = None,
                    head_dim: int | None = None, gaps: list[str] | None = None) -> str:
    """Turn ``auto | reference | fused`` into ``reference`` or ``fused`` for ``device``; logs the choice once.

    With the model's ``d_model`` / ``head_dim``, an explicit ``fused`` also checks the kernels take that shape.
    ``gaps`` (:func:`fused_feature_gaps`) are named in the log line: those ops run their reference on either backend.
    Raises ValueError when ``fused`` cannot run (the trainer prints it as one line, exit code 2).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    reason = fused_unavailable_reason(device)
    if backend == "fused" and reason is not None:
        raise ValueError(f"backend 'fused' cannot run here: {reason}. Use backend: reference (or auto).")
    limits = fused_shape_limits(d_model, head_dim)
    if backend == "fused" and limits:
        raise ValueError(f"backend 'fused' cannot run this model: {'; '.join(limits)}. Use backend: auto (the "
                         "reference op where a kernel does not fit) or reference, or change d_model / num_heads.")
    chosen = "reference" if backend == "reference" or reason is not None else "fused"
    where = limits + (gaps or [])
    note = f"; reference where {'; '.join(where)}" if chosen == "fused" and where else ""
    _log.info("ops backend: %s (asked %s, device %s%s)", chosen, backend, torch.device(device), note)
    return chosen


@functools.cache
def _fused_ops() -> Ops:
    from lmfast.kernels.attention import attention
    from lmfast.kernels.linear_cross_entropy import linear_cross_entropy
    from lmfast.kernels.rmsnorm import rmsnorm
    from lmfast.kernels.rope import rope

    # Each wrapper decides on static facts (dtype, sizes), so under torch.compile the choice is a guard, not a
    # graph break. Shapes past a kernel's limit only arrive here under backend: auto (resolve_backend refuses
    # them for an explicit fused).
    def fused_rmsnorm(x, weight, eps=1e-5):
        if x.shape[-1] > _MAX_HIDDEN:
            return functional.rmsnorm(x, weight, eps)
        return rmsnorm(x, weight, eps)

    def fused_rope(q, k, cos, sin):
        if q.shape[-1] > _MAX_ROPE_HEAD_DIM:
            return functional.rope(q, k, cos, sin)
        return rope(q, k, cos, sin)

    def fused_attention(q, k, v, scale=None, *, doc_ids=None):
        # On a GPU tl.dot rounds fp32 to tf32, so fp32 attention (dtype: float32, no autocast) keeps PyTorch's
        # exact SDPA; bf16/fp16, the trainer's default on CUDA, takes the Triton kernel. Grouped-query heads and
        # document masks take the reference until the kernel has them (fused_feature_gaps logs it once).
        if q.dtype == torch.float32 or q.shape[-1] > _MAX_ATTENTION_HEAD_DIM or doc_ids is not None or \
                k.shape[1] != q.shape[1]:
            return functional.causal_attention(q, k, v, scale, doc_ids=doc_ids)
        return attention(q, k, v, scale)

    return Ops("fused", fused_rmsnorm, fused_rope, fused_attention, linear_cross_entropy=linear_cross_entropy)


def get_ops(backend: str, device: torch.device | str, d_model: int | None = None,
            head_dim: int | None = None, gaps: list[str] | None = None) -> Ops:
    """The :class:`Ops` for ``backend`` on ``device`` and a model of this shape (see :func:`resolve_backend`)."""
    return _fused_ops() if resolve_backend(backend, device, d_model, head_dim, gaps) == "fused" else REFERENCE
