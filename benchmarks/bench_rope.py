"""RoPE on q and k together on the GPU: lmfast's fused Triton kernel vs PyTorch, in effective GB/s.

    pytest benchmarks/bench_rope.py --benchmark-only

Providers: ``reference`` (``lmfast.functional.rope``, eager), ``compiled`` (``torch.compile`` of it), ``fused``
(``lmfast.kernels.rope.rope``) and ``liger`` (Liger-Kernel's RoPE, when ``liger_kernel`` imports; it rotates
halves rather than adjacent pairs, the same traffic). Passes: fwd (no grad), bwd (the backward of one saved
forward), fwd+bwd. bf16 q and k in the model's layout, a (batch, seq, heads, head_dim) buffer viewed as
(batch, heads, seq, head_dim): batch 16 x seq 1024, 12 heads of 64 (GPT-2 small) and 32 heads of 128. GB/s
counts the minimum traffic: each pass reads q and k and writes them rotated (4 x B H T D x 2 bytes); fwd+bwd
twice that; the cos/sin tables are left out. Targets on an H100 (fwd+bwd): >= 3x reference, >= 1.2x compiled.
``LMFAST_BENCH_QUICK=1`` (what benchmarks/gpu_check.sh runs) times fwd+bwd only. Skipped without CUDA.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

pytest.importorskip("triton")

from lmfast.kernels.rope import rope as fused_rope

from lmfast import functional

# Imported above on any machine, so collecting this file without a GPU shows a broken import (the CPU rehearsal
# of benchmarks/gpu_check.sh does); only running needs CUDA.
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="rope benchmarks need a CUDA GPU")

BATCH, SEQ = 16, 1024
HEADS = ((12, 64), (32, 128))  # (heads, head_dim)
PASSES = ("fwd+bwd",) if os.environ.get("LMFAST_BENCH_QUICK") == "1" else ("fwd", "bwd", "fwd+bwd")


def _liger(q, k, cos, sin):
    from liger_kernel.ops.rope import LigerRopeFunction

    # Liger takes cos/sin of the full head dim, (1, seq, head_dim), and rotates the two halves of each head.
    return LigerRopeFunction.apply(q, k, torch.cat((cos, cos), -1)[None], torch.cat((sin, sin), -1)[None])


_FNS = {
    "reference": functional.rope,
    "compiled": torch.compile(functional.rope, dynamic=False),
    "fused": fused_rope,
}
if importlib.util.find_spec("liger_kernel") is not None:
    _FNS["liger"] = _liger


def _step(fn, pass_: str, heads: int, head_dim: int):
    grad = pass_ != "fwd"

    def model_layout():
        t = torch.randn(BATCH, SEQ, heads, head_dim, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
        return t.requires_grad_(grad)

    q, k = model_layout(), model_layout()
    cos, sin = functional.rope_cos_sin(10000.0, head_dim, torch.arange(SEQ, device="cuda"))
    dq, dk = torch.randn(q.shape, device="cuda", dtype=q.dtype), torch.randn(k.shape, device="cuda", dtype=k.dtype)
    if pass_ == "fwd":
        def step():
            with torch.no_grad():
                fn(q, k, cos, sin)
    elif pass_ == "bwd":
        out = fn(q, k, cos, sin)

        def step():
            torch.autograd.grad(out, (q, k), (dq, dk), retain_graph=True)
    else:
        def step():
            torch.autograd.grad(fn(q, k, cos, sin), (q, k), (dq, dk))
    return step


@pytest.mark.parametrize("heads, head_dim", HEADS)
@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("provider", list(_FNS))
def test_rope_gbps(benchmark, time_gbps, provider, pass_, heads, head_dim):
    benchmark.group = f"rope {pass_} heads={heads} head_dim={head_dim}"
    traffic = (2 if pass_ == "fwd+bwd" else 1) * 4 * BATCH * heads * SEQ * head_dim * 2  # bf16: 2 bytes
    time_gbps(benchmark, _step(_FNS[provider], pass_, heads, head_dim), traffic)
    benchmark.extra_info.update(provider=provider, pass_=pass_, shape=[BATCH, heads, SEQ, head_dim], dtype="bfloat16")
