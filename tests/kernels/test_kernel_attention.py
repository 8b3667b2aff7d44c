"""The fused causal attention kernel (lmfast.kernels.attention) against the plain-PyTorch references.

Without a GPU the kernels run on CPU tensors through Triton's interpreter at small shapes (the interpreter picks
small blocks so these still cover several blocks, the unmarked off-diagonal stage and a ragged tail). The kernel
refuses fp32 on CUDA (tl.dot would round it to tf32), so every unmarked test takes its dtype from the ``dtype``
fixture: on a GPU fp16, and under the interpreter both fp32 (exact tolerances) and fp16 with CUDA's dtype rule
forced, which is how these tests run on a GPU. bf16 runs on a GPU only: the interpreter's bf16 ``tl.dot`` is
wrong (triton issue 11584). The gpu-marked tests run bf16 at real sizes and under torch.compile.
"""

from __future__ import annotations

import math

import pytest
import torch
from _kernel_utils import (
    HAS_TRITON,
    TOLERANCES,
    assert_verbose_allclose,
    force_cuda_attention_dtypes,
    kernel_device,
    requires_triton,
)

from lmfast.model import functional

if HAS_TRITON:
    from lmfast.kernels import _attention_configs as configs
    from lmfast.kernels import attention as attn_mod

pytestmark = requires_triton

# The half-precision kernel rounds P to fp16 for the tensor-core P.V product, as on a GPU: ~1e-3 of the output.
ATTENTION_TOLERANCES = {**TOLERANCES, torch.float16: (4e-3, 4e-3)}
DTYPES = [torch.float16] if torch.cuda.is_available() else [torch.float32, torch.float16]
EXACT = DTYPES[0]  # the most exact dtype the kernel takes where the tests run: fp32 under the interpreter


@pytest.fixture(params=DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def dtype(request, monkeypatch):
    """The dtype a test runs in; under the interpreter fp16 runs with CUDA's dtype rule (fp16/bf16 only)."""
    if request.param != torch.float32 and kernel_device() == "cpu":
        force_cuda_attention_dtypes(monkeypatch)
    return request.param


def _qkv(shape, dtype, device=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    device = device or kernel_device()
    return [torch.randn(shape, generator=gen).to(device=device, dtype=dtype).requires_grad_() for _ in range(3)]


def _forward_backward(fn, q, k, v, grad, **kwargs):
    out = fn(q, k, v, **kwargs)
    return (out, *torch.autograd.grad(out, (q, k, v), grad))


def _exact(fn, q, k, v, grad, **kwargs):
    """``fn``'s output and gradients in fp32 from the same (possibly half-precision) inputs."""
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    return _forward_backward(fn, q32, k32, v32, grad.float(), **kwargs)


def _assert_matches(fn, expected_fn, shape, dtype, seed=0, **kwargs):
    q, k, v = _qkv(shape, dtype, seed=seed)
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1)).to(q)
    actual = _forward_backward(fn, q, k, v, grad, **kwargs)
    expected = _exact(expected_fn, q, k, v, grad, **kwargs)
    atol, rtol = ATTENTION_TOLERANCES[dtype]
    for name, a, e in zip(("out", "dq", "dk", "dv"), actual, expected, strict=True):
        assert a.dtype == dtype
        assert_verbose_allclose(a, e, atol=atol, rtol=rtol, name=name)


def _written_out_causal(q, k, v, scale=None):
    """softmax(scale Q K^T masked to j <= i) V, written out (CPU SDPA returns NaN for a scale <= 0)."""
    seq = q.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    mask = torch.ones(seq, seq, dtype=torch.bool, device=q.device).tril()
    scores = (q @ k.transpose(-2, -1) * scale).masked_fill(~mask, float("-inf"))
    return functional.softmax(scores, dim=-1) @ v


@pytest.mark.parametrize("shape", [
    (2, 3, 67, 32),  # ragged tail: 67 = 2 full 32-row blocks + 3
    (2, 3, 67, 64),
    (1, 2, 64, 128),  # whole blocks only
    (1, 5, 123, 32),  # the odd shape of the style guide
    (2, 1, 1, 64),  # one token: the diagonal block holds a single score
    (1, 2, 13, 32),  # shorter than one block
])
def test_attention_forward_and_gradients_match_causal_attention(shape, dtype):
    _assert_matches(attn_mod.attention, functional.causal_attention, shape, dtype)


# Every padded and masked size under the interpreter; on a GPU (a cold compile of four kernels each) only those the
# bf16 test at real sizes below does not run: the smallest, one masked in 64, one over 128, and 256 exact.
HEAD_DIMS = [2, 48, 130, 256] if torch.cuda.is_available() else [2, 16, 24, 48, 80, 96, 130, 256]


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_attention_takes_every_head_dim_up_to_256_padded_and_masked(head_dim):
    # 16 and 256 are exact powers of two; the others run padded to the next one with the extra columns masked.
    _assert_matches(attn_mod.attention, functional.causal_attention, (1, 2, 37, head_dim), EXACT, seed=2)


def test_attention_matches_written_out_softmax_with_tril_mask(dtype):
    _assert_matches(attn_mod.attention, _written_out_causal, (2, 3, 41, 64), dtype, seed=3)


@pytest.mark.parametrize("scale", [0.3, 0.0, -0.3])
def test_attention_honours_an_explicit_scale_of_any_sign(scale):
    _assert_matches(attn_mod.attention, _written_out_causal, (1, 2, 50, 32), EXACT, seed=5, scale=scale)


def test_attention_with_a_negative_scale_stays_finite_on_large_scores():
    # This gave NaN: the forward took max(qk) * scale as the row max, which is the min when scale < 0, and with
    # scores this large exp2(score - min) overflows. The reference runs in fp64 (near one-hot rows cancel).
    q, k, v = (t.detach().mul(4.0).requires_grad_() for t in _qkv((1, 2, 50, 32), EXACT, seed=6))
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(7)).to(q)
    actual = _forward_backward(attn_mod.attention, q, k, v, grad, scale=-0.3)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    expected = _forward_backward(_written_out_causal, q64, k64, v64, grad.double(), scale=-0.3)
    atol, rtol = (1e-4, 1e-4) if EXACT == torch.float32 else ATTENTION_TOLERANCES[EXACT]
    for name, a, e in zip(("out", "dq", "dk", "dv"), actual, expected, strict=True):
        assert torch.isfinite(a).all(), name
        assert_verbose_allclose(a, e, atol=atol, rtol=rtol, name=name)


def test_attention_runs_every_gpu_block_configuration_correctly_in_fp16(monkeypatch):
    # The GPU tables run here under the interpreter, in fp16 as on a GPU, so a block choice that breaks the kernels'
    # assumptions (BLOCK_N dividing BLOCK_M for the diagonal stage, and the like) fails without a GPU. Each padded
    # head dim runs exact and (below it) masked; seq 150 is ragged for every block size in the tables.
    # On a GPU, its own generation's table: that is what a GPU adds (each entry compiled for real), and the other
    # table's entries, compiled for this GPU, would be different kernels from those that generation runs.
    force_cuda_attention_dtypes(monkeypatch)
    assert set(configs.GPU_CONFIGS) == {"sm80", "sm90"}
    tables = ([configs.generation(torch.device("cuda"))] if kernel_device() == "cuda" else list(configs.GPU_CONFIGS))
    seen = set()
    for gen, by_dim in ((g, configs.GPU_CONFIGS[g]) for g in tables):
        assert set(by_dim) == set(configs.PADDED_HEAD_DIMS)
        for padded, cfgs in by_dim.items():
            monkeypatch.setattr(attn_mod, "_configs", lambda q, cfgs=cfgs: cfgs)
            for head_dim in (padded, padded - 6):
                if (cfgs, head_dim) in seen:
                    continue
                seen.add((cfgs, head_dim))
                try:
                    _assert_matches(attn_mod.attention, functional.causal_attention, (1, 1, 150, head_dim),
                                    torch.float16)
                except AssertionError as e:
                    raise AssertionError(f"GPU configuration {gen} head_dim={head_dim} {cfgs}: {e}") from e
    assert len(seen) >= 2 * len(configs.PADDED_HEAD_DIMS)


def test_every_tuning_candidate_keeps_the_block_divisibility_the_kernels_assume():
    # A GPU lease times these against the shipped table (benchmarks/attention_configs.py); the fastest may be
    # shipped, so each must be a choice the kernels are correct for: the divisibility of the Configs fields.
    found = [(gen, head_dim, pass_, c) for gen, by_dim in configs.TUNING_CANDIDATES.items()
             for head_dim, by_pass in by_dim.items() for pass_, cs in by_pass.items() for c in cs]
    assert found and {(gen, d) for gen, d, _, _ in found} <= {(g, d) for g in configs.GPU_CONFIGS for d in (64, 128)}
    for gen, head_dim, pass_, c in found:
        small, big = (c.block_m, c.block_n) if pass_ == "dkdv" else (c.block_n, c.block_m)
        assert big % small == 0 and c.num_warps in (4, 8), (gen, head_dim, pass_, c)


def test_attention_accepts_transposed_inputs_and_an_expanded_gradient(dtype):
    # q/k/v as views of a (batch, seq, heads, head_dim) projection, and out.sum()'s stride-0 incoming gradient.
    q, k, v = (t.detach().transpose(1, 2).requires_grad_() for t in _qkv((2, 37, 3, 32), dtype, seed=7))
    assert not q.is_contiguous()
    grads = torch.autograd.grad(attn_mod.attention(q, k, v).sum(), (q, k, v))
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    expected = torch.autograd.grad(functional.causal_attention(q32, k32, v32).sum(), (q32, k32, v32))
    atol, rtol = ATTENTION_TOLERANCES[dtype]
    for name, a, e in zip(("dq", "dk", "dv"), grads, expected, strict=True):
        assert_verbose_allclose(a, e, atol=atol, rtol=rtol, name=name)


def test_attention_of_an_empty_batch_is_empty(dtype):
    q, k, v = _qkv((0, 2, 5, 32), dtype)
    out = attn_mod.attention(q, k, v)
    out.sum().backward()
    assert out.shape == (0, 2, 5, 32) and q.grad.shape == q.shape


def test_attention_op_registration_passes_opcheck(dtype):
    # Schema, fake (meta) kernel and autograd registration of lmfast::attention, as torch.compile relies on them.
    q, k, v = _qkv((1, 1, 20, 32), dtype, seed=9)
    torch.library.opcheck(torch.ops.lmfast.attention.default, (q, k, v, 0.2),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_attention_traces_into_one_graph_under_torch_compile(dtype):
    # fullgraph=True fails on any graph break. The "eager" backend runs the captured graph as it is: the AOT pass of
    # the other backends runs the op's body on fake tensors, and under the interpreter wrap_triton hands back the
    # raw (interpreted) kernel, which cannot launch on them. Inductor is covered by the gpu test below.
    q, k, v = _qkv((1, 2, 40, 32), dtype, seed=11)
    grad = torch.randn(1, 2, 40, 32, generator=torch.Generator().manual_seed(12)).to(q)
    step = torch.compile(lambda q, k, v: attn_mod.attention(q * 2.0, k, v), backend="eager", fullgraph=True)
    actual = _forward_backward(step, q, k, v, grad)
    expected = _exact(lambda q, k, v: functional.causal_attention(q * 2.0, k, v), q, k, v, grad)
    atol, rtol = ATTENTION_TOLERANCES[dtype]
    for name, a, e in zip(("out", "dq", "dk", "dv"), actual, expected, strict=True):
        assert_verbose_allclose(a, e, atol=atol, rtol=rtol, name=name)


@pytest.mark.parametrize("make, match", [
    (lambda dt: _qkv((3, 16, 32), dt), "shape \\(batch, heads, seq, head_dim\\)"),
    (lambda dt: [*_qkv((1, 2, 16, 32), dt)[:2], torch.randn(1, 2, 17, 32).to(kernel_device(), dt)], "one shape"),
    (lambda dt: _qkv((1, 2, 16, 258), dt), "head_dim must be at most 256, got head_dim=258"),
    (lambda dt: _qkv((1, 2, 16, 32), torch.float64), "dtype torch.float64"),
    (lambda dt: [*_qkv((1, 2, 16, 32), dt)[:2], torch.zeros(1, 2, 16, 32, dtype=torch.int32, device=kernel_device())],
     "v has dtype torch.int32"),
    (lambda dt: [*_qkv((1, 2, 16, 32), dt)[:2], torch.zeros(1, 2, 16, 32, dtype=torch.bfloat16,
                                                              device=kernel_device())], "share a dtype"),
    (lambda dt: _qkv((65536, 1, 1, 32), dt), "batch \\* heads must be at most 65535"),
])
def test_attention_rejects_bad_inputs_with_a_value_error(make, match, dtype):
    with pytest.raises(ValueError, match=match):
        attn_mod.attention(*make(dtype))


def test_attention_refuses_fp32_under_the_cuda_dtype_rule(monkeypatch):
    # On a GPU tl.dot rounds fp32 to tf32; the fused backend sends fp32 to SDPA instead (test_backend_dispatch.py).
    force_cuda_attention_dtypes(monkeypatch)
    with pytest.raises(ValueError, match="q has dtype torch.float32; allowed: float16, bfloat16"):
        attn_mod.attention(*_qkv((1, 2, 16, 32), torch.float32))


# ---------------------------------------------------------------- GPU: bf16 at real sizes, torch.compile


def _assert_as_close_as_reference(actual, reference, exact, name):
    """``actual`` (bf16 kernel) is within twice the error of ``reference`` (bf16 PyTorch) from ``exact`` (fp32)."""
    ref_err = (reference.float() - exact).abs().max().item()
    atol = 2 * ref_err + TOLERANCES[torch.bfloat16][0]
    assert_verbose_allclose(actual.float(), exact, atol=atol, rtol=0.0, name=f"{name} (reference error {ref_err:.3g})")


# One shape per table of the GPU's generation, at real sizes in bf16 (which the interpreter cannot run): 64 and 128
# exact (one sequence ragged), 16 and 32, and 96 and 200 masked inside 128 and 256. Every other head dim runs in fp16
# above, on a GPU too.
@pytest.mark.gpu
@pytest.mark.parametrize("seq, head_dim", [(2048, 64), (1031, 128), (1024, 32), (777, 16), (1000, 96), (300, 200)])
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
@pytest.mark.parametrize("backend", ["inductor", "aot_eager"])
def test_attention_under_torch_compile_fullgraph_matches_eager(backend):
    # Both AOT-autograd backends, which the interpreter cannot run (see the eager-backend test above).
    q, k, v = _qkv((2, 4, 1024, 128), torch.bfloat16, device="cuda")
    grad = torch.randn_like(q)

    def step(q, k, v):
        return attn_mod.attention(q * 1.0, k, v, scale=1 / math.sqrt(q.shape[-1]))

    compiled = torch.compile(step, fullgraph=True, backend=backend)
    actual = _forward_backward(compiled, q, k, v, grad)
    expected = _forward_backward(step, q, k, v, grad)
    atol, rtol = TOLERANCES[torch.bfloat16]
    for name, a, e in zip(("out", "dq", "dk", "dv"), actual, expected, strict=True):
        assert_verbose_allclose(a, e, atol=atol, rtol=rtol, name=name)
