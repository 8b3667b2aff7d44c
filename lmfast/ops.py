"""Pick the reference or fused (Triton) implementation of each op, once, when the model is built.

``auto`` means fused on CUDA when Triton imports, reference everywhere else. An explicit ``fused`` on a
machine that cannot run it is an error that says why, never a silent fallback.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from lmfast import functional

__all__ = ["Ops", "BACKENDS", "resolve_backend", "get_ops", "fused_unavailable_reason", "adamw_step_fn"]

BACKENDS = ("auto", "reference", "fused")
_log = logging.getLogger("lmfast")


@dataclass(frozen=True)
class Ops:
    """The ops a model calls: ``self.ops.rmsnorm(x, w, eps)`` reads the same on either backend."""

    name: str
    rmsnorm: Callable  # (x, weight, eps) -> y
    rope: Callable  # (q, k, cos, sin) -> (q_rot, k_rot)
    attention: Callable  # (q, k, v, scale=None) -> causal attention output


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


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """Turn ``auto | reference | fused`` into ``reference`` or ``fused`` for ``device``; logs the choice once."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    reason = fused_unavailable_reason(device)
    if backend == "fused" and reason is not None:
        raise RuntimeError(f"backend 'fused' cannot run here: {reason}. Use backend: reference (or auto).")
    chosen = "reference" if backend == "reference" or reason is not None else "fused"
    _log.info("ops backend: %s (asked %s, device %s)", chosen, backend, torch.device(device))
    return chosen


@functools.cache
def _fused_ops() -> Ops:
    from lmfast.kernels.attention import attention
    from lmfast.kernels.rmsnorm import rmsnorm
    from lmfast.kernels.rope import rope

    def fused_attention(q, k, v, scale=None):
        # On a GPU tl.dot rounds fp32 to tf32, so fp32 attention (dtype: float32, no autocast) keeps PyTorch's
        # exact SDPA; bf16/fp16, the trainer's default on CUDA, takes the Triton kernel.
        if q.dtype == torch.float32:
            return functional.causal_attention(q, k, v, scale)
        return attention(q, k, v, scale)

    return Ops("fused", rmsnorm, rope, fused_attention)


def get_ops(backend: str, device: torch.device | str) -> Ops:
    """The :class:`Ops` for ``backend`` on ``device`` (see :func:`resolve_backend`)."""
    return _fused_ops() if resolve_backend(backend, device) == "fused" else REFERENCE


def adamw_step_fn(fused: bool | None, params: list[torch.Tensor]) -> Callable:
    """The multi-tensor AdamW step for ``params``: the Triton kernel or :func:`lmfast.optim.adamw_step_reference`.

    ``fused=None`` takes the kernel when every parameter is on a CUDA device it can run on.
    """
    from lmfast.optim import adamw_step_reference

    if fused is False:
        return adamw_step_reference
    reasons = {fused_unavailable_reason(p.device) for p in params} - {None}
    if fused is None:
        if reasons:
            return adamw_step_reference
    elif reasons:
        raise RuntimeError(f"AdamW(fused=True) cannot run here: {reasons.pop()}. Pass fused=None or False.")
    from lmfast.kernels.adamw import adamw_step

    return adamw_step
