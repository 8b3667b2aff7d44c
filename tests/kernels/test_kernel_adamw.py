"""The fused multi-tensor AdamW step equals lmfast.train.optim.adamw_step_reference over several steps.

Without a GPU the kernel runs on CPU tensors through Triton's interpreter (tests/conftest.py); the ``gpu``
tests run lmfast.train.optim.AdamW (which routes to the kernel on CUDA) against torch.optim.AdamW.
"""

from __future__ import annotations

import os

import pytest
import torch
from _kernel_utils import TOLERANCES, assert_verbose_allclose, kernel_device, requires_triton

from lmfast.train.optim import adamw_step_reference

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


def _ulp(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The spacing of ``dtype`` at each value of ``x`` (one unit in the last place)."""
    return torch.finfo(dtype).eps * torch.exp2(torch.floor(torch.log2(x.float().abs().clamp_min(1e-30))))


def test_adamw_step_matches_reference_over_several_steps_and_tensor_sizes_in_fp32():
    (params, ms, vs), (params_ref, ms_ref, vs_ref) = _run_both(ODD_SHAPES, torch.float32, [1e-2, 3e-3, 1e-3])
    for i in range(len(ODD_SHAPES)):
        assert_verbose_allclose(params[i], params_ref[i], 1e-6, 1e-6, name=f"param {i}")
        assert_verbose_allclose(ms[i], ms_ref[i], 1e-6, 1e-5, name=f"exp_avg {i}")
        assert_verbose_allclose(vs[i], vs_ref[i], 1e-6, 1e-5, name=f"exp_avg_sq {i}")


def test_adamw_step_of_bf16_params_is_within_one_rounding_of_the_reference():
    # The reference copies are rounded to bf16 as the kernel rounds after each step, so the two may differ only
    # by one bf16 rounding of the last step: one unit in the last place. The update is many units, so a wrong one
    # (no weight decay, no bias correction, a wrong lr) fails.
    lrs = [5e-2, 3e-2, 2e-2]
    start = [p.float().clone() for p in _state(ODD_SHAPES, torch.bfloat16, kernel_device())[0]]
    (params, ms, vs), (params_ref, ms_ref, vs_ref) = _run_both(ODD_SHAPES, torch.bfloat16, lrs)
    moved = torch.cat([(p.float() - p0).abs().flatten() for p, p0 in zip(params_ref, start, strict=True)])
    ulps = torch.cat([_ulp(p, torch.bfloat16).flatten() for p in params_ref])
    assert (moved > 4 * ulps).float().mean() > 0.9  # the test can tell a right update from a wrong one
    for i in range(len(ODD_SHAPES)):
        diff = (params[i].float() - params_ref[i].float()).abs()
        assert_verbose_allclose(params[i], params_ref[i], 0.0, 2**-7, name=f"param {i}")
        assert (diff <= _ulp(params_ref[i], torch.bfloat16)).all()
        assert_verbose_allclose(ms[i], ms_ref[i], 1e-6, 1e-5, name=f"exp_avg {i}")
        assert_verbose_allclose(vs[i], vs_ref[i], 1e-6, 1e-5, name=f"exp_avg_sq {i}")


def test_adamw_step_keeps_its_address_tables_when_zero_grad_frees_the_gradients(monkeypatch):
    # The trainer calls zero_grad(set_to_none=True), so each step's grads are new tensors at new addresses. The
    # tables of params and states stay cached; only the grad table is re-pointed, and the kernel reads the new grads.
    from lmfast.kernels import adamw

    builds = []
    real = adamw._tables_for
    monkeypatch.setattr(adamw, "_tables_for", lambda *a: builds.append(1) or real(*a))
    adamw._plans.clear()
    device = kernel_device()
    fused = _state(ODD_SHAPES, torch.float32, device, seed=3)
    ref = [[t.clone() for t in ts] for ts in fused]
    gen = torch.Generator().manual_seed(4)
    kept = []  # earlier grads stay alive, so each step's grads really sit at new addresses
    for step in range(1, 4):
        grads = [torch.randn(s, generator=gen).to(device) for s in ODD_SHAPES]
        assert not {g.data_ptr() for g in grads} & {g.data_ptr() for g in kept}
        kept += grads
        adamw.adamw_step(fused[0], grads, fused[1], fused[2], step=step, lr=1e-2, **HYPER)
        adamw_step_reference(ref[0], grads, ref[1], ref[2], step=step, lr=1e-2, **HYPER)
    assert builds == [1]
    for i in range(len(ODD_SHAPES)):
        assert_verbose_allclose(fused[0][i], ref[0][i], 1e-6, 1e-6, name=f"param {i}")


def test_adamw_step_checks_gradients_that_moved(monkeypatch):
    from lmfast.kernels.adamw import adamw_step

    device = kernel_device()
    params, ms, vs = _state([(8,)], torch.float32, device)
    adamw_step(params, [torch.ones(8, device=device)], ms, vs, step=1, lr=1e-3, **HYPER)
    odd_view = torch.ones(9, device=device)[1:]  # a new grad at an address 4 bytes past a 16-byte boundary
    with pytest.raises(ValueError, match="grads\\[0\\] contiguous, 16-byte aligned"):
        adamw_step(params, [odd_view], ms, vs, step=2, lr=1e-3, **HYPER)


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
    gen = torch.Generator().manual_seed(2)
    dtypes = [torch.float32, torch.bfloat16, torch.float32, torch.float32, torch.bfloat16]
    params = [torch.randn(9, generator=gen).to(device, d) for d in dtypes]
    states = [[torch.zeros(9, device=device) for _ in params] for _ in range(2)]
    grads = [torch.randn(9, generator=gen).to(device, p.dtype) for p in params]
    adamw.adamw_step(params, grads, *states, step=1, lr=1e-3, **HYPER)
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
    from lmfast.train.optim import AdamW

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
