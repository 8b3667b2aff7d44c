"""The fused multi-tensor AdamW step equals lmfast.optim.adamw_step_reference over several steps.

Without a GPU the kernel runs on CPU tensors through Triton's interpreter (tests/conftest.py); the ``gpu``
tests run lmfast.optim.AdamW (which routes to the kernel on CUDA) against torch.optim.AdamW.
"""

from __future__ import annotations

import os

import pytest
import torch
from _kernel_utils import TOLERANCES, assert_verbose_allclose, kernel_device, requires_triton

from lmfast.optim import adamw_step_reference

pytestmark = requires_triton

HYPER = dict(beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)
ODD_SHAPES = [(5,), (4099,), (3, 7), (1,), (33, 65)]  # one spans two 4096-element chunks, one a partial chunk


def _state(shapes, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen).to(device, dtype) for s in shapes]
    exp_avgs = [torch.zeros(s, device=device) for s in shapes]
    exp_avg_sqs = [torch.zeros(s, device=device) for s in shapes]
    return params, exp_avgs, exp_avg_sqs


def _round_like_the_kernel(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # GPUs round fp32 -> bf16 to nearest even; Triton's interpreter truncates (it drops the low 16 bits).
    if dtype == torch.bfloat16 and x.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        return (x.view(torch.int32) & -65536).view(torch.float32)
    return x.to(dtype).float()


def _run_both(shapes, param_dtype, lrs, device=None, grad_dtype=None):
    """Run the kernel on ``param_dtype`` params and the reference on fp32 copies, one step per lr.

    The kernel updates a half-precision param in fp32 and rounds once per step, so the reference copies are
    rounded the same way after each step.
    """
    from lmfast.kernels.adamw import adamw_step

    device = device or kernel_device()
    fused = _state(shapes, param_dtype, device)
    ref = [[t.float().clone() for t in ts] for ts in fused]
    gen = torch.Generator().manual_seed(1)
    for step, lr in enumerate(lrs, start=1):
        grads = [torch.randn(s, generator=gen).to(device, grad_dtype or param_dtype) for s in shapes]
        adamw_step(fused[0], grads, fused[1], fused[2], step=step, lr=lr, **HYPER)
        adamw_step_reference(ref[0], [g.float() for g in grads], ref[1], ref[2], step=step, lr=lr, **HYPER)
        for p in ref[0]:
            p.copy_(_round_like_the_kernel(p, param_dtype))
    return fused, ref


@pytest.mark.parametrize("param_dtype", [torch.float32, torch.bfloat16])
def test_adamw_step_matches_reference_over_several_steps_and_tensor_sizes(param_dtype):
    (params, ms, vs), (params_ref, ms_ref, vs_ref) = _run_both(ODD_SHAPES, param_dtype, [1e-2, 3e-3, 1e-3])
    atol, rtol = TOLERANCES[param_dtype]
    for i in range(len(ODD_SHAPES)):
        assert_verbose_allclose(params[i], params_ref[i].to(param_dtype), atol, rtol, name=f"param {i}")
        assert_verbose_allclose(ms[i], ms_ref[i], 1e-6, 1e-5, name=f"exp_avg {i}")
        assert_verbose_allclose(vs[i], vs_ref[i], 1e-6, 1e-5, name=f"exp_avg_sq {i}")


def test_adamw_step_takes_lr_as_a_tensor_and_matches_a_float_lr():
    lrs = [torch.tensor(1e-2, device=kernel_device()), 5e-3, torch.tensor([2e-3], device=kernel_device())]
    (params, _, _), (params_ref, _, _) = _run_both([(70,), (3, 3)], torch.float32, lrs)
    for p, p_ref in zip(params, params_ref, strict=True):
        assert_verbose_allclose(p, p_ref, *TOLERANCES[torch.float32], name="param")


def test_adamw_step_with_fp32_grads_for_half_precision_params_matches_reference():
    (params, _, _), (params_ref, _, _) = _run_both([(130,)], torch.float16, [1e-2, 1e-2], grad_dtype=torch.float32)
    assert_verbose_allclose(params[0], params_ref[0].half(), *TOLERANCES[torch.float16], name="param")


def test_adamw_step_launches_once_per_dtype_group(monkeypatch):
    from lmfast.kernels import adamw

    launches = []
    real = adamw._launch
    monkeypatch.setattr(adamw, "_launch", lambda group, *a: launches.append(group.tables[1].numel()) or real(group, *a))
    device = kernel_device()
    dtypes = [torch.float32, torch.bfloat16, torch.float32, torch.float32, torch.bfloat16]
    params = [torch.randn(9, device=device).to(d) for d in dtypes]
    states = [[torch.zeros(9, device=device) for _ in params] for _ in range(2)]
    adamw.adamw_step(params, [torch.randn_like(p) for p in params], *states, step=1, lr=1e-3, **HYPER)
    assert sorted(launches) == [2, 3]


@pytest.mark.parametrize(
    "change, match",
    [
        ("state_dtype", "exp_avgs\\[0\\] has dtype torch.bfloat16"),
        ("shape", "of one shape"),
        ("lengths", "lists of one length"),
        ("step", "step counts from 1"),
        ("lr_shape", "one-element tensor"),
    ],
)
def test_adamw_step_rejects_unsupported_inputs_with_a_value_error(change, match):
    from lmfast.kernels.adamw import adamw_step

    device = kernel_device()
    params, ms, vs = _state([(4,)], torch.float32, device)
    grads = [torch.ones(4, device=device)]
    kwargs = dict(step=1, lr=1e-3, **HYPER)
    if change == "state_dtype":
        ms = [ms[0].bfloat16()]
    elif change == "shape":
        grads = [torch.ones(5, device=device)]
    elif change == "lengths":
        grads = grads * 2
    elif change == "step":
        kwargs["step"] = 0
    else:
        kwargs["lr"] = torch.ones(2, device=device)
    with pytest.raises(ValueError, match=match):
        adamw_step(params, grads, ms, vs, **kwargs)


@pytest.mark.gpu
def test_adamw_optimizer_on_gpu_matches_torch_adamw_on_the_124m_parameter_shapes():
    from lmfast.optim import AdamW

    torch.manual_seed(0)
    shapes = [(50257, 768), (768,), (768, 768), (2048, 768), (768, 2048), (1, 1)]
    params = [torch.nn.Parameter(torch.randn(s, device="cuda") * 0.02) for s in shapes]
    params_ref = [torch.nn.Parameter(p.detach().clone()) for p in params]
    ours = AdamW(params, lr=torch.tensor(1e-3, device="cuda"), betas=(0.9, 0.95), weight_decay=0.1)
    theirs = torch.optim.AdamW(params_ref, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1, foreach=False)
    for _ in range(3):
        for p, p_ref in zip(params, params_ref, strict=True):
            p.grad = torch.randn_like(p)
            p_ref.grad = p.grad.clone()
        ours.step()
        theirs.step()
    for p, p_ref in zip(params, params_ref, strict=True):
        assert_verbose_allclose(p, p_ref, 1e-6, 1e-5, name="param")
