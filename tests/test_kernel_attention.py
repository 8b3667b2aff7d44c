"""The fused causal attention kernel (lmfast.kernels.attention) against the plain-PyTorch references.

Without a GPU the kernels run on CPU tensors through Triton's interpreter in fp32 at small shapes (the
interpreter picks small blocks so these still cover several blocks, the unmasked off-diagonal stage and a
ragged tail); the gpu-marked tests run bf16 at real sizes and under torch.compile.
"""

from __future__ import annotations

import math

import pytest
import torch
from _kernel_utils import HAS_TRITON, TOLERANCES, assert_verbose_allclose, kernel_device, requires_triton

from lmfast import functional

if HAS_TRITON:
    from lmfast.kernels import attention as attn_mod

pytestmark = requires_triton


def _qkv(shape, dtype=torch.float32, device=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    device = device or kernel_device()
    return [torch.randn(shape, generator=gen).to(device=device, dtype=dtype).requires_grad_() for _ in range(3)]


def _forward_backward(fn, q, k, v, grad, **kwargs):
    out = fn(q, k, v, **kwargs)
    return (out, *torch.autograd.grad(out, (q, k, v), grad))


def _assert_matches(fn, expected_fn, shape, dtype=torch.float32, seed=0, **kwargs):
    q, k, v = _qkv(shape, dtype, seed=seed)
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1)).to(q)
    actual = _forward_backward(fn, q, k, v, grad, **kwargs)
    expected = _forward_backward(expected_fn, q, k, v, grad, **kwargs)
    atol, rtol = TOLERANCES[dtype]
    for name, a, e in zip(("out", "dq", "dk", "dv"), actual, expected, strict=True):
        assert_verbose_allclose(a, e, atol=atol, rtol=rtol, name=name)


def _written_out_causal(q, k, v):
    seq = q.shape[-2]
    mask = torch.ones(seq, seq, dtype=torch.bool, device=q.device).tril()
    return functional.scaled_dot_product_attention(q, k, v, mask)


@pytest.mark.parametrize("shape", [
    (2, 3, 67, 32),  # ragged tail: 67 = 2 full 32-row blocks + 3
    (2, 3, 67, 64),
    (1, 2, 64, 128),  # whole blocks only
    (1, 5, 123, 32),  # the odd shape of the style guide
    (2, 1, 1, 64),  # one token: the diagonal block holds a single score
    (1, 2, 13, 32),  # shorter than one block
])
def test_attention_forward_and_gradients_match_causal_attention(shape):
    _assert_matches(attn_mod.attention, functional.causal_attention, shape)


def test_attention_matches_written_out_softmax_with_tril_mask():
    _assert_matches(attn_mod.attention, _written_out_causal, (2, 3, 41, 64), seed=3)


def test_attention_honours_an_explicit_scale():
    _assert_matches(attn_mod.attention, functional.causal_attention, (1, 2, 50, 32), seed=5, scale=0.3)


def test_attention_runs_every_gpu_block_configuration_correctly(monkeypatch):
    # The GPU tables run here under the interpreter too, so a block choice that breaks the kernels' assumptions
    # (BLOCK_N dividing BLOCK_M for the diagonal stage, and the like) fails without a GPU. seq 150 is ragged for
    # every block size in the tables.
    assert set(attn_mod._GPU_CONFIGS) == {"sm80", "sm90"}
    for gen, by_dim in attn_mod._GPU_CONFIGS.items():
        assert set(by_dim) == set(attn_mod.HEAD_DIMS)
        for head_dim, cfgs in by_dim.items():
            monkeypatch.setattr(attn_mod, "_configs", lambda q, cfgs=cfgs: cfgs)
            try:
                _assert_matches(attn_mod.attention, functional.causal_attention, (1, 1, 150, head_dim))
            except AssertionError as e:
                raise AssertionError(f"GPU configuration {gen} head_dim={head_dim} {cfgs}: {e}") from e


def test_attention_accepts_transposed_inputs_and_an_expanded_gradient():
    # q/k/v as views of a (batch, seq, heads, head_dim) projection, and out.sum()'s stride-0 incoming gradient.
    q, k, v = (t.detach().transpose(1, 2).requires_grad_() for t in _qkv((2, 37, 3, 32), seed=7))
    assert not q.is_contiguous()
    grads = torch.autograd.grad(attn_mod.attention(q, k, v).sum(), (q, k, v))
    expected = torch.autograd.grad(functional.causal_attention(q, k, v).sum(), (q, k, v))
    atol, rtol = TOLERANCES[torch.float32]
    for name, a, e in zip(("dq", "dk", "dv"), grads, expected, strict=True):
        assert_verbose_allclose(a, e, atol=atol, rtol=rtol, name=name)


def test_attention_of_an_empty_batch_is_empty():
    q, k, v = _qkv((0, 2, 5, 32))
    out = attn_mod.attention(q, k, v)
    out.sum().backward()
    assert out.shape == (0, 2, 5, 32) and q.grad.shape == q.shape


def test_attention_op_registration_passes_opcheck():
    # Schema, fake (meta) kernel and autograd registration of lmfast::attention, as torch.compile relies on them.
    q, k, v = _qkv((1, 1, 20, 32), seed=9)
    torch.library.opcheck(torch.ops.lmfast.attention.default, (q, k, v, 0.2),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_attention_traces_into_one_graph_under_torch_compile():
    # fullgraph=True fails on any graph break. The "eager" backend runs the captured graph as it is: the AOT pass of
    # the other backends runs the op's body on fake tensors, and under the interpreter wrap_triton hands back the
    # raw (interpreted) kernel, which cannot launch on them. Inductor is covered by the gpu test below.
    q, k, v = _qkv((1, 2, 40, 32), seed=11)
    grad = torch.randn(1, 2, 40, 32, generator=torch.Generator().manual_seed(12))
    step = torch.compile(lambda q, k, v: attn_mod.attention(q * 2.0, k, v), backend="eager", fullgraph=True)
    actual = _forward_backward(step, q, k, v, grad)
    expected = _forward_backward(lambda q, k, v: functional.causal_attention(q * 2.0, k, v), q, k, v, grad)
    atol, rtol = TOLERANCES[torch.float32]
    for name, a, e in zip(("out", "dq", "dk", "dv"), actual, expected, strict=True):
        assert_verbose_allclose(a, e, atol=atol, rtol=rtol, name=name)


@pytest.mark.parametrize("make, match", [
    (lambda: _qkv((3, 16, 32)), "shape \\(batch, heads, seq, head_dim\\)"),
    (lambda: [*_qkv((1, 2, 16, 32))[:2], torch.randn(1, 2, 17, 32)], "one shape"),
    (lambda: _qkv((1, 2, 16, 48)), "head_dim must be one of 32, 64, 128, got head_dim=48"),
    (lambda: _qkv((1, 2, 16, 256)), "head_dim=256"),
    (lambda: _qkv((1, 2, 16, 32), dtype=torch.float64), "dtype torch.float64"),
    (lambda: [*_qkv((1, 2, 16, 32))[:2], torch.zeros(1, 2, 16, 32, dtype=torch.int32)], "v has dtype torch.int32"),
    (lambda: [*_qkv((1, 2, 16, 32))[:2], torch.zeros(1, 2, 16, 32, dtype=torch.float16)], "share a dtype"),
    (lambda: _qkv((65536, 1, 1, 32)), "batch \\* heads must be at most 65535"),
])
def test_attention_rejects_bad_inputs_with_a_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        attn_mod.attention(*make())


# ---------------------------------------------------------------- GPU: bf16 at real sizes, torch.compile


def _assert_as_close_as_reference(actual, reference, exact, name):
    """``actual`` (bf16 kernel) is within twice the error of ``reference`` (bf16 PyTorch) from ``exact`` (fp32)."""
    ref_err = (reference.float() - exact).abs().max().item()
    atol = 2 * ref_err + TOLERANCES[torch.bfloat16][0]
    assert_verbose_allclose(actual.float(), exact, atol=atol, rtol=0.0, name=f"{name} (reference error {ref_err:.3g})")


@pytest.mark.gpu
@pytest.mark.parametrize("seq, head_dim", [(1024, 64), (1031, 128), (4096, 64), (2048, 128)])
def test_attention_matches_reference_in_bf16_at_real_sizes(seq, head_dim):
    shape = (2, 4, seq, head_dim)
    q, k, v = _qkv(shape, torch.bfloat16, device="cuda")
    grad = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
    actual = _forward_backward(attn_mod.attention, q, k, v, grad)
    reference = _forward_backward(functional.causal_attention, q, k, v, grad)
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    exact = _forward_backward(functional.causal_attention, q32, k32, v32, grad.float())
    for name, a, r, e in zip(("out", "dq", "dk", "dv"), actual, reference, exact, strict=True):
        _assert_as_close_as_reference(a, r, e, name)


@pytest.mark.gpu
def test_attention_backward_is_deterministic_on_gpu():
    q, k, v = _qkv((2, 4, 2048, 64), torch.bfloat16, device="cuda")
    grad = torch.randn_like(q)
    first = _forward_backward(attn_mod.attention, q, k, v, grad)
    second = _forward_backward(attn_mod.attention, q, k, v, grad)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


@pytest.mark.gpu
def test_attention_under_torch_compile_fullgraph_matches_eager():
    q, k, v = _qkv((2, 4, 1024, 128), torch.bfloat16, device="cuda")
    grad = torch.randn_like(q)

    def step(q, k, v):
        return attn_mod.attention(q * 1.0, k, v, scale=1 / math.sqrt(q.shape[-1]))

    compiled = torch.compile(step, fullgraph=True)
    actual = _forward_backward(compiled, q, k, v, grad)
    expected = _forward_backward(step, q, k, v, grad)
    atol, rtol = TOLERANCES[torch.bfloat16]
    for name, a, e in zip(("out", "dq", "dk", "dv"), actual, expected, strict=True):
        assert_verbose_allclose(a, e, atol=atol, rtol=rtol, name=name)
