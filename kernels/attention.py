"""Causal flash attention in Triton with grouped heads, document masks and RoPE inside: launchers, ``torch.library``
registration and the public :func:`attention` and :func:`rope_attention`.

What SDPA cannot do in one kernel: grouped-query attention without repeating K/V, document masks whose tiles
across a boundary are skipped rather than masked, and RoPE applied to the q and k tiles as they are loaded (dQ and
dK rotated back before their store), so the rotated q and k are never written. The kernels and their math are in
``_attention_kernels.py``; the block sizes per GPU generation, head dim and RoPE flag in ``_attention_configs.py``.
"""

from __future__ import annotations

import math

import torch
from lmfast.kernels._attention_configs import (
    GENERATION_TARGET,
    GPU_CONFIGS,
    OVER_REGISTER_BUDGET,
    TUNING_CANDIDATES,
    Configs,
    configs_for,
    padded_head_dim,
)
from lmfast.kernels._attention_kernels import _attn_bwd_dkdv_kernel, _attn_bwd_dq_kernel, _attn_fwd_kernel
from lmfast.kernels._launch import (
    TRITON_DTYPE,
    AotSpec,
    cdiv,
    check_dtype,
    check_same_device,
    interpreting,
    pointer,
    wrap_triton,
)
from torch.library import triton_op

__all__ = ["attention", "rope_attention", "attention_fwd", "attention_bwd", "document_bounds", "aot_specs",
           "MAX_HEAD_DIM", "AOT_MASKED_HEAD_DIMS", "AOT_REGISTERS_ALLOWED", "AOT_SPILLS_ALLOWED", "supports_head_dim"]

MAX_HEAD_DIM = 256
_LOG2E = 1.4426950408889634  # exp(x) == exp2(x * log2(e))
_MAX_GRID_Y = 65535  # grids are (sequence blocks, batch * heads)


def supports_head_dim(head_dim: int) -> bool:
    """True for the head dims the kernels take: 1 to 256 (padded inside to 32, 64, 128 or 256)."""
    return 1 <= head_dim <= MAX_HEAD_DIM


def _allowed_dtypes(device: torch.device) -> tuple[torch.dtype, ...]:
    # fp32 only under the interpreter (the exact tests); on a GPU tl.dot would round fp32 to tf32.
    return (torch.float16, torch.bfloat16) if device.type == "cuda" else (torch.float32, torch.float16, torch.bfloat16)


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Raise ValueError unless q (batch, q_heads, seq, d) and k, v (batch, kv_heads, seq, d) are what the kernels
    take, with q_heads a multiple of kv_heads."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape (batch, heads, seq, head_dim), got {tuple(t.shape)}; "
                             "reshape it with .view(batch, seq, heads, head_dim).transpose(1, 2)")
    b, hq, t, d = q.shape
    if k.shape != v.shape or k.shape[0] != b or k.shape[2:] != q.shape[2:] or k.shape[1] == 0 or hq % k.shape[1]:
        raise ValueError(f"k and v must have one shape (batch, kv_heads, seq, head_dim) with q's batch, seq and "
                         f"head_dim and kv_heads dividing q's heads, got q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    if not supports_head_dim(d):
        raise ValueError(f"head_dim must be at most {MAX_HEAD_DIM}, got head_dim={d}; "
                         "use lmfast.model.functional.causal_attention for larger head dims")
    if b * hq > _MAX_GRID_Y:
        raise ValueError(f"batch * heads must be at most {_MAX_GRID_Y} (the CUDA grid's second axis), got "
                         f"{b} * {hq}; split the batch into chunks")
    check_same_device(q=q, k=k, v=v)
    if q.device.type != "cuda" and not interpreting():
        raise ValueError(f"the attention kernel runs on CUDA tensors (or CPU ones under TRITON_INTERPRET=1), "
                         f"got {q.device.type}; use lmfast.model.functional.causal_attention there")
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_dtype(name, x, _allowed_dtypes(q.device))
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}; cast them to one")


def _check_rope(q: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    b, _, t, d = q.shape
    if d % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {d}")
    allowed = [(t, d // 2), (1, t, d // 2), (b, t, d // 2)]
    if tuple(cos.shape) not in allowed or cos.shape != sin.shape:
        raise ValueError(f"cos and sin must have shape {allowed[0]} or {allowed[2]}, got {tuple(cos.shape)} and "
                         f"{tuple(sin.shape)}; build them with lmfast.model.functional.rope_cos_sin")
    check_dtype("cos", cos, (torch.float32,))
    check_dtype("sin", sin, (torch.float32,))
    check_same_device(q=q, cos=cos, sin=sin)


def _check_doc_ids(q: torch.Tensor, doc_ids: torch.Tensor) -> None:
    if doc_ids.shape != (q.shape[0], q.shape[2]):
        raise ValueError(f"doc_ids must have shape (batch, seq) = {(q.shape[0], q.shape[2])}, got "
                         f"{tuple(doc_ids.shape)}")
    check_dtype("doc_ids", doc_ids, (torch.int32, torch.int64))
    check_same_device(q=q, doc_ids=doc_ids)
    # Checking the order costs a device sync on CUDA, so it is checked where it is free (CPU, outside tracing).
    if doc_ids.device.type == "cpu" and not torch.compiler.is_compiling() and doc_ids.shape[1] > 1:
        if bool((doc_ids[:, 1:] < doc_ids[:, :-1]).any()):
            raise ValueError("doc_ids must be non-decreasing along seq (as lmfast.model.functional.document_ids "
                             "makes them): each document one contiguous run")


def document_bounds(doc_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For non-decreasing ``doc_ids`` (batch, seq): each row's document start and end (one past its last row),
    both int32 (batch, seq). Row i attends j iff ``start[i] <= j <= i``."""
    b, t = doc_ids.shape
    idx = torch.arange(t, device=doc_ids.device, dtype=torch.int32).expand(b, t)
    change = doc_ids[:, 1:] != doc_ids[:, :-1]
    first = torch.ones(b, 1, dtype=torch.bool, device=doc_ids.device)
    starts = torch.where(torch.cat([first, change], 1), idx, 0).cummax(1).values
    ends = torch.where(torch.cat([change, first], 1), idx + 1, t).flip(1).cummin(1).values.flip(1)
    return starts.to(torch.int32), ends.to(torch.int32)


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    """``t`` with a unit head-dim stride (any other strides kept), as the kernels read rows."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def _angle_args(q: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None) -> tuple:
    """(COS, SIN, stride over the batch (0: one table for all), stride over seq): q itself stands in without RoPE."""
    if cos is None:
        return q, q, 0, 0
    cos, sin = cos.contiguous(), sin.contiguous()
    shared = cos.dim() == 2 or cos.shape[0] == 1
    return cos, sin, 0 if shared else cos.stride(0), cos.stride(-2)


def _doc_args(q: torch.Tensor, doc_start: torch.Tensor | None, doc_end: torch.Tensor | None) -> tuple:
    if doc_start is None:
        return q, q
    return doc_start.contiguous(), doc_end.contiguous()


def _flags(cos, doc_start, head_dim: int) -> dict:
    return {"HEAD_DIM": head_dim, "BLOCK_D": padded_head_dim(head_dim), "ROPE": cos is not None,
            "DOC": doc_start is not None}


def attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, cos: torch.Tensor | None = None,
                  sin: torch.Tensor | None = None, doc_start: torch.Tensor | None = None,
                  doc_end: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward: returns ``(out, lse2)``; out like q (its strides where q is dense), lse2 (batch, q_heads, seq) fp32
    in base 2. ``cos``/``sin`` rotate q and k inside; ``doc_start``/``doc_end`` (from :func:`document_bounds`)
    mask documents."""
    q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
    batch, heads, seq, head_dim = q.shape
    out = torch.empty_like(q)
    lse = torch.empty((batch, heads, seq), device=q.device, dtype=torch.float32)
    if q.numel() == 0:
        return out, lse
    cfg = configs_for(q.device, head_dim, cos is not None).fwd
    wrap_triton(_attn_fwd_kernel)[(cdiv(seq, cfg.block_m), batch * heads)](
        q, *_strides(q), k, *_strides(k), v, *_strides(v), out, *_strides(out), lse, *_angle_args(q, cos, sin),
        _doc_args(q, doc_start, doc_end)[0], seq, heads, heads // k.shape[1], scale * _LOG2E,
        **_flags(cos, doc_start, head_dim), BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, num_warps=cfg.num_warps,
        num_stages=cfg.num_stages)
    return out, lse


def attention_bwd(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                  lse: torch.Tensor, scale: float, cos: torch.Tensor | None = None, sin: torch.Tensor | None = None,
                  doc_start: torch.Tensor | None = None, doc_end: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward from the forward's ``out`` and ``lse2``: returns ``(dq, dk, dv)``, each like its input."""
    q, k, v, out = _unit_last(q), _unit_last(k), _unit_last(v), _unit_last(out)
    grad_out = _unit_last(grad_out.to(q.dtype))  # often an expanded stride-0 tensor
    lse = lse.contiguous()
    batch, heads, seq, head_dim = q.shape
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if q.numel() == 0:
        return dq, dk, dv
    delta = torch.empty_like(lse)
    cfgs = configs_for(q.device, head_dim, cos is not None)
    angles, docs, flags = _angle_args(q, cos, sin), _doc_args(q, doc_start, doc_end), _flags(cos, doc_start, head_dim)
    group = heads // k.shape[1]
    qc, kv = cfgs.dq, cfgs.dkdv
    # dQ first: it computes delta = rowsum(dO * O) for its rows, which the dK/dV pass reads.
    wrap_triton(_attn_bwd_dq_kernel)[(cdiv(seq, qc.block_m), batch * heads)](
        q, *_strides(q), k, *_strides(k), v, *_strides(v), out, *_strides(out), grad_out, *_strides(grad_out),
        dq, *_strides(dq), lse, delta, *angles, docs[0], seq, heads, group, scale * _LOG2E, scale, **flags,
        BLOCK_M=qc.block_m, BLOCK_N=qc.block_n, num_warps=qc.num_warps, num_stages=qc.num_stages)
    wrap_triton(_attn_bwd_dkdv_kernel)[(cdiv(seq, kv.block_n), batch * k.shape[1])](
        q, *_strides(q), k, *_strides(k), v, *_strides(v), grad_out, *_strides(grad_out), dk, *_strides(dk),
        dv, *_strides(dv), lse, delta, *angles, *docs, seq, heads, group, scale * _LOG2E, scale, **flags,
        BLOCK_M=kv.block_m, BLOCK_N=kv.block_n, num_warps=kv.num_warps, num_stages=kv.num_stages)
    return dq, dk, dv


@triton_op("lmfast::attention", mutates_args=())
def _attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor | None,
                  sin: torch.Tensor | None, doc_start: torch.Tensor | None, doc_end: torch.Tensor | None,
                  scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    return attention_fwd(q, k, v, scale, cos, sin, doc_start, doc_end)


@triton_op("lmfast::attention_backward", mutates_args=())
def _attention_backward_op(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           out: torch.Tensor, lse: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None,
                           doc_start: torch.Tensor | None, doc_end: torch.Tensor | None, scale: float
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return attention_bwd(grad_out, q, k, v, out, lse, scale, cos, sin, doc_start, doc_end)


# Explicit fake (meta) kernels: the default fake of a triton_op runs its body, whose raw-kernel launch the
# interpreter (TRITON_INTERPRET=1) cannot do on fake tensors. torch.compile still traces into the bodies.
@_attention_op.register_fake
def _attention_fake(q, k, v, cos, sin, doc_start, doc_end, scale):
    _check_qkv(q, k, v)
    return torch.empty_like(_unit_last(q)), q.new_empty(q.shape[:3], dtype=torch.float32)


@_attention_backward_op.register_fake
def _attention_backward_fake(grad_out, q, k, v, out, lse, cos, sin, doc_start, doc_end, scale):
    return tuple(torch.empty_like(_unit_last(t)) for t in (q, k, v))


def _setup_context(ctx, inputs, output):
    q, k, v, cos, sin, doc_start, doc_end, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cos, sin, doc_start, doc_end)
    ctx.scale = scale


def _backward(ctx, grad_out, grad_lse):
    # lse2 is an internal output (the public functions drop it), so its gradient is always zero / None.
    q, k, v, out, lse, cos, sin, doc_start, doc_end = ctx.saved_tensors
    dq, dk, dv = torch.ops.lmfast.attention_backward(grad_out, q, k, v, out, lse, cos, sin, doc_start, doc_end,
                                                     ctx.scale)
    return dq, dk, dv, None, None, None, None, None


_attention_op.register_autograd(_backward, setup_context=_setup_context)


def _run(q, k, v, cos, sin, scale, doc_ids) -> torch.Tensor:
    _check_qkv(q, k, v)
    if cos is not None:
        _check_rope(q, cos, sin)
    starts = ends = None
    if doc_ids is not None:
        _check_doc_ids(q, doc_ids)
        starts, ends = document_bounds(doc_ids)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return torch.ops.lmfast.attention(q, k, v, cos, sin, starts, ends, scale)[0]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None, *,
              doc_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Causal softmax attention, fused: the Triton twin of :func:`lmfast.model.functional.causal_attention`.

    q: (batch, q_heads, seq, head_dim); k, v: (batch, kv_heads, seq, head_dim) with kv_heads dividing q_heads
    (query head h reads kv head ``h // (q_heads // kv_heads)``: GQA, MQA); head_dim 1 to 256 (fastest at 64 and
    128); all fp16 or bf16 on CUDA (fp32 too on CPU under ``TRITON_INTERPRET=1``); strided views welcome (unit
    head-dim stride). ``scale`` multiplies the scores (default ``1 / sqrt(head_dim)``; any sign). ``doc_ids``:
    None or int (batch, seq), non-decreasing: row i attends j iff ``j <= i`` and both are in one document; key
    tiles of earlier documents are skipped. Returns (batch, q_heads, seq, head_dim) in q's dtype (q's strides
    where q is dense); differentiable in q, k and v.
    """
    return _run(q, k, v, None, None, scale, doc_ids)


def rope_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   scale: float | None = None, *, doc_ids: torch.Tensor | None = None) -> torch.Tensor:
    """RoPE then causal attention in one kernel: the twin of :func:`lmfast.model.functional.rope_attention`.

    As :func:`attention`, with q and k rotated (adjacent pairs, ``functional.rope``) by ``cos``/``sin``: fp32
    (seq, head_dim // 2), (1, seq, head_dim // 2) or (batch, seq, head_dim // 2), e.g. ``functional.rope_cos_sin``
    at ``functional.document_positions(doc_ids)``. The rotation happens in registers as q and k tiles are loaded
    (no rotated copy is written); head_dim must be even.
    """
    return _run(q, k, v, cos, sin, scale, doc_ids)


# ------------------------------------------------------------------------------------------ ahead-of-time builds

# Head dims that are not a power of two run padded and masked, each compiled for its own HEAD_DIM; the report
# builds these common ones for each padded size (with and without RoPE, documents on).
AOT_MASKED_HEAD_DIMS = (24, 48, 80, 96, 192)


def _over_budget_builds() -> dict[str, str]:
    """Every build of an entry in ``OVER_REGISTER_BUDGET`` (and of each tuning candidate), by name, with its reason."""
    allowed = {}
    passes = ("fwd", "dkdv", "dq")
    for (gen, (padded, rope), pass_), reason in OVER_REGISTER_BUDGET.items():
        cfgs = GPU_CONFIGS[gen][(padded, rope)]
        for head_dim in (padded, *(d for d in AOT_MASKED_HEAD_DIMS if padded_head_dim(d) == padded)):
            for doc in (False, True):
                allowed[_aot_specs_for(head_dim, torch.bfloat16, cfgs, rope, doc)[passes.index(pass_)].name] = reason
    for gen, by_key in TUNING_CANDIDATES.items():
        for (padded, rope), by_pass in by_key.items():
            for pass_, candidates in by_pass.items():
                for config in candidates:
                    cfgs = GPU_CONFIGS[gen][(padded, rope)]._replace(**{pass_: config})
                    for doc in (False, True):
                        name = _aot_specs_for(padded, torch.bfloat16, cfgs, rope, doc)[passes.index(pass_)].name
                        allowed[name] = "a tuning candidate a GPU lease times against the shipped entry"
    return allowed


def aot_specs() -> list[AotSpec]:
    """Every GPU configuration the launchers can pick: generation x padded head dim x RoPE x documents x pass at the
    power-of-two head dims, the masked head dims of ``AOT_MASKED_HEAD_DIMS`` (documents on: the variant with the
    most live values), and each tuning candidate (for its generation only). In bf16: fp16 builds the same code with
    another element type (the earlier reports, which built both, gave them equal registers and shared memory)."""
    specs: dict[str, AotSpec] = {}

    def add(spec: AotSpec, target: int) -> None:
        known = specs.get(spec.name, spec._replace(targets=()))
        if target not in known.targets:
            specs[spec.name] = known._replace(targets=(*known.targets, target))

    for gen, table in GPU_CONFIGS.items():
        for (padded, rope), cfgs in table.items():
            for doc in (False, True):
                for spec in _aot_specs_for(padded, torch.bfloat16, cfgs, rope, doc):
                    add(spec, GENERATION_TARGET[gen])
            for head_dim in (d for d in AOT_MASKED_HEAD_DIMS if padded_head_dim(d) == padded):
                for spec in _aot_specs_for(head_dim, torch.bfloat16, cfgs, rope, True):
                    add(spec, GENERATION_TARGET[gen])
    for gen, by_key in TUNING_CANDIDATES.items():
        for (head_dim, rope), by_pass in by_key.items():
            for pass_, candidates in by_pass.items():
                for config in candidates:
                    cfgs = GPU_CONFIGS[gen][(head_dim, rope)]._replace(**{pass_: config})
                    for doc in (False, True):
                        spec = _aot_specs_for(head_dim, torch.bfloat16, cfgs, rope, doc)[("fwd", "dkdv", "dq")
                                                                                         .index(pass_)]
                        add(spec, GENERATION_TARGET[gen])
    return list(specs.values())


def _aot_specs_for(head_dim: int, dtype: torch.dtype, cfgs: Configs, rope: bool, doc: bool) -> list[AotSpec]:
    ints = {"seq_len", "q_heads", "group"}

    def spec(fn, cfg):
        constexprs = {"HEAD_DIM": head_dim, "BLOCK_D": padded_head_dim(head_dim), "ROPE": rope, "DOC": doc,
                      "BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n}

        def kind(arg):
            if arg in constexprs:
                return "constexpr"
            if arg in ("LSE", "DELTA", "COS", "SIN"):
                return "*fp32"
            if arg in ("DOC_START", "DOC_END"):
                return "*i32"
            if arg.startswith("stride_") or arg in ints:
                return "i32"
            return "fp32" if arg.endswith("scale") else pointer(dtype)

        signature = {a: kind(a) for a in fn.arg_names}
        label = " ".join([fn.__name__, TRITON_DTYPE[dtype], *(f"{a}={int(b) if isinstance(b, bool) else b}"
                                                               for a, b in constexprs.items()),
                          f"warps={cfg.num_warps}", f"stages={cfg.num_stages}"])
        # At head dims that are multiples of 16 every q/k/v stride is too, and the runtime specializes on it (16-byte
        # vector loads): the report compiles them so.
        divisible = tuple(a for a in fn.arg_names if a.startswith("stride_") and not a.startswith("stride_c")
                          and head_dim % 16 == 0)
        return AotSpec(label, fn, signature, constexprs, cfg.num_warps, cfg.num_stages, divisible=divisible)

    return [spec(_attn_fwd_kernel, cfgs.fwd), spec(_attn_bwd_dkdv_kernel, cfgs.dkdv), spec(_attn_bwd_dq_kernel,
                                                                                            cfgs.dq)]


AOT_REGISTERS_ALLOWED = _over_budget_builds()
# RoPE at the masked head dim 192 (padded to 256): dQ's smallest tile, 16 x 16 on eight warps, spills to (L1-cached)
# local memory on sm_90; at 256 exact it does not. A model of head dim 192 with RoPE inside is rare enough to take it.
def _spills_allowed() -> dict[str, str]:
    rope_256 = ("RoPE at head dims 129-256: the smallest tiles (16 x 16 dQ, 64 x 16 forward on sm_90) spill a few "
                "dozen bytes with Triton 3.6 (and dQ at 192 with 3.9)")
    masked_128 = "head dims 80 and 96 only, with Triton 3.6 on sm_80: 8 bytes (3.9: none); smaller tiles spilled more"
    allowed = {}
    for doc in (False, True):
        for head_dim in (192, 256):
            for gen in ("sm80", "sm90"):
                fwd, _, dq = _aot_specs_for(head_dim, torch.bfloat16, GPU_CONFIGS[gen][(256, True)], True, doc)
                allowed.update({fwd.name: rope_256, dq.name: rope_256})
        for head_dim in (80, 96):
            allowed[_aot_specs_for(head_dim, torch.bfloat16, GPU_CONFIGS["sm80"][(128, False)], False, doc)[1].name] = (
                masked_128)
    dkdv_64 = _aot_specs_for(64, torch.bfloat16, GPU_CONFIGS["sm80"][(64, False)], False, False)[1].name
    allowed[dkdv_64] = ("Triton 3.6 on sm_80 without documents: 8 bytes at 255 registers (3.9: none; 32 x 64 tiles "
                        "spilled 8-24 bytes too)")
    return allowed


AOT_SPILLS_ALLOWED = _spills_allowed()
