"""RoPE inside attention on the GPU: lmfast's kernel (q/k rotated as loaded, no rotated copy written) against RoPE
then SDPA (flash), eager and compiled, in TFLOPS.

    pytest benchmarks/bench_rope_attention.py --benchmark-only

Providers: ``fused`` (``lmfast.kernels.attention.rope_attention``), ``rope-flash`` (``functional.rope`` then
``F.scaled_dot_product_attention`` pinned to flash), ``compiled`` (``torch.compile`` of the same two, inductor
fusing the rotation). bf16 fwd+bwd, q/k/v as the model makes them (views of (batch, seq, heads, head_dim)
projections), batch * seq = 16k tokens, heads * head_dim = 1024, seq 1024 and 2048, head dim 64 and 128. Causal
FLOPs as bench_attention.py. Target on an H100/H200: fused >= 0.9x rope-flash. Skipped without CUDA.
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton")

import torch.nn.functional as F
from lmfast.kernels.attention import rope_attention
from torch.nn.attention import SDPBackend, sdpa_kernel

from lmfast import functional

# Imported above on any machine, so collecting this file without a GPU shows a broken import (the CPU rehearsal of
# benchmarks/gpu_check.sh does); only running needs CUDA.
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="attention benchmarks need a CUDA GPU")

TOKENS, WIDTH = 16384, 1024
QUICK = os.environ.get("LMFAST_BENCH_QUICK") == "1"


def _rope_then_flash(q, k, v, cos, sin):
    q, k = functional.rope(q, k, cos, sin)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


_FNS = {"fused": rope_attention, "rope-flash": _rope_then_flash,
        "compiled": torch.compile(_rope_then_flash, dynamic=False)}


@pytest.mark.parametrize("seq", (1024, 2048))
@pytest.mark.parametrize("head_dim", (64, 128))
@pytest.mark.parametrize("provider", tuple(_FNS))
def test_rope_attention_tflops(benchmark, provider, head_dim, seq):
    batch, heads = TOKENS // seq, WIDTH // head_dim
    qkv = torch.randn(batch, seq, 3, heads, head_dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    cos, sin = (t.cuda() for t in functional.rope_cos_sin(10000.0, head_dim, torch.arange(seq)))
    grad = torch.randn(batch, heads, seq, head_dim, device="cuda", dtype=torch.bfloat16)

    def run():
        torch.autograd.grad(_FNS[provider](q, k, v, cos, sin), qkv, grad)
        torch.cuda.synchronize()

    try:
        run()
    except RuntimeError as e:
        pytest.skip(f"{provider}: {str(e).splitlines()[0][:200]}")
    benchmark.group = f"rope attention fwd+bwd head_dim={head_dim} seq={seq}"
    benchmark.pedantic(run, rounds=5 if QUICK else 10, warmup_rounds=1, iterations=1)
    if benchmark.stats is not None:
        flops = 3.5 * 2 * 2 * batch * heads * seq * seq * head_dim / 2
        benchmark.extra_info["tflops"] = round(flops / benchmark.stats.stats.mean / 1e12, 1)
