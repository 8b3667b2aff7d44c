"""The residual add and RMSNorm on the GPU: lmfast's one-pass kernel against ``torch.compile`` of the reference
(add then rmsnorm then the cast to bf16), in effective GB/s.

    pytest benchmarks/bench_add_rmsnorm.py --benchmark-only

Providers: ``fused`` (``lmfast.kernels.add_rmsnorm.add_rmsnorm``), ``compiled`` (``torch.compile`` of
``functional.add_rmsnorm``), ``reference`` (eager). As the trainer runs it under autocast: a bf16 branch output on an
fp32 residual stream, y written in bf16, fp32 weight; 16384 rows of hidden 768 and 4096; fwd+bwd. GB/s counts the
minimum traffic: fwd reads x (2 B) and r (4 B), writes h (4 B) and y (2 B); bwd reads h (4 B), dy (2 B) and dh
(4 B), writes dx (2 B) and dr (4 B): 28 bytes an element. Target on an H100/H200: fused >= 1.1x compiled.
Skipped without CUDA.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from lmfast.kernels.add_rmsnorm import add_rmsnorm

from lmfast import functional

# Imported above on any machine, so collecting this file without a GPU shows a broken import (the CPU rehearsal of
# benchmarks/gpu_check.sh does); only running needs CUDA.
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="add_rmsnorm benchmarks need a CUDA GPU")

ROWS = 16384
_FNS = {"fused": add_rmsnorm, "compiled": torch.compile(functional.add_rmsnorm, dynamic=False),
        "reference": functional.add_rmsnorm}


@pytest.mark.parametrize("hidden", (768, 4096))
@pytest.mark.parametrize("provider", tuple(_FNS))
def test_add_rmsnorm_gbps(benchmark, provider, hidden):
    x = torch.randn(ROWS, hidden, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    r = torch.randn(ROWS, hidden, device="cuda", requires_grad=True)
    w = torch.ones(hidden, device="cuda", requires_grad=True)
    dh, dy = torch.randn_like(r), torch.randn_like(x)

    def run():
        h, y = _FNS[provider](x, r, w, 1e-5, torch.bfloat16)
        torch.autograd.grad((h, y), (x, r, w), (dh, dy))
        torch.cuda.synchronize()

    run()
    benchmark.group = f"add_rmsnorm fwd+bwd hidden={hidden}"
    benchmark.pedantic(run, rounds=20, warmup_rounds=2, iterations=1)
    if benchmark.stats is not None:
        benchmark.extra_info["gbps"] = round(28 * ROWS * hidden / benchmark.stats.stats.mean / 1e9, 1)
