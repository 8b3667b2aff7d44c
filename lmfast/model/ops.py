"""Pick the reference or fused (Triton) implementation of each op, once, when the model is built.

``reference`` is PyTorch for every op, the optimizer step included. ``fused`` forces every Triton kernel; on a machine
that cannot run them, or for a model shape its kernels do not take, it is an error that says why, never a silent
fallback. ``auto`` (the default) is the reference off CUDA, and on CUDA follows a committed table,
``lmfast/model/fused_table.json``, keyed by GPU generation: an op takes its kernel only where the table says the
kernel beats the reference under ``torch.compile`` (measured by ``benchmarks/gpu_check.py`` on a lent GPU), or does
what the reference cannot do efficiently (document-masked attention with tile skipping); every other op runs its
reference, with one log line naming the table row. On every backend fp32 attention keeps PyTorch's exact SDPA (a
GPU's ``tl.dot`` would round fp32 to tf32), and a shape past a kernel's limit runs the reference under ``auto``.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from lmfast.model import functional

__all__ = ["Ops", "BACKENDS", "FUSED_OPS", "resolve_backend", "get_ops", "fused_unavailable_reason",
           "fused_shape_limits", "fused_feature_gaps", "gpu_generation", "fused_table", "auto_choices"]

BACKENDS = ("auto", "reference", "fused")
# The table's rows: each names an op (or, for document_attention, a feature of one) and its kernel.
FUSED_OPS = ("rmsnorm", "add_rmsnorm", "rope", "attention", "rope_attention", "document_attention", "adamw",
             "clip_adamw", "linear_cross_entropy")
TABLE_PATH = Path(__file__).with_name("fused_table.json")
_log = logging.getLogger("lmfast")


@dataclass(frozen=True)
class Ops:
    """The ops a model calls: ``self.ops.rmsnorm(x, w, eps)`` reads the same on either backend (and the trainer's
    loss, ``ops.linear_cross_entropy``, and optimizer choice, ``ops.optimizer`` / ``ops.fold_clip``)."""

    name: str  # "reference", "fused", or "auto" (a mix, per the table)
    rmsnorm: Callable  # (x, weight, eps) -> y
    rope: Callable  # (q, k, cos, sin) -> (q_rot, k_rot)
    attention: Callable  # (q, k, v, scale=None, *, doc_ids=None) -> causal attention output
    # (hidden, weight, targets) -> mean cross-entropy of hidden @ weight.T, never holding all the logits
    linear_cross_entropy: Callable = functional.linear_cross_entropy
    add_rmsnorm: Callable = functional.add_rmsnorm  # (x, residual, weight, eps, out_dtype) -> (h, y)
    rope_attention: Callable = functional.rope_attention  # (q, k, v, cos, sin, scale=None, *, doc_ids=None)
    optimizer: str = "reference"  # "fused": the Triton multi-tensor AdamW step
    fold_clip: bool = False  # fold global-norm clipping into the fused AdamW step
    choices: dict = field(default_factory=dict)  # table row -> "fused" | "reference" (auto only)


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


def gpu_generation(device: torch.device | str) -> str:
    """The table's key for a CUDA device: "sm80" (Ampere, Ada), "sm90" (Hopper), else (or with no CUDA to ask)
    "default"."""
    if not torch.cuda.is_available():
        return "default"
    major, _ = torch.cuda.get_device_capability(torch.device(device))
    return {8: "sm80", 9: "sm90"}.get(major, "default")


@functools.cache
def fused_table() -> dict:
    """The committed table (``fused_table.json``): ``{generation: {row: {"use_fused", "measured", "why"}}}``."""
    return json.loads(TABLE_PATH.read_text())["generations"]


def auto_choices(generation: str) -> dict[str, tuple[bool, str]]:
    """Each table row's (use the kernel, why) for ``generation`` (the "default" rows for one the table lacks)."""
    table = fused_table()
    rows = table.get(generation, table["default"])
    return {op: (bool(rows[op]["use_fused"]), rows[op]["why"]) for op in FUSED_OPS}


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
    """The model features no fused kernel takes, each as a sentence: those ops run their reference. None now: the
    attention kernel takes grouped-query heads and document masks (with RoPE inside)."""
    return []


def resolve_backend(backend: str, device: torch.device | str, d_model: int | None = None,
                    head_dim: int | None = None, gaps: list[str] | None = None) -> str:
    """Turn ``auto | reference | fused`` into ``reference``, ``fused`` or ``auto`` (the table decides per op) for
    ``device``; logs the choice once.

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
    chosen = "reference" if backend == "reference" or reason is not None else backend
    where = f", {gpu_generation(device)} table" if chosen == "auto" else ""
    where_ref = limits + (gaps or [])
    note = f"; reference where {'; '.join(where_ref)}" if chosen != "reference" and where_ref else ""
    _log.info("ops backend: %s (asked %s, device %s%s%s)", chosen, backend, torch.device(device), where, note)
    return chosen


@functools.cache
def _fused_ops() -> Ops:
    from lmfast.kernels.add_rmsnorm import add_rmsnorm
    from lmfast.kernels.attention import attention, rope_attention
    from lmfast.kernels.linear_cross_entropy import linear_cross_entropy
    from lmfast.kernels.rmsnorm import rmsnorm
    from lmfast.kernels.rope import rope

    # Each wrapper decides on static facts (dtype, sizes, whether doc_ids is given), so under torch.compile the choice
    # is a guard, not a graph break. Shapes past a kernel's limit only arrive here under backend: auto
    # (resolve_backend refuses them for an explicit fused).
    def fused_rmsnorm(x, weight, eps=1e-5):
        if x.shape[-1] > _MAX_HIDDEN:
            return functional.rmsnorm(x, weight, eps)
        return rmsnorm(x, weight, eps)

    def fused_add_rmsnorm(x, residual, weight, eps=1e-5, out_dtype=None):
        if x.shape[-1] > _MAX_HIDDEN:
            return functional.add_rmsnorm(x, residual, weight, eps, out_dtype)
        return add_rmsnorm(x, residual, weight, eps, out_dtype)

    def fused_rope(q, k, cos, sin):
        if q.shape[-1] > _MAX_ROPE_HEAD_DIM:
            return functional.rope(q, k, cos, sin)
        return rope(q, k, cos, sin)

    def kernel_takes(q):
        # On a GPU tl.dot rounds fp32 to tf32, so fp32 attention (dtype: float32, no autocast) keeps PyTorch's
        # exact SDPA; bf16/fp16, the trainer's default on CUDA, takes the Triton kernel.
        return q.dtype != torch.float32 and q.shape[-1] <= _MAX_ATTENTION_HEAD_DIM

    def fused_attention(q, k, v, scale=None, *, doc_ids=None):
        if not kernel_takes(q):
            return _reference_attention(q, k, v, scale, doc_ids)
        return attention(q, k, v, scale, doc_ids=doc_ids)

    def fused_rope_attention(q, k, v, cos, sin, scale=None, *, doc_ids=None):
        if not kernel_takes(q):
            return _reference_rope_attention(q, k, v, cos, sin, scale, doc_ids)
        return rope_attention(q, k, v, cos, sin, scale, doc_ids=doc_ids)

    return Ops("fused", fused_rmsnorm, fused_rope, fused_attention, linear_cross_entropy=linear_cross_entropy,
               add_rmsnorm=fused_add_rmsnorm, rope_attention=fused_rope_attention, optimizer="fused", fold_clip=True,
               choices=dict.fromkeys(FUSED_OPS, "fused"))


def _reference_attention(q, k, v, scale, doc_ids):
    return functional.causal_attention(q, k, v, scale, doc_ids=doc_ids)


def _reference_rope_attention(q, k, v, cos, sin, scale, doc_ids):
    return functional.rope_attention(q, k, v, cos, sin, scale, doc_ids=doc_ids)


def _auto_ops(generation: str) -> Ops:
    """The fused kernels where the table's rows for ``generation`` say so, the references elsewhere."""
    fused, rows = _fused_ops(), auto_choices(generation)
    use = {op: ok for op, (ok, _) in rows.items()}
    for op, (ok, why) in rows.items():
        if not ok:
            _log.info("ops auto: %s takes the reference (fused_table.json %s/%s: %s)", op, generation, op, why)

    def pick(op, kernel, reference):
        return kernel if use[op] else reference

    # Attention: document masks (doc_ids given) follow the document_attention row, whole windows their own rows.
    def attention(q, k, v, scale=None, *, doc_ids=None):
        row = "attention" if doc_ids is None else "document_attention"
        return pick(row, fused.attention, _reference_attention_op)(q, k, v, scale, doc_ids=doc_ids)

    def rope_attention(q, k, v, cos, sin, scale=None, *, doc_ids=None):
        if (use["rope_attention"] and doc_ids is None) or (use["document_attention"] and doc_ids is not None):
            return fused.rope_attention(q, k, v, cos, sin, scale, doc_ids=doc_ids)
        q, k = rope_op(q, k, cos, sin)
        return attention(q, k, v, scale, doc_ids=doc_ids)

    rope_op = pick("rope", fused.rope, functional.rope)
    return replace(fused, name="auto", rmsnorm=pick("rmsnorm", fused.rmsnorm, functional.rmsnorm), rope=rope_op,
                   attention=attention, rope_attention=rope_attention,
                   add_rmsnorm=pick("add_rmsnorm", fused.add_rmsnorm, functional.add_rmsnorm),
                   linear_cross_entropy=pick("linear_cross_entropy", fused.linear_cross_entropy,
                                             functional.linear_cross_entropy),
                   optimizer="fused" if use["adamw"] or use["clip_adamw"] else "reference",
                   fold_clip=use["clip_adamw"],
                   choices={op: "fused" if ok else "reference" for op, ok in use.items()})


def _reference_attention_op(q, k, v, scale=None, *, doc_ids=None):
    return _reference_attention(q, k, v, scale, doc_ids)


def get_ops(backend: str, device: torch.device | str, d_model: int | None = None,
            head_dim: int | None = None, gaps: list[str] | None = None) -> Ops:
    """The :class:`Ops` for ``backend`` on ``device`` and a model of this shape (see :func:`resolve_backend`)."""
    chosen = resolve_backend(backend, device, d_model, head_dim, gaps)
    if chosen == "reference":
        return REFERENCE
    if chosen == "fused":
        return _fused_ops()
    return _auto_ops(gpu_generation(device))
