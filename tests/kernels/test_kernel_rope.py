"""The fused RoPE kernel equals lmfast.model.functional.rope on q and k together, forward and backward.

Without a GPU the kernel runs on CPU tensors through Triton's interpreter (tests/conftest.py), so shapes stay
small; the ``gpu`` tests repeat the comparison at model sizes and under torch.compile.
"""

from __future__ import annotations

import pytest
import torch
from _kernel_utils import TOLERANCES, assert_verbose_allclose, kernel_device, requires_triton

from lmfast.model import functional

pytestmark = requires_triton


def _inputs(batch, heads_q, heads_k, seq, head_dim, dtype, per_batch=False, transposed=False, device=None):
    device = device or kernel_device()
    gen = torch.Generator().manual_seed(0)
    if transposed:  # the model's layout: (B, T, H, D) viewed as (B, H, T, D)
        q = torch.randn(batch, seq, heads_q, head_dim, generator=gen).to(device, dtype).transpose(1, 2)
    else:
        q = torch.randn(batch, heads_q, seq, head_dim, generator=gen).to(device, dtype)
    k = torch.randn(batch, heads_k, seq, head_dim, generator=gen).to(device, dtype)
    positions = torch.randint(0, 4096, (batch, seq), generator=gen) if per_batch else torch.arange(seq)
    cos, sin = functional.rope_cos_sin(10000.0, head_dim, positions.to(device))
    return q, k, cos, sin


def _compare(q, k, cos, sin):
    from lmfast.kernels.rope import rope

    gen = torch.Generator().manual_seed(1)
    dq = torch.randn(q.shape, generator=gen).to(q.device, q.dtype)
    dk = torch.randn(k.shape, generator=gen).to(k.device, k.dtype)
    qf, kf = q.clone().requires_grad_(), k.clone().requires_grad_()
    qr, kr = q.clone().requires_grad_(), k.clone().requires_grad_()
    q_out, k_out = rope(qf, kf, cos, sin)
    q_ref, k_ref = functional.rope(qr, kr, cos, sin)
    torch.autograd.backward((q_out, k_out), (dq, dk))
    torch.autograd.backward((q_ref, k_ref), (dq, dk))
    atol, rtol = TOLERANCES[q.dtype]
    assert q_out.dtype == q.dtype and k_out.dtype == k.dtype
    assert_verbose_allclose(q_out, q_ref, atol, rtol, name="q_rot")
    assert_verbose_allclose(k_out, k_ref, atol, rtol, name="k_rot")
    assert_verbose_allclose(qf.grad, qr.grad, atol, rtol, name="dq")
    assert_verbose_allclose(kf.grad, kr.grad, atol, rtol, name="dk")


@pytest.mark.parametrize(
    "batch, heads_q, heads_k, seq, head_dim, dtype",
    [
        (2, 3, 3, 67, 10, torch.float32),  # odd seq, head dim not a power of two
        (1, 4, 2, 9, 64, torch.bfloat16),  # fewer k heads than q heads
        (2, 2, 2, 5, 2, torch.float16),  # the smallest head dim
    ],
)
def test_rope_forward_and_backward_match_reference(batch, heads_q, heads_k, seq, head_dim, dtype):
    _compare(*_inputs(batch, heads_q, heads_k, seq, head_dim, dtype))


def test_rope_with_per_batch_positions_and_strided_queries_matches_reference():
    q, k, cos, sin = _inputs(2, 3, 3, 7, 16, torch.float32, per_batch=True, transposed=True)
    assert cos.shape == (2, 7, 8) and not q.is_contiguous()
    _compare(q, k, cos, sin)


def test_rope_backward_of_forward_is_the_identity():
    from lmfast.kernels.rope import rope_bwd, rope_fwd

    q, k, cos, sin = _inputs(1, 2, 2, 11, 12, torch.float32)
    q_rot, k_rot = rope_fwd(q, k, cos, sin)
    q_back, k_back = rope_bwd(q_rot, k_rot, cos, sin)  # rotation by -angle undoes rotation by +angle
    assert_verbose_allclose(q_back, q, 1e-5, 1e-5, name="q")
    assert_verbose_allclose(k_back, k, 1e-5, 1e-5, name="k")


@pytest.mark.parametrize(
    "q_shape, cos_shape, cos_dtype, match",
    [
        ((1, 2, 4, 7), (4, 3), torch.float32, "even head_dim"),
        ((1, 2, 4, 8), (5, 4), torch.float32, "cos and sin of shape"),
        ((1, 2, 4, 8), (4, 4), torch.bfloat16, "cos has dtype torch.bfloat16"),
        ((2, 4, 8), (4, 4), torch.float32, r"\(batch, heads, seq, head_dim\)"),
    ],
)
def test_rope_rejects_unsupported_inputs_with_a_value_error(q_shape, cos_shape, cos_dtype, match):
    from lmfast.kernels.rope import rope

    q = torch.ones(q_shape, device=kernel_device())
    cos = torch.ones(cos_shape, dtype=cos_dtype, device=kernel_device())
    with pytest.raises(ValueError, match=match):
        rope(q, q, cos, cos)


@pytest.mark.gpu
@pytest.mark.parametrize("batch, heads, seq, head_dim", [(8, 12, 1024, 64), (2, 32, 2048, 128), (3, 5, 77, 6)])
def test_rope_matches_reference_on_gpu_at_model_sizes(batch, heads, seq, head_dim):
    _compare(*_inputs(batch, heads, heads, seq, head_dim, torch.bfloat16, transposed=True, device="cuda"))
    _compare(*_inputs(batch, heads, heads, seq, head_dim, torch.float32, per_batch=True, device="cuda"))


@pytest.mark.gpu
def test_rope_compiles_without_graph_breaks_and_matches_eager():
    from lmfast.kernels.rope import rope

    q, k, cos, sin = _inputs(2, 4, 4, 128, 64, torch.bfloat16, transposed=True, device="cuda")
    q.requires_grad_()
    compiled = torch.compile(lambda a, b: [t * 2.0 for t in rope(a, b, cos, sin)], fullgraph=True)
    q_out, k_out = compiled(q, k)
    (q_out.float().square().sum() + k_out.float().sum()).backward()
    dq = q.grad.clone()
    q.grad = None
    q_eager, k_eager = (t * 2.0 for t in rope(q, k, cos, sin))
    (q_eager.float().square().sum() + k_eager.float().sum()).backward()
    atol, rtol = TOLERANCES[torch.bfloat16]
    assert_verbose_allclose(q_out, q_eager, atol, rtol, name="q_rot")
    assert_verbose_allclose(k_out, k_eager, atol, rtol, name="k_rot")
    assert_verbose_allclose(q.grad, dq, atol, rtol, name="dq")
