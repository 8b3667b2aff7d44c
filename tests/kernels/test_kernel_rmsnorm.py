"""The fused RMSNorm kernel equals lmfast.model.functional.rmsnorm, forward and backward.

Without a GPU the kernel runs on CPU tensors through Triton's interpreter (tests/conftest.py), so shapes stay
small; the ``gpu`` tests repeat the comparison at model sizes and under torch.compile.
"""

from __future__ import annotations

import pytest
import torch
from _kernel_utils import TOLERANCES, assert_verbose_allclose, kernel_device, requires_triton

from lmfast.model import functional

pytestmark = requires_triton


def _compare(shape, dtype, weight_dtype=torch.float32, eps=1e-5, device=None, make_x=None):
    from lmfast.kernels.rmsnorm import rmsnorm

    device = device or kernel_device()
    gen = torch.Generator().manual_seed(0)
    x = (make_x(gen) if make_x else torch.randn(shape, generator=gen)).to(device, dtype)
    w = (1.0 + 0.1 * torch.randn(x.shape[-1], generator=gen)).to(device, weight_dtype)
    dy = torch.randn(x.shape, generator=gen).to(device, dtype)
    xf, wf = x.clone().requires_grad_(), w.clone().requires_grad_()
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = rmsnorm(xf, wf, eps)
    y_ref = functional.rmsnorm(xr, wr, eps)
    y.backward(dy)
    y_ref.backward(dy)
    atol, rtol = TOLERANCES[dtype]
    assert y.dtype == dtype and wf.grad.dtype == weight_dtype
    assert_verbose_allclose(y, y_ref, atol, rtol, name="y")
    assert_verbose_allclose(xf.grad, xr.grad, atol, rtol, name="dx")
    # dw sums over every row: compare relative to its size (fp32 partials vs the reference's own reduction).
    w_atol, w_rtol = TOLERANCES[weight_dtype if weight_dtype != torch.float32 else dtype]
    assert_verbose_allclose(wf.grad, wr.grad, w_atol * x.numel() ** 0.5 / 10, w_rtol, name="dw")


@pytest.mark.parametrize(
    "shape, dtype",
    [((5, 123, 123), torch.float32), ((3, 7, 33), torch.float16), ((4, 256), torch.bfloat16), ((6, 1), torch.float32)],
)
def test_rmsnorm_forward_and_backward_match_reference(shape, dtype):
    _compare(shape, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_rmsnorm_of_small_inputs_adds_eps_inside_the_square_root(dtype):
    # At |x| ~ 1e-3, mean(x^2) ~ 1e-6 is a tenth of eps, so 1/sqrt(mean + eps) and 1/(sqrt(mean) + eps) differ
    # threefold; on randn-sized inputs the two agree to 1e-5 and a misplaced eps passes unseen.
    _compare((4, 7, 96), dtype, make_x=lambda gen: torch.randn(4, 7, 96, generator=gen) * 1e-3)
    x = torch.full((1, 96), 1e-3, device=kernel_device(), dtype=dtype)
    from lmfast.kernels.rmsnorm import rmsnorm

    y = rmsnorm(x, torch.ones(96, device=kernel_device()), 1e-5)
    expected = 1e-3 / (1e-6 + 1e-5) ** 0.5  # eps inside: 0.3015; outside it would be 1e-3 / (1e-3 + 1e-5) = 0.990
    assert_verbose_allclose(y, torch.full_like(y, expected), *TOLERANCES[dtype], name="y")


def test_rmsnorm_with_half_precision_weight_matches_reference():
    _compare((4, 19), torch.bfloat16, weight_dtype=torch.bfloat16)


def test_rmsnorm_accepts_non_contiguous_input_and_expanded_incoming_gradient():
    from lmfast.kernels.rmsnorm import rmsnorm

    x = torch.randn(24, 5, device=kernel_device()).t()  # (5, 24) with strides (1, 5)
    w = torch.randn(24, device=kernel_device())
    xf, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    assert not xf.is_contiguous()
    rmsnorm(xf, w).sum().backward()  # sum's gradient is a stride-0 expanded tensor
    functional.rmsnorm(xr, w).sum().backward()
    assert_verbose_allclose(xf.grad, xr.grad, *TOLERANCES[torch.float32], name="dx")


@pytest.mark.gpu
def test_rmsnorm_weight_gradient_is_bitwise_deterministic():
    # GPU only: the interpreter runs programs one after another, so it cannot show an order-dependent reduction.
    # Here many programs (8 per SM) each reduce a run of rows, as the kernel does at model sizes.
    from lmfast.kernels.rmsnorm import rmsnorm

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(16384, 768, generator=gen).to("cuda", torch.bfloat16)
    dy = torch.randn(16384, 768, generator=gen).to("cuda", torch.bfloat16)
    grads = []
    for _ in range(3):
        w = torch.ones(768, device="cuda", requires_grad=True)
        rmsnorm(x, w).backward(dy)
        grads.append(w.grad)
    assert torch.equal(grads[0], grads[1]) and torch.equal(grads[0], grads[2])


@pytest.mark.parametrize(
    "x_shape, w_shape, dtype, match",
    [
        ((4, 8), (8,), torch.int32, "x has dtype torch.int32"),
        ((4, 8), (7,), torch.float32, "weight of shape"),
        ((2, 16385), (16385,), torch.float32, "hidden sizes up to 16384"),
    ],
)
def test_rmsnorm_rejects_unsupported_inputs_with_a_value_error(x_shape, w_shape, dtype, match):
    from lmfast.kernels.rmsnorm import rmsnorm

    x = torch.ones(x_shape, dtype=dtype, device=kernel_device())
    with pytest.raises(ValueError, match=match):
        rmsnorm(x, torch.ones(w_shape, device=kernel_device()))


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(8, 1024, 768), (2, 512, 4096), (64, 16384), (3, 77, 1000)])
def test_rmsnorm_matches_reference_on_gpu_at_model_sizes(shape):
    _compare(shape, torch.bfloat16, device="cuda")
    _compare(shape, torch.float32, device="cuda")


@pytest.mark.gpu
def test_rmsnorm_compiles_without_graph_breaks_and_matches_eager():
    from lmfast.kernels.rmsnorm import rmsnorm

    x = torch.randn(4, 128, 768, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(768, device="cuda", requires_grad=True)
    compiled = torch.compile(lambda a, b: rmsnorm(a, b) * 2.0, fullgraph=True)
    y = compiled(x, w)
    y.float().square().sum().backward()
    dx, dw = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    y_eager = rmsnorm(x, w) * 2.0
    y_eager.float().square().sum().backward()
    atol, rtol = TOLERANCES[torch.bfloat16]
    assert_verbose_allclose(y, y_eager, atol, rtol, name="y")
    assert_verbose_allclose(x.grad, dx, atol, rtol, name="dx")
    assert_verbose_allclose(w.grad, dw, atol * 10, rtol, name="dw")
