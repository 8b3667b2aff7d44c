"""Fused multi-tensor AdamW step: every parameter of a dtype/device group updated by one kernel launch.

Per element, in fp32, the arithmetic of ``torch.optim.AdamW`` (and :func:`lmfast.train.optim.adamw_step_reference`):
``p *= 1 - lr * wd``;  ``m = b1 m + (1 - b1) g``;  ``v = b2 v + (1 - b2) g^2``;
``p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)``  with ``bc_i = 1 - b_i ** step``.

Multi-tensor apply as in apex / torch's ``_foreach`` kernels: the launcher writes a table of the tensors'
addresses (param, exp_avg, exp_avg_sq; the grads' in a table of their own) and a table of work chunks (which
tensor, which offset), and each program casts the addresses back to pointers and updates one chunk. The tables
are cached by the parameters' and states' addresses, which stay put for a whole run. The grads do not: a trainer
that calls ``zero_grad(set_to_none=True)`` gets fresh gradient tensors each step. So the grad table alone is
re-pointed when their addresses change, from pinned memory without a host sync (and not at all when the
allocator hands back the same addresses, as it usually does). ``lr`` may be a float or a 0-d tensor (read on
the device), so a schedule never recompiles anything.

Clipping folded in (:func:`clip_adamw_step`): global-norm clipping scales every gradient by
``min(1, max_norm / (||g|| + eps))`` before the step, a separate pass over all gradients in PyTorch
(``clip_grad_norm_``: a norm pass, then a scaling pass that writes every gradient). Here a multi-tensor pass over the
same chunk tables sums each chunk's squares into an fp32 partial (one per program: deterministic), the partials are
summed on the device, and the step kernel reads that sum and applies the clip coefficient to g inside the update.
The gradients are read twice and never written; nothing waits on the host.

The kernel reaches memory through addresses that are not its arguments, which ``wrap_triton`` cannot see
as mutations; so for torch.compile this op is registered as an opaque ``torch.library.custom_op`` that
declares what it mutates, instead of a traced ``triton_op``. Eager calls skip the op's dispatch (its cost
grows with the tensor count) and launch directly.
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict

import torch
import triton
import triton.language as tl
from lmfast.kernels._launch import FLOAT_DTYPES, TRITON_DTYPE, AotSpec, check_dtype, check_float_dtype
from torch.autograd.graph import increment_version

__all__ = ["adamw_step", "clip_adamw_step", "grad_norm_squared", "aot_specs"]

_BLOCK = 4096  # elements per program: one chunk-table entry each
_SUB_BLOCK = 1024  # elements per loop step: one 16-byte fp32 vector per tensor and thread at 8 warps
_WARPS = 8
_CACHE_SIZE = 8  # launch plans (address tables) kept per process


@triton.jit
def _adamw_update(
    p_at, g_at, m_at, v_at,  # pointer blocks into param, grad, exp_avg, exp_avg_sq
    mask,  # None on full chunks, so loads and stores are unpredicated and vectorize
    lr, beta1, beta2, eps, weight_decay, bias_correction1, bias_correction2_sqrt,
    clip,  # the clip coefficient min(1, max_norm / (norm + eps)), or 1.0
):
    p = tl.load(p_at, mask=mask).to(tl.float32)
    g = tl.load(g_at, mask=mask).to(tl.float32) * clip
    m = tl.load(m_at, mask=mask)
    v = tl.load(v_at, mask=mask)
    p = p * (1.0 - lr * weight_decay)
    m = m + (1.0 - beta1) * (g - m)  # lerp, as torch.optim.AdamW
    v = beta2 * v + (1.0 - beta2) * g * g
    p = p - (lr / bias_correction1) * m / (tl.sqrt(v) / bias_correction2_sqrt + eps)
    tl.store(p_at, p.to(p_at.dtype.element_ty), mask=mask)
    tl.store(m_at, m, mask=mask)
    tl.store(v_at, v, mask=mask)


@triton.jit
def _adamw_step_kernel(
    ADDRS,  # int64 (tensors, 3): addresses of param, exp_avg, exp_avg_sq
    GRAD_ADDRS,  # int64 (tensors,): address of each grad (re-pointed when the grads move)
    NUMELS,  # int64 (tensors,): element count of each tensor
    CHUNK_TENSOR,  # int32 (chunks,): which tensor this program updates
    CHUNK_START,  # int64 (chunks,): first element of this program's chunk
    LR,  # fp32 (1,): the learning rate, read on the device so a schedule recompiles nothing
    beta1, beta2, eps, weight_decay,
    bias_correction1,  # 1 - beta1 ** step
    bias_correction2_sqrt,  # sqrt(1 - beta2 ** step)
    NORM_SQ,  # fp32 (1,): the global sum of squares of the gradients (CLIP only)
    max_norm, clip_eps,  # the clip: g * min(1, max_norm / (sqrt(NORM_SQ) + clip_eps)) (CLIP only)
    CLIP: tl.constexpr,  # fold the global-norm clip into the update
    P_DTYPE: tl.constexpr, G_DTYPE: tl.constexpr,  # element types of params and grads (states are fp32)
    BLOCK: tl.constexpr,  # elements per program
    SUB_BLOCK: tl.constexpr,  # elements per loop step: a few 16-byte vectors a thread, so few live registers
):
    pid = tl.program_id(0)
    tensor = tl.load(CHUNK_TENSOR + pid).to(tl.int64)
    chunk = tl.load(CHUNK_START + pid)
    numel = tl.load(NUMELS + tensor)
    lr = tl.load(LR)
    p_base = tl.load(ADDRS + 3 * tensor).to(tl.pointer_type(P_DTYPE))
    g_base = tl.load(GRAD_ADDRS + tensor).to(tl.pointer_type(G_DTYPE))
    m_base = tl.load(ADDRS + 3 * tensor + 1).to(tl.pointer_type(tl.float32))
    v_base = tl.load(ADDRS + 3 * tensor + 2).to(tl.pointer_type(tl.float32))
    clip = 1.0
    if CLIP:
        clip = tl.minimum(1.0, max_norm / (tl.sqrt(tl.load(NORM_SQ)) + clip_eps))
    for start in range(chunk, tl.minimum(chunk + BLOCK, numel), SUB_BLOCK):
        # The launcher checks every address is 16-byte aligned; saying so (with unmasked full blocks) lets
        # Triton emit 128-bit loads and stores through pointers it cannot otherwise reason about.
        offs = start + tl.arange(0, SUB_BLOCK)
        p_at = tl.multiple_of(p_base + offs, 16)
        g_at = tl.multiple_of(g_base + offs, 16)
        m_at = tl.multiple_of(m_base + offs, 16)
        v_at = tl.multiple_of(v_base + offs, 16)
        if start + SUB_BLOCK <= numel:
            _adamw_update(p_at, g_at, m_at, v_at, None,
                          lr, beta1, beta2, eps, weight_decay, bias_correction1, bias_correction2_sqrt, clip)
        else:
            _adamw_update(p_at, g_at, m_at, v_at, offs < numel,
                          lr, beta1, beta2, eps, weight_decay, bias_correction1, bias_correction2_sqrt, clip)


@triton.jit
def _grad_sumsq_kernel(
    GRAD_ADDRS, NUMELS, CHUNK_TENSOR, CHUNK_START,  # the step's tables (see _adamw_step_kernel)
    PARTIALS,  # fp32 (chunks,) out: each chunk's sum of squared gradient elements
    G_DTYPE: tl.constexpr, BLOCK: tl.constexpr, SUB_BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    tensor = tl.load(CHUNK_TENSOR + pid).to(tl.int64)
    chunk = tl.load(CHUNK_START + pid)
    numel = tl.load(NUMELS + tensor)
    g_base = tl.load(GRAD_ADDRS + tensor).to(tl.pointer_type(G_DTYPE))
    acc = tl.zeros([SUB_BLOCK], tl.float32)
    for start in range(chunk, tl.minimum(chunk + BLOCK, numel), SUB_BLOCK):
        offs = start + tl.arange(0, SUB_BLOCK)
        g = tl.load(tl.multiple_of(g_base + offs, 16), mask=offs < numel, other=0.0).to(tl.float32)
        acc += g * g
    tl.store(PARTIALS + pid, tl.sum(acc, 0))


class _Group:
    """One launch: the tensors of one (device, param dtype, grad dtype), their device-side tables, and the grad
    addresses the grad table holds now."""

    def __init__(self, device: torch.device, p_dtype: torch.dtype, g_dtype: torch.dtype, index: list[int],
                 tables: tuple[torch.Tensor, ...], grad_addrs: torch.Tensor, grad_ptrs: list[int]):
        self.device, self.p_dtype, self.g_dtype, self.index = device, p_dtype, g_dtype, index
        self.tables = tables  # addresses (n, 3) int64, numels (n,) int64, chunk tensor int32, chunk start int64
        self.grad_addrs, self.grad_ptrs = grad_addrs, grad_ptrs  # (n,) int64 on the device; the same, on the host


_plans: OrderedDict[tuple, list[_Group]] = OrderedDict()


def _plan_key(params, grads, exp_avgs, exp_avg_sqs) -> tuple:
    # Addresses of params and states, sizes and dtypes: everything the cached tables encode. A training loop
    # keeps these in place, so after the first step this key hits and the step skips validation and table
    # building. The grads' addresses are not in the key (see _repoint_grads).
    return tuple((p.data_ptr(), m.data_ptr(), v.data_ptr(), p.numel(), p.dtype, g.dtype)
                 for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs, strict=True))


def _to_device(values: list[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype).to(device)


def _tables_for(tensors: list[list[torch.Tensor]], device: torch.device) -> tuple[torch.Tensor, ...]:
    params, _, exp_avgs, exp_avg_sqs = tensors
    numels = [p.numel() for p in params]
    chunks = [math.ceil(n / _BLOCK) for n in numels]
    chunk_tensor = torch.repeat_interleave(torch.arange(len(numels), dtype=torch.int32), torch.tensor(chunks))
    chunk_start = torch.cat([torch.arange(c, dtype=torch.int64) * _BLOCK for c in chunks])
    addresses = [[t.data_ptr() for t in trio] for trio in zip(params, exp_avgs, exp_avg_sqs, strict=True)]
    return (_to_device(addresses, torch.int64, device), _to_device(numels, torch.int64, device),
            chunk_tensor.to(device), chunk_start.to(device))


def _plan(params, grads, exp_avgs, exp_avg_sqs) -> list[_Group]:
    """The launches for these tensors, cached by :func:`_plan_key`; validates the tensors on a cache miss."""
    key = _plan_key(params, grads, exp_avgs, exp_avg_sqs)
    if key in _plans:
        _plans.move_to_end(key)
        return _plans[key]
    _check_group(params, grads, exp_avgs, exp_avg_sqs)
    by_kind: dict[tuple, list[int]] = {}
    for i, (p, g) in enumerate(zip(params, grads, strict=True)):
        by_kind.setdefault((p.device, p.dtype, g.dtype), []).append(i)
    plan = []
    for (device, p_dtype, g_dtype), idx in by_kind.items():
        tensors = [[ts[i] for i in idx] for ts in (params, grads, exp_avgs, exp_avg_sqs)]
        grad_ptrs = [g.data_ptr() for g in tensors[1]]
        plan.append(_Group(device, p_dtype, g_dtype, idx, _tables_for(tensors, device),
                           _to_device(grad_ptrs, torch.int64, device), grad_ptrs))
    _plans[key] = plan
    if len(_plans) > _CACHE_SIZE:
        _plans.popitem(last=False)
    return plan


def _repoint_grads(group: _Group, params, grads) -> None:
    """Point ``group``'s grad table at ``grads`` when they moved since the last step (checked once, like a miss)."""
    ptrs = [grads[i].data_ptr() for i in group.index]
    if ptrs == group.grad_ptrs:
        return
    for i in group.index:
        _check_grad(i, params[i], grads[i])
    host = torch.tensor(ptrs, dtype=torch.int64)
    if group.device.type == "cuda":
        # Pinned, so the copy is asynchronous; the caching host allocator keeps the block until the copy ran.
        host = host.pin_memory()
    group.grad_addrs.copy_(host, non_blocking=True)
    group.grad_ptrs = ptrs


def _check_grad(i: int, p: torch.Tensor, g: torch.Tensor) -> None:
    check_dtype(f"grads[{i}]", g, (p.dtype, torch.float32))
    if g.shape != p.shape:
        raise ValueError(f"adamw_step needs params[{i}] and its grad of one shape, got {tuple(p.shape)} and "
                         f"{tuple(g.shape)}")
    if not g.is_contiguous() or g.device != p.device or g.data_ptr() % 16:
        raise ValueError(f"adamw_step needs grads[{i}] contiguous, 16-byte aligned and on params[{i}]'s device; "
                         "call .contiguous() or use lmfast.train.optim.adamw_step_reference")


def _check_group(params, grads, exp_avgs, exp_avg_sqs) -> None:
    for i, (p, g, m, v) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs, strict=True)):
        check_float_dtype(f"params[{i}]", p)
        _check_grad(i, p, g)
        check_dtype(f"exp_avgs[{i}]", m, (torch.float32,))
        check_dtype(f"exp_avg_sqs[{i}]", v, (torch.float32,))
        if not (p.shape == g.shape == m.shape == v.shape):
            raise ValueError(f"adamw_step needs params[{i}], its grad and states of one shape, got {tuple(p.shape)}, "
                             f"{tuple(g.shape)}, {tuple(m.shape)}, {tuple(v.shape)}")
        if not all(t.is_contiguous() for t in (p, g, m, v)) or len({t.device for t in (p, g, m, v)}) != 1:
            raise ValueError(f"adamw_step needs params[{i}], its grad and states contiguous on one device; "
                             "call .contiguous() or use lmfast.train.optim.adamw_step_reference")
        if any(t.data_ptr() % 16 for t in (p, g, m, v)):
            raise ValueError(f"adamw_step needs params[{i}], its grad and states 16-byte aligned (a view at an odd "
                             "offset is not); clone the tensor or use lmfast.train.optim.adamw_step_reference")


def _launch(group: _Group, lr: torch.Tensor, beta1: float, beta2: float, eps: float, weight_decay: float,
            step: int, clip: tuple[torch.Tensor, float, float] | None = None) -> None:
    addrs, numels, chunk_tensor, chunk_start = group.tables
    norm_sq, max_norm, clip_eps = clip if clip is not None else (lr, 0.0, 0.0)
    _adamw_step_kernel[(chunk_tensor.numel(),)](
        addrs, group.grad_addrs, numels, chunk_tensor, chunk_start, lr, beta1, beta2, eps, weight_decay,
        1.0 - beta1**step, math.sqrt(1.0 - beta2**step), norm_sq, max_norm, clip_eps, CLIP=clip is not None,
        P_DTYPE=_TL[group.p_dtype], G_DTYPE=_TL[group.g_dtype], BLOCK=_BLOCK, SUB_BLOCK=_SUB_BLOCK, num_warps=_WARPS,
        num_stages=1,
    )


def _launch_sumsq(group: _Group) -> torch.Tensor:
    _, numels, chunk_tensor, chunk_start = group.tables
    partials = torch.empty(chunk_tensor.numel(), dtype=torch.float32, device=group.device)
    _grad_sumsq_kernel[(chunk_tensor.numel(),)](
        group.grad_addrs, numels, chunk_tensor, chunk_start, partials, G_DTYPE=_TL[group.g_dtype], BLOCK=_BLOCK,
        SUB_BLOCK=_SUB_BLOCK, num_warps=_WARPS, num_stages=1)
    return partials


def _lr_on(device: torch.device, lr: float | torch.Tensor) -> torch.Tensor:
    """``lr`` as a one-element fp32 tensor on ``device``; a float is written into a cached tensor with ``fill_``
    (a tiny kernel on a GPU, no host sync), so both kinds of lr launch the same compiled kernel."""
    if isinstance(lr, torch.Tensor):
        return lr.detach().to(device=device, dtype=torch.float32).reshape(1)
    return _lr_buffer(device).fill_(float(lr))


@functools.cache
def _lr_buffer(device: torch.device) -> torch.Tensor:
    return torch.empty(1, dtype=torch.float32, device=device)


_TL = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def _step(params, grads, exp_avgs, exp_avg_sqs, lr: torch.Tensor | float, step: int, beta1: float, beta2: float,
          eps: float, weight_decay: float, clip: tuple[torch.Tensor, float, float] | None = None) -> None:
    for group in _plan(params, grads, exp_avgs, exp_avg_sqs):
        _repoint_grads(group, params, grads)
        _launch(group, _lr_on(group.device, lr), beta1, beta2, eps, weight_decay, step, clip)


def grad_norm_squared(params, grads, exp_avgs, exp_avg_sqs) -> torch.Tensor:
    """The sum of squares of every element of ``grads``, fp32 (1,) on their device: one multi-tensor launch per
    (param dtype, grad dtype) group over the step's own (cached) chunk tables, the per-chunk partials then summed
    in a fixed order. The other lists only key the cached tables (see :func:`adamw_step`)."""
    params = [p.detach() for p in params]
    partials = []
    for group in _plan(params, grads, exp_avgs, exp_avg_sqs):
        _repoint_grads(group, params, grads)
        partials.append(_launch_sumsq(group))
    return torch.cat(partials).sum().reshape(1)


@torch.library.custom_op("lmfast::adamw_step", mutates_args=("params", "exp_avgs", "exp_avg_sqs"))
def _adamw_step_op(
    params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor], lr: torch.Tensor | None, lr_value: float, step: int, beta1: float,
    beta2: float, eps: float, weight_decay: float,
) -> None:
    _step(params, grads, exp_avgs, exp_avg_sqs, lr_value if lr is None else lr, step, beta1, beta2, eps, weight_decay)


@_adamw_step_op.register_fake
def _(params, grads, exp_avgs, exp_avg_sqs, lr, lr_value, step, beta1, beta2, eps, weight_decay) -> None:
    return None


def adamw_step(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    *,
    step: int,
    lr: float | torch.Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    clip: tuple[torch.Tensor, float, float] | None = None,
) -> None:
    """One AdamW step on every tensor, in place, one launch per (device, param dtype, grad dtype) group.

    Same signature and arithmetic as :func:`lmfast.train.optim.adamw_step_reference`. params: fp32/fp16/bf16,
    contiguous, 16-byte aligned; grads: the param's dtype or fp32; exp_avgs, exp_avg_sqs: fp32, the params'
    shapes. ``lr``: a float or a one-element tensor (read on the device, so changing it recompiles nothing).
    Eager calls launch directly (the custom op's dispatch costs more than the launch on a 100-tensor model)
    and bump the tensors' autograd version counters themselves; under torch.compile the step is the opaque
    custom op ``lmfast::adamw_step``. ``clip``: ``(norm_sq, max_norm, eps)`` scales each gradient by
    ``min(1, max_norm / (sqrt(norm_sq) + eps))`` inside the update (see :func:`clip_adamw_step`).
    """
    if step < 1:
        raise ValueError(f"AdamW step counts from 1, got step={step}")
    if isinstance(lr, torch.Tensor) and lr.numel() != 1:
        raise ValueError(f"adamw_step needs lr as a float or a one-element tensor, got shape {tuple(lr.shape)}")
    lengths = {len(params), len(grads), len(exp_avgs), len(exp_avg_sqs)}
    if len(lengths) != 1:
        raise ValueError("adamw_step needs params, grads, exp_avgs and exp_avg_sqs lists of one length, got "
                         f"{len(params)}, {len(grads)}, {len(exp_avgs)}, {len(exp_avg_sqs)}")
    if not params:
        return
    params = [p.detach() for p in params]
    lr = lr.detach() if isinstance(lr, torch.Tensor) else float(lr)
    if torch.compiler.is_compiling():
        if clip is not None:
            raise NotImplementedError("adamw_step with clip= runs eagerly (the trainer does not compile its step)")
        lr_tensor, lr_value = (lr, 0.0) if isinstance(lr, torch.Tensor) else (None, lr)
        _adamw_step_op(params, grads, exp_avgs, exp_avg_sqs, lr_tensor, lr_value, step, beta1, beta2, eps,
                       weight_decay)
        return
    _step(params, grads, exp_avgs, exp_avg_sqs, lr, step, beta1, beta2, eps, weight_decay, clip)
    increment_version(params + list(exp_avgs) + list(exp_avg_sqs))


def clip_adamw_step(groups: list[tuple[list, list, list, list, int, dict]], max_norm: float, eps: float = 1e-6
                    ) -> torch.Tensor:
    """Global-norm clipping folded into AdamW: ``clip_grad_norm_`` over every gradient of every group, then
    :func:`adamw_step` on each, with the gradients never scaled in memory.

    groups: ``(params, grads, exp_avgs, exp_avg_sqs, step, hyper)`` per optimizer group (``hyper``: lr, beta1, beta2,
    eps, weight_decay), all on one device. Returns the norm before clipping, fp32 (1,) on the device (no host sync).
    Equal to clip-then-step within fp32 rounding: the coefficient ``min(1, max_norm / (norm + eps))`` is the one
    :func:`lmfast.train.optim.clip_grad_norm_` applies.
    """
    if not groups:
        raise ValueError("clip_adamw_step needs at least one group of tensors")
    norm_sq = torch.cat([grad_norm_squared(*g[:4]) for g in groups]).sum().reshape(1)
    for params, grads, exp_avgs, exp_avg_sqs, step, hyper in groups:
        adamw_step(params, grads, exp_avgs, exp_avg_sqs, step=step, **hyper, clip=(norm_sq, float(max_norm), eps))
    return norm_sq.sqrt().reshape(())


def aot_specs() -> list[AotSpec]:
    """Every configuration the launcher can pick: each param dtype with a grad of its dtype or fp32."""
    specs = []
    for pd in FLOAT_DTYPES:
        for gd in dict.fromkeys((pd, torch.float32)):
            sig = {"ADDRS": "*i64", "GRAD_ADDRS": "*i64", "NUMELS": "*i64", "CHUNK_TENSOR": "*i32",
                   "CHUNK_START": "*i64", "LR": "*fp32",
                   "beta1": "fp32", "beta2": "fp32", "eps": "fp32", "weight_decay": "fp32", "bias_correction1": "fp32",
                   "bias_correction2_sqrt": "fp32", "NORM_SQ": "*fp32", "max_norm": "fp32", "clip_eps": "fp32",
                   "CLIP": "constexpr", "P_DTYPE": "constexpr", "G_DTYPE": "constexpr",
                   "BLOCK": "constexpr", "SUB_BLOCK": "constexpr"}
            for clip in (False, True):
                const = {"CLIP": clip, "P_DTYPE": _TL[pd], "G_DTYPE": _TL[gd], "BLOCK": _BLOCK, "SUB_BLOCK": _SUB_BLOCK}
                name = f"adamw_step {TRITON_DTYPE[pd]} param, {TRITON_DTYPE[gd]} grad{', clip' if clip else ''}"
                specs.append(AotSpec(name, _adamw_step_kernel, sig, const, _WARPS, 1))
    for gd in FLOAT_DTYPES:
        sig = {"GRAD_ADDRS": "*i64", "NUMELS": "*i64", "CHUNK_TENSOR": "*i32", "CHUNK_START": "*i64",
               "PARTIALS": "*fp32", "G_DTYPE": "constexpr", "BLOCK": "constexpr", "SUB_BLOCK": "constexpr"}
        const = {"G_DTYPE": _TL[gd], "BLOCK": _BLOCK, "SUB_BLOCK": _SUB_BLOCK}
        specs.append(AotSpec(f"grad_sumsq {TRITON_DTYPE[gd]} grad", _grad_sumsq_kernel, sig, const, _WARPS, 1))
    return specs
