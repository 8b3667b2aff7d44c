"""The fused linear cross-entropy kernel equals lmfast.model.functional.linear_cross_entropy, loss and both gradients.

Without a GPU the kernel runs on CPU tensors through Triton's interpreter (tests/conftest.py), so shapes stay
small and the row block is shrunk to make a row take several blocks; the ``gpu`` tests repeat the comparison
at GPT-2's vocabulary and under torch.compile with inductor.
"""

from __future__ import annotations

import pytest
import torch
from _kernel_utils import TOLERANCES, assert_verbose_allclose, kernel_device, requires_triton

from lmfast.model import functional

pytestmark = requires_triton


@pytest.fixture
def lce(monkeypatch):
    from lmfast.kernels import linear_cross_entropy as module

    if kernel_device() == "cpu":  # rows of 101 logits walk two 64-wide blocks, a ragged one last
        monkeypatch.setattr(module, "_MIN_BLOCK_V", 64)
        monkeypatch.setattr(module, "_MAX_BLOCK_V", 64)
    return module


def _inputs(n, d, v, dtype, seed=0, device=None):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=gen).to(device or kernel_device(), dtype).requires_grad_()
    weight = (torch.randn(v, d, generator=gen) / d**0.5).to(device or kernel_device(), dtype).requires_grad_()
    return hidden, weight, torch.randint(0, v, (n,), generator=gen).to(device or kernel_device())


def _run(fn, hidden, weight, targets, upstream=1.0, **kwargs):
    hidden.grad = weight.grad = None
    loss = fn(hidden, weight, targets, **kwargs)
    (loss * upstream).backward()
    return loss.detach(), hidden.grad.clone(), weight.grad.clone()


def _compare(lce, n, d, v, dtype, chunk_size, device=None):
    h, w, t = _inputs(n, d, v, dtype, device=device)
    fused = _run(lce.linear_cross_entropy, h, w, t, 2.0, chunk_size=chunk_size)
    expected = _run(functional.linear_cross_entropy, h, w, t, 2.0, chunk_size=chunk_size)
    atol, rtol = TOLERANCES[dtype]
    assert fused[0].dtype == torch.float32 and fused[1].dtype == fused[2].dtype == dtype
    # d logits is rounded to bf16/fp16 before the matmuls in both; the row sums then differ by that rounding.
    for name, a, e in zip(("loss", "d hidden", "d weight"), fused, expected, strict=True):
        assert_verbose_allclose(a, e, atol, rtol, name)


@pytest.mark.parametrize("n, d, v, dtype, chunk_size", [
    (37, 19, 101, torch.float32, 8),
    (37, 19, 101, torch.float32, None),
    (5, 33, 130, torch.bfloat16, 2),
    (9, 16, 77, torch.float16, 4),
])
def test_linear_cross_entropy_kernel_matches_the_reference(lce, n, d, v, dtype, chunk_size):
    _compare(lce, n, d, v, dtype, chunk_size)


def test_linear_cross_entropy_kernel_under_bf16_autocast_matches_the_reference(lce):
    h, w, t = _inputs(24, 16, 90, torch.float32, seed=3)
    with torch.autocast(kernel_device(), dtype=torch.bfloat16):
        fused = _run(lce.linear_cross_entropy, h, w, t, chunk_size=7)
        expected = _run(functional.linear_cross_entropy, h, w, t, chunk_size=7)
    assert fused[1].dtype == fused[2].dtype == torch.float32
    atol, rtol = TOLERANCES[torch.bfloat16]
    for name, a, e in zip(("loss", "d hidden", "d weight"), fused, expected, strict=True):
        assert_verbose_allclose(a, e, atol, rtol, name)


def test_linear_cross_entropy_kernel_without_grad_only_computes_the_loss(lce):
    h, w, t = _inputs(13, 8, 70, torch.float32, seed=4)
    with torch.no_grad():
        loss = lce.linear_cross_entropy(h, w, t, chunk_size=4)
    assert not loss.requires_grad
    assert_verbose_allclose(loss, functional.linear_cross_entropy(h, w, t), *TOLERANCES[torch.float32], name="loss")


def test_linear_cross_entropy_op_registration_passes_opcheck(lce):
    # Schema, fake (meta) kernel and autograd registration of lmfast::linear_cross_entropy, as torch.compile needs.
    h, w, t = _inputs(11, 8, 70, torch.float32, seed=5)
    torch.library.opcheck(torch.ops.lmfast.linear_cross_entropy.default, (h, w, t, torch.float32, 4, True, True),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_linear_cross_entropy_traces_into_one_graph_under_torch_compile(lce):
    # fullgraph=True fails on any graph break; the "eager" backend runs the captured graph as it is (under the
    # interpreter the other backends cannot launch the raw kernel on fake tensors; inductor is the gpu test's).
    torch._dynamo.reset()
    h, w, t = _inputs(21, 8, 70, torch.float32, seed=6)
    step = torch.compile(lambda a, b, c: lce.linear_cross_entropy(a * 2.0, b, c, chunk_size=8), backend="eager",
                         fullgraph=True)
    actual = _run(step, h, w, t)
    expected = _run(lambda a, b, c: functional.linear_cross_entropy(a * 2.0, b, c), h, w, t)
    for name, a, e in zip(("loss", "d hidden", "d weight"), actual, expected, strict=True):
        assert_verbose_allclose(a, e, *TOLERANCES[torch.float32], name=name)


@pytest.mark.parametrize("make, match", [
    (lambda d: (torch.randn(4, 8, device=d), torch.randn(10, 7, device=d), torch.zeros(4, dtype=torch.long, device=d)),
     "weight \\(vocab, d\\)"),
    (lambda d: (torch.randn(4, 8, device=d, dtype=torch.float64), torch.randn(10, 8, device=d),
                torch.zeros(4, dtype=torch.long, device=d)), "hidden has dtype torch.float64"),
    (lambda d: (torch.randn(4, 8, device=d), torch.randn(10, 8, device=d), torch.zeros(4, device=d)),
     "integer token ids"),
])
def test_linear_cross_entropy_kernel_rejects_bad_inputs_with_a_value_error(lce, make, match):
    with pytest.raises(ValueError, match=match):
        lce.linear_cross_entropy(*make(kernel_device()))


# ---------------------------------------------------------------- GPU: GPT-2's vocabulary, torch.compile


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_linear_cross_entropy_kernel_matches_the_reference_on_gpu_at_gpt2_vocabulary(dtype):
    from lmfast.kernels import linear_cross_entropy as module

    _compare(module, 1000, 768, 50257, dtype, None, device="cuda")
    _compare(module, 300, 64, 50257, dtype, 64, device="cuda")


@pytest.mark.gpu
def test_linear_cross_entropy_kernel_compiles_with_inductor_without_graph_breaks_and_matches_eager():
    from lmfast.kernels import linear_cross_entropy as module

    h, w, t = _inputs(512, 256, 5000, torch.float32, device="cuda")
    compiled = torch.compile(lambda a, b, c: module.linear_cross_entropy(a * 2.0, b, c, chunk_size=128),
                             fullgraph=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        actual = _run(compiled, h, w, t)
        expected = _run(lambda a, b, c: module.linear_cross_entropy(a * 2.0, b, c, chunk_size=128), h, w, t)
    for name, a, e in zip(("loss", "d hidden", "d weight"), actual, expected, strict=True):
        assert_verbose_allclose(a, e, *TOLERANCES[torch.bfloat16], name=name)
