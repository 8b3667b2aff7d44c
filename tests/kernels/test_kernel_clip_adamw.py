"""Global-norm clipping folded into the fused AdamW step equals clip_grad_norm_ then the AdamW step.

Under the interpreter (CPU tensors) with the fused dispatch forced: the sum of squares runs as its own multi-tensor
kernel over the step's chunk tables and the step applies the clip coefficient inside its update.
"""

from __future__ import annotations

import math

import pytest
import torch
from _kernel_utils import assert_verbose_allclose, force_fused_ops_on_cpu, requires_triton

from lmfast.train.optim import AdamW, clip_grad_norm_

pytestmark = requires_triton

SHAPES = [(4099,), (3, 7), (64, 65), (1,)]  # a ragged chunk, tiny tensors, one tensor over several chunks


def _model_params(seed, grad_scale, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen).to(dtype)) for s in SHAPES]
    for p in params:
        p.grad = (torch.randn(p.shape, generator=gen) * grad_scale).to(dtype)
    return params


def _optimizer(params, fused):
    groups = [{"params": params[:2], "weight_decay": 0.1}, {"params": params[2:], "weight_decay": 0.0}]
    return AdamW(groups, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, fused=fused)


@pytest.mark.parametrize("grad_scale, max_norm", [(1.0, 0.5), (1e-3, 1.0), (1.0, math.inf)],
                         ids=["clipped", "below the threshold", "clipping off"])
def test_clip_folded_into_adamw_equals_clip_then_step(monkeypatch, grad_scale, max_norm):
    force_fused_ops_on_cpu(monkeypatch)
    folded_params, ref_params = _model_params(0, grad_scale), _model_params(0, grad_scale)
    folded, reference = _optimizer(folded_params, None), _optimizer(ref_params, False)
    for step in range(3):
        gen = torch.Generator().manual_seed(10 + step)  # fresh gradients each step, the same for both
        for p, q in zip(folded_params, ref_params, strict=True):
            p.grad = torch.randn(p.shape, generator=gen) * grad_scale
            q.grad = p.grad.clone()
        grads = [p.grad.clone() for p in folded_params]
        norm = folded.clip_grad_norm_and_step(max_norm, fold=True)
        expected_norm = clip_grad_norm_(ref_params, max_norm)
        reference.step()
        assert_verbose_allclose(norm, expected_norm, 1e-6, 1e-5, name=f"norm at step {step}")
        for i, (a, e) in enumerate(zip(folded_params, ref_params, strict=True)):
            assert_verbose_allclose(a, e, 1e-6, 1e-5, name=f"param {i} after step {step}")
            assert torch.equal(folded_params[i].grad, grads[i])  # never scaled in memory
        for p, q in zip(folded_params, ref_params, strict=True):
            state, ref_state = folded.state[p], reference.state[q]
            assert_verbose_allclose(state["exp_avg"], ref_state["exp_avg"], 1e-7, 1e-5, name="exp_avg")
            assert_verbose_allclose(state["exp_avg_sq"], ref_state["exp_avg_sq"], 1e-9, 1e-5, name="exp_avg_sq")


def test_grad_norm_squared_sums_every_gradient_of_every_dtype_group(monkeypatch):
    from lmfast.kernels.adamw import grad_norm_squared

    params = _model_params(1, 1.0) + _model_params(2, 1.0, torch.float16)
    grads = [p.grad for p in params]
    states = [torch.zeros(p.shape) for p in params]
    expected = sum(float(g.double().square().sum()) for g in grads)
    assert math.isclose(float(grad_norm_squared(params, grads, states, [s.clone() for s in states])), expected,
                        rel_tol=1e-5)


def test_clip_is_not_folded_where_the_fused_step_cannot_run():
    # On CPU without the forced dispatch the reference path clips the gradients in memory, as clip_grad_norm_ does.
    params = _model_params(3, 1.0)
    optimizer = _optimizer(params, None)
    norm = optimizer.clip_grad_norm_and_step(0.5, fold=True)
    assert norm > 0.5
    total = math.sqrt(sum(float(p.grad.square().sum()) for p in params))
    assert math.isclose(total, 0.5, rel_tol=1e-4)
