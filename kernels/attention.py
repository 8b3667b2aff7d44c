"""Causal flash attention in Triton: launchers, ``torch.library`` registration and the public :func:`attention`.

The kernels and their math (online softmax in base 2, FlashAttention-2's backward with separate dK/dV and dQ
passes, no atomics) are in ``_attention_kernels.py``; the block sizes per GPU generation and head dim in
``_attention_configs.py``. Any head dim up to 256 runs, padded inside the kernels to a power of two with the extra
columns masked; 64 and 128 need no masks. A negative scale runs as ``(-q) (-scale)``: the forward's row max folds
the scale in, which is only a max for a non-negative scale.
"""

from __future__ import annotations

import math

import torch
from lmfast.kernels._attention_configs import (
    GENERATION_TARGET,
    GPU_CONFIGS,
    TUNING_CANDIDATES,
    Configs,
    configs_for,
    padded_head_dim,
)
from lmfast.kernels._attention_kernels import (
    _attn_bwd_dkdv_kernel,
    _attn_bwd_dq_kernel,
    _attn_bwd_preprocess,
    _attn_fwd_kernel,
)
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

__all__ = ["attention", "attention_fwd", "attention_bwd", "aot_specs", "MAX_HEAD_DIM", "AOT_MASKED_HEAD_DIMS",
           "supports_head_dim"]

MAX_HEAD_DIM = 256
_LOG2E = 1.4426950408889634  # exp(x) == exp2(x * log2(e))
_MAX_GRID_Y = 65535  # grids are (sequence blocks, batch * heads)


def supports_head_dim(head_dim: int) -> bool:
    """True for the head dims the kernels take: 1 to 256 (padded inside to 16, 32, 64, 128 or 256)."""
    return 1 <= head_dim <= MAX_HEAD_DIM


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
    if not supports_head_dim(q.shape[-1]):
        raise ValueError(f"head_dim must be at most {MAX_HEAD_DIM}, got head_dim={q.shape[-1]}; "
                         "use lmfast.model.functional.causal_attention for larger head dims")
    if q.shape[0] * q.shape[1] > _MAX_GRID_Y:
        raise ValueError(f"batch * heads must be at most {_MAX_GRID_Y} (the CUDA grid's second axis), got "
                         f"{q.shape[0]} * {q.shape[1]}; split the batch into chunks")
    check_same_device(q=q, k=k, v=v)
    if q.device.type != "cuda" and not interpreting():
        raise ValueError(f"the attention kernel runs on CUDA tensors (or CPU ones under TRITON_INTERPRET=1), "
                         f"got {q.device.type}; use lmfast.model.functional.causal_attention there")
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


def _configs(q: torch.Tensor) -> Configs:
    return configs_for(q.device, q.shape[-1])


def _dims(head_dim: int) -> dict:
    return {"HEAD_DIM": head_dim, "BLOCK_D": padded_head_dim(head_dim)}


def attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention forward: returns ``(out, lse2)``; out like q, lse2 (batch, heads, seq) fp32 in base 2."""
    _check_inputs(q, k, v)
    if scale < 0:  # (-q) . k * (-scale) == q . k * scale, with a scale the kernel's row max is right for
        q, scale = -q, -scale
    q, k, v = _aligned(q), _aligned(k), _aligned(v)
    batch, heads, seq, head_dim = q.shape
    out = torch.empty_like(q)
    lse = torch.empty((batch, heads, seq), device=q.device, dtype=torch.float32)
    if q.numel() == 0:
        return out, lse
    cfg = _configs(q).fwd
    wrap_triton(_attn_fwd_kernel)[(cdiv(seq, cfg.block_m), batch * heads)](
        q, k, v, out, lse, seq, scale * _LOG2E, **_dims(head_dim), BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return out, lse


def attention_bwd(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                  lse: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Causal attention backward from the forward's ``out`` and ``lse2``: returns ``(dq, dk, dv)``."""
    _check_inputs(q, k, v)
    if grad_out.shape != q.shape or out.shape != q.shape or lse.shape != q.shape[:3]:
        raise ValueError(f"grad_out and out must have q's shape {tuple(q.shape)} and lse its first three dims, got "
                         f"{tuple(grad_out.shape)}, {tuple(out.shape)}, {tuple(lse.shape)}")
    if scale < 0:  # as the forward: run on -q, and d/dq = -d/d(-q)
        dq, dk, dv = attention_bwd(grad_out, -q, k, v, out, lse, -scale)
        return -dq, dk, dv
    q, k, v, out, lse = _aligned(q), _aligned(k), _aligned(v), _aligned(out), _aligned(lse)
    grad_out = _aligned(grad_out.to(q.dtype))  # often an expanded stride-0 tensor
    batch, heads, seq, head_dim = q.shape
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if q.numel() == 0:
        return dq, dk, dv
    cfgs, dims = _configs(q), _dims(head_dim)
    delta = torch.empty_like(lse)
    pre, kv, qc = cfgs.preprocess, cfgs.dkdv, cfgs.dq
    wrap_triton(_attn_bwd_preprocess)[(cdiv(seq, pre.block_m), batch * heads)](
        out, grad_out, delta, seq, **dims, BLOCK_M=pre.block_m, num_warps=pre.num_warps,
        num_stages=pre.num_stages)
    wrap_triton(_attn_bwd_dkdv_kernel)[(cdiv(seq, kv.block_n), batch * heads)](
        q, k, v, grad_out, dk, dv, lse, delta, seq, scale * _LOG2E, scale, **dims, BLOCK_M=kv.block_m,
        BLOCK_N=kv.block_n, num_warps=kv.num_warps, num_stages=kv.num_stages)
    wrap_triton(_attn_bwd_dq_kernel)[(cdiv(seq, qc.block_m), batch * heads)](
        q, k, v, grad_out, dq, lse, delta, seq, scale * _LOG2E, scale, **dims, BLOCK_M=qc.block_m,
        BLOCK_N=qc.block_n, num_warps=qc.num_warps, num_stages=qc.num_stages)
    return dq, dk, dv


# Head dims that are not a power of two run padded and masked, each compiled for its own HEAD_DIM; the report
# builds these common ones for each padded size above 16.
AOT_MASKED_HEAD_DIMS = (24, 48, 80, 96, 192)


def aot_specs() -> list[AotSpec]:
    """Every GPU configuration the launchers can pick (generation x padded head dim x dtype x pass), each at its
    power-of-two head dim and at the masked head dims of ``AOT_MASKED_HEAD_DIMS`` that pad to it, and each tuning
    candidate a GPU lease times (``TUNING_CANDIDATES``, built for its generation only)."""
    specs: dict[str, AotSpec] = {}

    def add(spec: AotSpec, target: int) -> None:
        known = specs.get(spec.name, spec._replace(targets=()))
        if target not in known.targets:
            specs[spec.name] = known._replace(targets=(*known.targets, target))

    for generation, by_dim in GPU_CONFIGS.items():
        target = GENERATION_TARGET[generation]
        for padded, cfgs in by_dim.items():
            head_dims = [padded, *(d for d in AOT_MASKED_HEAD_DIMS if padded_head_dim(d) == padded)]
            for head_dim in head_dims:
                for dtype in (torch.bfloat16, torch.float16):
                    for spec in _aot_specs_for(head_dim, dtype, cfgs):
                        add(spec, target)
    passes = {"fwd": 0, "dkdv": 2, "dq": 3}  # their places in _aot_specs_for's list
    for generation, by_dim in TUNING_CANDIDATES.items():
        for head_dim, by_pass in by_dim.items():
            for pass_, candidates in by_pass.items():
                for config in candidates:
                    cfgs = GPU_CONFIGS[generation][head_dim]._replace(**{pass_: config})
                    for dtype in (torch.bfloat16, torch.float16):
                        add(_aot_specs_for(head_dim, dtype, cfgs)[passes[pass_]], GENERATION_TARGET[generation])
    return list(specs.values())


_SCALARS = {"seq_len": "i32", "qk_scale": "fp32", "sm_scale": "fp32"}


def _aot_specs_for(head_dim: int, dtype: torch.dtype, cfgs: Configs) -> list[AotSpec]:
    def spec(fn, tensors, cfg, blocks):
        types = {**dict.fromkeys(tensors, pointer(dtype)), "LSE": "*fp32", "DELTA": "*fp32", **_SCALARS}
        constexprs = {**_dims(head_dim), **blocks}
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
    """Causal softmax attention, fused: the Triton twin of :func:`lmfast.model.functional.causal_attention`.

    q, k, v: (batch, heads, seq, head_dim) with head_dim from 1 to 256 (fastest at 64 and 128, which need no
    padding), all fp16 or bf16 on CUDA (fp32 too on CPU under ``TRITON_INTERPRET=1``). ``scale`` multiplies the
    scores (default ``1 / sqrt(head_dim)``; any sign).
    Returns (batch, heads, seq, head_dim) in q's dtype; differentiable in q, k and v.

    >>> out = attention(q, k, v)  # doctest: +SKIP
    """
    _check_inputs(q, k, v)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return torch.ops.lmfast.attention(q, k, v, scale)[0]
