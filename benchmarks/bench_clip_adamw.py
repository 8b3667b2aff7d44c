"""Global-norm clipping and the AdamW step on the GPU: lmfast's clip folded into its fused step against
``clip_grad_norm_`` + ``torch.optim.AdamW(fused=True)``, in effective GB/s, on GPT-2 124M's parameter shapes.

    pytest benchmarks/bench_clip_adamw.py --benchmark-only

Providers: ``fused-clip`` (``lmfast.train.optim.AdamW.clip_grad_norm_and_step(fold=True)``: one pass summing the
squares, the clip coefficient applied inside the step), ``torch-fused`` (``torch.nn.utils.clip_grad_norm_(foreach)``
then ``torch.optim.AdamW(fused=True)``), ``reference`` (lmfast's clip_grad_norm_ then its foreach AdamW). fp32
parameters, gradients and states. GB/s counts the minimum traffic of a clipped step: the gradients read for the norm
(4 B) and for the step (4 B), p, m, v read and written (24 B): 32 bytes a parameter. Target on an H100/H200:
fused-clip >= 1.15x torch-fused. Skipped without CUDA.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from lmfast.train.optim import AdamW, clip_grad_norm_

# Imported above on any machine, so collecting this file without a GPU shows a broken import (the CPU rehearsal of
# benchmarks/gpu_check.sh does); only running needs CUDA.
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="optimizer benchmarks need a CUDA GPU")

D, LAYERS, VOCAB, CONTEXT = 768, 12, 50304, 1024


def _params() -> list[torch.nn.Parameter]:
    shapes = [(VOCAB, D), (CONTEXT, D), (VOCAB, D)]
    for _ in range(LAYERS):
        shapes += [(3 * D, D), (D, D), (4 * D, D), (D, 4 * D), (D,), (D,)]
    params = [torch.nn.Parameter(torch.randn(s, device="cuda") * 0.02) for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p)
    return params


def _stepper(provider: str):
    params = _params()
    if provider == "torch-fused":
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.1, fused=True)

        def step():
            torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
            opt.step()
    else:
        opt = AdamW(params, lr=1e-4, weight_decay=0.1, fused=provider == "fused-clip")

        def step():
            if provider == "fused-clip":
                opt.clip_grad_norm_and_step(1.0, fold=True)
            else:
                clip_grad_norm_(params, 1.0)
                opt.step()
    return params, step


@pytest.mark.parametrize("provider", ("fused-clip", "torch-fused", "reference"))
def test_clip_adamw_gbps(benchmark, provider):
    params, step = _stepper(provider)

    def run():
        step()
        torch.cuda.synchronize()

    run()
    benchmark.group = "clip + adamw step, gpt2_124m shapes"
    benchmark.pedantic(run, rounds=20, warmup_rounds=2, iterations=1)
    if benchmark.stats is not None:
        n = sum(p.numel() for p in params)
        benchmark.extra_info["gbps"] = round(32 * n / benchmark.stats.stats.mean / 1e9, 1)
