"""AdamW with decoupled weight decay, the warmup + cosine schedule, and global-norm gradient clipping."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable

import torch

from lmfast.model import ops

__all__ = ["AdamW", "adamw_step_reference", "adamw_step_fn", "cosine_lr", "clip_grad_norm_"]


def adamw_step_reference(
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
) -> None:
    """One AdamW step on each tensor, in place: the spec of the fused ``lmfast::adamw_step`` kernel.

    The same arithmetic as ``torch.optim.AdamW``: decay first (``p *= 1 - lr * wd``), then
    ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``, ``p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)``
    with ``bc_i = 1 - b_i ** step``. ``step`` counts from 1.
    """
    if step < 1:
        raise ValueError(f"AdamW step counts from 1, got step={step}")
    bc1 = 1.0 - beta1**step
    bc2_sqrt = math.sqrt(1.0 - beta2**step)
    if _foreach_ok(params, grads, exp_avgs, exp_avg_sqs, lr):
        if params[0].device.type == "cpu" and hasattr(torch, "_fused_adamw_"):
            _adamw_fused_cpu(params, grads, exp_avgs, exp_avg_sqs, step, lr, beta1, beta2, eps, weight_decay)
        else:
            _adamw_foreach(params, grads, exp_avgs, exp_avg_sqs, bc1, bc2_sqrt, lr, beta1, beta2, eps, weight_decay)
        return
    for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs, strict=True):
        g = g.to(m.dtype)
        p.mul_(1.0 - lr * weight_decay)
        m.lerp_(g, 1.0 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        denom = (v.sqrt() / bc2_sqrt).add_(eps)
        p.add_((m / denom).mul_(-lr / bc1).to(p.dtype))


def _foreach_ok(params: list, grads: list, exp_avgs: list, exp_avg_sqs: list, lr: float | torch.Tensor) -> bool:
    """The multi-tensor path needs one dtype and one device across all four lists, and a Python-number lr."""
    tensors = [*params, *grads, *exp_avgs, *exp_avg_sqs]
    if isinstance(lr, torch.Tensor) or not tensors or len({len(params), len(grads), len(exp_avgs),
                                                            len(exp_avg_sqs)}) != 1:
        return False
    first = tensors[0]
    return all(t.dtype == first.dtype and t.device == first.device and not t.is_sparse for t in tensors)


def _adamw_fused_cpu(params: list, grads: list, exp_avgs: list, exp_avg_sqs: list, step: int, lr: float,
                     beta1: float, beta2: float, eps: float, weight_decay: float) -> None:
    # PyTorch's own fused AdamW kernel (what torch.optim.AdamW(fused=True) runs): one pass over p, g, m, v
    # per tensor instead of ~9 memory-bound passes. On one CPU core, 4.3M fp32 parameters: 24 ms -> 4 ms a step.
    steps = [torch.tensor(float(step))] * len(params)  # read, not incremented, by the kernel
    torch._fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, [], steps, lr=lr, beta1=beta1, beta2=beta2,
                        weight_decay=weight_decay, eps=eps, amsgrad=False, maximize=False)


def _adamw_foreach(params: list, grads: list, exp_avgs: list, exp_avg_sqs: list, bc1: float, bc2_sqrt: float,
                   lr: float, beta1: float, beta2: float, eps: float, weight_decay: float) -> None:
    # The op sequence of torch.optim.AdamW(foreach=True), so the two agree to the last bit: on a GPU one
    # multi-tensor launch per op instead of ~10 per parameter, and one temporary (the denominator) per
    # tensor instead of four.
    torch._foreach_mul_(params, 1.0 - lr * weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1.0 - beta2)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, bc2_sqrt)
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denom, -lr / bc1)


class AdamW(torch.optim.Optimizer):
    """AdamW (Loshchilov & Hutter) as a ``torch.optim.Optimizer``: decoupled weight decay, bias correction.

    ``fused=None`` picks the Triton multi-tensor kernel for CUDA parameters when it can run, ``True``
    requires it, ``False`` always uses the reference loop. State per parameter: ``step`` (a float tensor,
    as ``torch.optim``), ``exp_avg``, ``exp_avg_sq`` in fp32.
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter] | Iterable[dict],
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        fused: bool | None = None,
    ):
        if not (isinstance(lr, torch.Tensor) or lr >= 0.0):
            raise ValueError(f"AdamW lr must be >= 0, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"AdamW betas must each be in [0, 1), got {betas}")
        if eps < 0.0:
            raise ValueError(f"AdamW eps must be >= 0, got {eps}")
        if weight_decay < 0.0:
            raise ValueError(f"AdamW weight_decay must be >= 0, got {weight_decay}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, fused=fused)
        super().__init__(params, defaults)

    def _group_tensors(self, group: dict) -> tuple[list, list, list, list, list]:
        params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("AdamW does not support sparse gradients")
            state = self.state[p]
            if not state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
            state["step"] += 1
            # An FSDP parameter, its gradient and its state are DTensors sharded alike, and AdamW is elementwise:
            # the step runs on this rank's shards as plain tensors (views), on every path, the Triton kernel's too.
            params.append(_local(p))
            grads.append(_local(p.grad))
            exp_avgs.append(_local(state["exp_avg"]))
            exp_avg_sqs.append(_local(state["exp_avg_sq"]))
            steps.append(int(state["step"].item()))
        return params, grads, exp_avgs, exp_avg_sqs, steps

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, steps = self._group_tensors(group)
            if not params:
                continue
            hyper = self._hyper(group)
            # Parameters of one group are created together, so they share a step count; a group whose
            # parameters gained gradients at different times is split by step.
            for step in sorted(set(steps)):
                idx = [i for i, s in enumerate(steps) if s == step]
                tensors = ([params[i] for i in idx], [grads[i] for i in idx],
                           [exp_avgs[i] for i in idx], [exp_avg_sqs[i] for i in idx])
                self._update(group["fused"], tensors, step, hyper)
        return loss

    @staticmethod
    def _hyper(group: dict) -> dict:
        beta1, beta2 = group["betas"]
        return dict(lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"])

    @staticmethod
    def _update(fused: bool | None, tensors: tuple, step: int, hyper: dict) -> None:
        step_fn = adamw_step_fn(fused, tensors[0])
        step_fn(*tensors, step=step, **hyper)

    @torch.no_grad()
    def clip_grad_norm_and_step(self, max_norm: float, fold: bool = False) -> torch.Tensor:
        """:func:`clip_grad_norm_` over every parameter of every group, then :meth:`step`; returns the norm before
        clipping (a 0-d tensor, no host sync).

        ``fold``: where the fused Triton step takes every parameter (CUDA, not sharded), fold the clip into it
        (``lmfast.kernels.adamw.clip_adamw_step``): one multi-tensor pass sums the squares, and the step scales each
        gradient by the clip coefficient inside its update, so the gradients are never scaled in memory (they are
        left as backward made them). Equal to clip-then-step within fp32 rounding.
        """
        if fold and self._foldable():
            from lmfast.kernels.adamw import clip_adamw_step

            return clip_adamw_step(self._fold_groups(), max_norm)
        norm = clip_grad_norm_([p for g in self.param_groups for p in g["params"] if p.grad is not None], max_norm)
        self.step()
        return norm

    def _foldable(self) -> bool:
        params = [p for g in self.param_groups if g["fused"] is not False for p in g["params"] if p.grad is not None]
        every = sum(p.grad is not None for g in self.param_groups for p in g["params"])
        return (bool(params) and len(params) == every and len({p.device for p in params}) == 1
                and not any(_is_dtensor(p) for p in params)
                and all(ops.fused_unavailable_reason(p.device) is None for p in params[:1]))

    def _fold_groups(self) -> list[tuple]:
        groups = []
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, steps = self._group_tensors(group)
            hyper = self._hyper(group)
            for step in sorted(set(steps)):
                idx = [i for i, s in enumerate(steps) if s == step]
                groups.append(([params[i] for i in idx], [grads[i] for i in idx], [exp_avgs[i] for i in idx],
                               [exp_avg_sqs[i] for i in idx], step, hyper))
        return groups


def adamw_step_fn(fused: bool | None, params: list[torch.Tensor]) -> Callable:
    """The multi-tensor AdamW step for ``params``: the Triton kernel or :func:`adamw_step_reference`.

    ``fused=None`` takes the kernel when every parameter is on a CUDA device it can run on.
    """
    if fused is False:
        return adamw_step_reference
    reasons = {ops.fused_unavailable_reason(p.device) for p in params} - {None}
    if fused is None:
        if reasons:
            return adamw_step_reference
    elif reasons:
        raise RuntimeError(f"AdamW(fused=True) cannot run here: {reasons.pop()}. Pass fused=None or False.")
    from lmfast.kernels.adamw import adamw_step

    return adamw_step


def cosine_lr(it: int, max_lr: float, min_lr: float, warmup_iters: int, cosine_cycle_iters: int) -> float:
    """Learning rate at iteration ``it``: linear warmup from 0, cosine decay to ``min_lr``, then flat.

    ``it < warmup_iters``: ``max_lr * it / warmup_iters``; ``warmup_iters <= it <= cosine_cycle_iters``:
    ``min_lr + (max_lr - min_lr) * (1 + cos(pi * (it - warmup) / (cycle - warmup))) / 2``; after: ``min_lr``.
    """
    if it < warmup_iters:
        return max_lr * it / warmup_iters
    if it > cosine_cycle_iters:
        return min_lr
    span = cosine_cycle_iters - warmup_iters
    if span <= 0:
        return min_lr if it > warmup_iters else max_lr
    progress = (it - warmup_iters) / span
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


def clip_grad_norm_(params: Iterable[torch.nn.Parameter], max_norm: float, eps: float = 1e-6) -> torch.Tensor:
    """Scale all gradients in place so their global L2 norm is at most ``max_norm``; returns the norm before.

    The scale is ``max_norm / (norm + eps)``, applied only when ``norm > max_norm``. The norm stays a
    tensor (no host sync), so this is cheap inside a compiled or CUDA-graphed step.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    norms = torch._foreach_norm(grads, 2.0)
    total = torch.linalg.vector_norm(torch.stack([n.float() for n in norms]), 2.0)
    if _is_dtensor(total):  # FSDP: DTensor ops reduced the shards' norms over the ranks
        total = total.full_tensor()
    scale = torch.clamp(max_norm / (total + eps), max=1.0)
    torch._foreach_mul_([_local(g) for g in grads], scale.to(grads[0].dtype))
    return total


def _is_dtensor(t: torch.Tensor) -> bool:
    # A DTensor exists only once torch.distributed.tensor is imported; looking it up spares importing it (~1 s)
    dtensor = sys.modules.get("torch.distributed.tensor")
    return dtensor is not None and isinstance(t, dtensor.DTensor)


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor, as a plain tensor sharing its storage; any other tensor as it is."""
    return t.to_local() if _is_dtensor(t) else t
