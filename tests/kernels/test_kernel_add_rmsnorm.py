"""The fused add + RMSNorm kernel (lmfast.kernels.add_rmsnorm) equals functional.add_rmsnorm, forward and backward.

Under the interpreter at small shapes; the dtype combinations a model makes: a bf16/fp16 branch output on an fp32
residual stream with y in the branch dtype (autocast), everything in one dtype, and y in another dtype than h.
"""

from __future__ import annotations

import pytest
import torch
from _kernel_utils import TOLERANCES, assert_verbose_allclose, kernel_device, requires_triton

from lmfast.model import functional

pytestmark = requires_triton


def _inputs(shape, x_dtype, r_dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen).to(kernel_device(), x_dtype)
    r = torch.randn(shape, generator=gen).to(kernel_device(), r_dtype)
    w = (1.0 + 0.1 * torch.randn(shape[-1], generator=gen)).to(kernel_device())
    return x, r, w


def _run(fn, x, r, w, dh, dy, out_dtype):
    x, r, w = (t.detach().clone().requires_grad_() for t in (x, r, w))
    h, y = fn(x, r, w, 1e-5, out_dtype)
    torch.autograd.backward((h, y), (dh, dy))
    return h, y, x.grad, r.grad, w.grad


@pytest.mark.parametrize("shape, x_dtype, r_dtype, out_dtype", [
    ((5, 123, 123), torch.float32, torch.float32, None),  # the odd shape, all fp32
    ((3, 7, 96), torch.bfloat16, torch.float32, torch.bfloat16),  # autocast: bf16 branch, fp32 residual stream
    ((3, 7, 96), torch.float16, torch.float32, torch.float16),
    ((4, 33), torch.float16, torch.float16, None),  # one half dtype throughout
    ((2, 300), torch.float32, torch.float32, torch.float16),  # y in another dtype than h
    ((6, 1), torch.float32, torch.float32, None),
])
def test_add_rmsnorm_forward_and_backward_match_reference(shape, x_dtype, r_dtype, out_dtype):
    from lmfast.kernels.add_rmsnorm import add_rmsnorm

    x, r, w = _inputs(shape, x_dtype, r_dtype)
    h_dtype = torch.promote_types(x_dtype, r_dtype)
    gen = torch.Generator().manual_seed(1)
    dh = torch.randn(shape, generator=gen).to(kernel_device(), h_dtype)
    dy = torch.randn(shape, generator=gen).to(kernel_device(), out_dtype or h_dtype)
    actual = _run(add_rmsnorm, x, r, w, dh, dy, out_dtype)
    expected = _run(functional.add_rmsnorm, x, r, w, dh, dy, out_dtype)
    low = max((x_dtype, r_dtype, out_dtype or h_dtype), key=lambda d: TOLERANCES[d][0])
    for name, a, e in zip(("h", "y", "dx", "dresidual", "dw"), actual, expected, strict=True):
        assert a.dtype == e.dtype, name
        atol, rtol = TOLERANCES[low]
        if name == "dw":  # a sum over every row: relative to its size, as in test_kernel_rmsnorm.py
            atol = atol * x.numel() ** 0.5 / 10
        assert_verbose_allclose(a, e, atol, rtol, name=name)


def test_add_rmsnorm_sum_is_exactly_the_residual_add():
    from lmfast.kernels.add_rmsnorm import add_rmsnorm

    x, r, w = _inputs((4, 64), torch.bfloat16, torch.float32)
    h, _ = add_rmsnorm(x, r, w)
    assert h.dtype == torch.float32 and torch.equal(h, r + x)


def test_add_rmsnorm_gradients_of_x_and_residual_are_the_one_merged_gradient():
    from lmfast.kernels.add_rmsnorm import add_rmsnorm

    x, r, w = (t.requires_grad_() for t in _inputs((3, 5, 40), torch.float32, torch.float32))
    h, y = add_rmsnorm(x, r, w)
    (h.sum() + (y * y).sum()).backward()
    assert torch.equal(x.grad, r.grad)


def test_add_rmsnorm_op_registration_passes_opcheck():
    x, r, w = (t.requires_grad_() for t in _inputs((3, 40), torch.float16, torch.float32))
    torch.library.opcheck(torch.ops.lmfast.add_rmsnorm.default, (x, r, w, 1e-5, torch.float16),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


@pytest.mark.parametrize("make, match", [
    (lambda: (torch.ones(2, 8), torch.ones(2, 9), torch.ones(8)), "x and residual of one shape"),
    (lambda: (torch.ones(2, 8), torch.ones(2, 8), torch.ones(9)), "weight of shape"),
    (lambda: (torch.ones(2, 8, dtype=torch.int32), torch.ones(2, 8), torch.ones(8)), "x has dtype torch.int32"),
])
def test_add_rmsnorm_rejects_bad_inputs_with_a_value_error(make, match):
    from lmfast.kernels.add_rmsnorm import add_rmsnorm

    with pytest.raises(ValueError, match=match):
        add_rmsnorm(*(t.to(kernel_device()) for t in make()))


@pytest.mark.gpu
@pytest.mark.parametrize("rows, d", [(16384, 768), (8192, 4096), (77, 1000)])
def test_add_rmsnorm_matches_reference_on_gpu_at_model_sizes(rows, d):
    from lmfast.kernels.add_rmsnorm import add_rmsnorm

    x, r, w = _inputs((rows, d), torch.bfloat16, torch.float32)
    dh = torch.randn(rows, d, device="cuda")
    dy = torch.randn(rows, d, device="cuda", dtype=torch.bfloat16)
    actual = _run(add_rmsnorm, x, r, w, dh, dy, torch.bfloat16)
    expected = _run(functional.add_rmsnorm, x, r, w, dh, dy, torch.bfloat16)
    for name, a, e in zip(("h", "y", "dx", "dresidual", "dw"), actual, expected, strict=True):
        atol, rtol = TOLERANCES[torch.bfloat16]
        assert_verbose_allclose(a, e, atol * (rows ** 0.5 if name == "dw" else 1), rtol, name=name)
