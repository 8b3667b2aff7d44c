"""RMSNorm on the GPU: lmfast's fused Triton kernel vs PyTorch, in effective GB/s.

    pytest benchmarks/bench_rmsnorm.py --benchmark-only

Providers: ``reference`` (``lmfast.functional.rmsnorm``, eager), ``compiled`` (``torch.compile`` of it),
``fused`` (``lmfast.kernels.rmsnorm.rmsnorm``), ``torch`` (``torch.nn.functional.rms_norm``, what a PyTorch user
would call) and ``liger`` (Liger-Kernel's RMSNorm, when ``liger_kernel`` imports). Passes: fwd (no grad),
bwd (the backward of one saved forward), fwd+bwd. bf16 activations, 16384 rows (batch 16 x seq 1024) of
hidden 768 / 2048 / 4096; fp32 weight (the trainer's mixed precision), bf16 for torch and Liger, which want
the activation dtype. GB/s counts the minimum traffic: fwd reads x and writes y (2 M N bytes x dtype size),
bwd reads x and dy and writes dx (3 M N), fwd+bwd both; weights and per-row statistics are left out. Targets
on an H100 (fwd+bwd): >= 3x reference, >= 1.2x compiled. ``LMFAST_BENCH_QUICK=1`` (what benchmarks/gpu_check.sh
runs) times fwd+bwd only, at hidden 768 and 4096. Skipped without CUDA.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

pytest.importorskip("triton")

from lmfast.kernels.rmsnorm import rmsnorm as fused_rmsnorm

from lmfast import functional

# Imported above on any machine, so collecting this file without a GPU shows a broken import (the CPU rehearsal
# of benchmarks/gpu_check.sh does); only running needs CUDA.
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="rmsnorm benchmarks need a CUDA GPU")

ROWS, EPS = 16384, 1e-5
QUICK = os.environ.get("LMFAST_BENCH_QUICK") == "1"
HIDDEN = (768, 4096) if QUICK else (768, 2048, 4096)
PASSES = ("fwd+bwd",) if QUICK else ("fwd", "bwd", "fwd+bwd")


def _liger(x, w, eps):
    from liger_kernel.ops.rms_norm import LigerRMSNormFunction

    return LigerRMSNormFunction.apply(x, w, eps)


_FNS = {
    "reference": functional.rmsnorm,
    "compiled": torch.compile(functional.rmsnorm, dynamic=False),
    "fused": fused_rmsnorm,
    "torch": lambda x, w, eps: torch.nn.functional.rms_norm(x, (x.shape[-1],), w, eps),
}
if importlib.util.find_spec("liger_kernel") is not None:
    _FNS["liger"] = _liger


def _step(fn, pass_: str, hidden: int, weight_dtype: torch.dtype):
    x = torch.randn(ROWS, hidden, device="cuda", dtype=torch.bfloat16, requires_grad=pass_ != "fwd")
    w = torch.ones(hidden, device="cuda", dtype=weight_dtype, requires_grad=pass_ != "fwd")
    dy = torch.randn_like(x)
    if pass_ == "fwd":
        def step():
            with torch.no_grad():
                fn(x, w, EPS)
    elif pass_ == "bwd":
        y = fn(x, w, EPS)

        def step():
            torch.autograd.grad(y, (x, w), dy, retain_graph=True)
    else:
        def step():
            torch.autograd.grad(fn(x, w, EPS), (x, w), dy)
    return step


@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("provider", list(_FNS))
def test_rmsnorm_gbps(benchmark, time_gbps, provider, pass_, hidden):
    benchmark.group = f"rmsnorm {pass_} hidden={hidden}"
    traffic = {"fwd": 2, "bwd": 3, "fwd+bwd": 5}[pass_] * ROWS * hidden * 2  # bf16: 2 bytes
    # torch's and Liger's RMSNorm want the weight in the activation dtype; ours and the reference take fp32.
    weight_dtype = torch.bfloat16 if provider in ("torch", "liger") else torch.float32
    time_gbps(benchmark, _step(_FNS[provider], pass_, hidden, weight_dtype), traffic)
    benchmark.extra_info.update(provider=provider, pass_=pass_, shape=[ROWS, hidden], dtype="bfloat16")
