"""Reference ops with more than one implementation: each path has a fast test of its own.

``functional.rope`` / ``apply_rope`` rotate through a complex multiply in eager mode and through the written-out
pair formula under torch.compile (inductor fuses it; complex views it handles poorly). The compiled model test
that covers the second path is slow, so both paths are held equal here, directly and through a fullgraph trace
(the "eager" backend: dynamo's capture, fast, with the compile-time branch taken). ``causal_attention`` takes
SDPA's math backend for a scale <= 0, where the fused CPU kernel returns NaN.
"""

from __future__ import annotations

import math

import pytest
import torch

from lmfast import functional


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("transposed", [False, True])
def test_rope_pair_formula_of_the_compile_path_equals_the_complex_multiply(transposed):
    shape = (2, 7, 3, 16) if transposed else (2, 3, 7, 16)
    x = torch.randn(shape, generator=_gen(0), dtype=torch.float64)
    x = x.transpose(1, 2) if transposed else x
    cos, sin = (t.double() for t in functional.rope_cos_sin(10000.0, 16, torch.arange(7)))
    pairs = functional._apply_rope_pairs(x, cos, sin)
    complex_ = functional._apply_rope_complex(x, torch.complex(cos, sin))
    torch.testing.assert_close(pairs, complex_, atol=1e-12, rtol=1e-12)
    # and both are the rotation of adjacent pairs as written in the spec
    x0, x1 = x[..., 0::2], x[..., 1::2]
    torch.testing.assert_close(pairs[..., 0::2], x0 * cos - x1 * sin, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(pairs[..., 1::2], x0 * sin + x1 * cos, atol=1e-12, rtol=1e-12)


def test_rope_under_torch_compile_takes_the_pair_path_and_matches_eager(monkeypatch):
    q, k = torch.randn(2, 3, 7, 16, generator=_gen(1)), torch.randn(2, 3, 7, 16, generator=_gen(2))
    cos, sin = functional.rope_cos_sin(10000.0, 16, torch.arange(7)[None].expand(2, 7))
    taken = []
    real = functional._apply_rope_pairs
    monkeypatch.setattr(functional, "_apply_rope_pairs", lambda *a: taken.append(1) or real(*a))
    torch._dynamo.reset()
    compiled = torch.compile(functional.rope, backend="eager", fullgraph=True)
    q_c, k_c = compiled(q, k, cos, sin)
    assert taken  # traced through the compile-time branch
    q_e, k_e = functional.rope(q, k, cos, sin)
    torch.testing.assert_close(q_c, q_e, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(k_c, k_e, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("scale", [0.0, -0.3])
def test_causal_attention_with_a_scale_of_zero_or_below_matches_the_written_out_softmax(scale):
    q, k, v = (torch.randn(1, 2, 40, 16, generator=_gen(i)) for i in range(3))
    mask = torch.ones(40, 40, dtype=torch.bool).tril()
    scores = (q @ k.transpose(-2, -1) * scale).masked_fill(~mask, -math.inf)
    expected = functional.softmax(scores, -1) @ v
    torch.testing.assert_close(functional.causal_attention(q, k, v, scale), expected, atol=1e-6, rtol=1e-5)
