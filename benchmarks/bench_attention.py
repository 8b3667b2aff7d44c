"""Causal attention on the GPU: lmfast's fused Triton kernel vs PyTorch, in TFLOPS.

    pytest benchmarks/bench_attention.py --benchmark-only

Providers: ``reference`` (eager math SDPA, ``SDPBackend.MATH``: the scores are materialised), ``compiled``
(``torch.compile`` of the written-out reference ``softmax(QK^T / sqrt(d) masked) V`` that the tests hold equal),
``fused`` (``lmfast.kernels.attention.attention``), ``flash`` and ``cudnn`` (``F.scaled_dot_product_attention``
pinned to ``SDPBackend.FLASH_ATTENTION`` / ``CUDNN_ATTENTION``). Passes: fwd (inputs without grad), bwd (the
backward of one saved forward), fwd+bwd. bf16, head dim 64 and 128 (and 96, padded inside the kernel), seq 1k-8k,
with batch * seq = 16k tokens and heads * head_dim = 1024 (768 at head dim 96). ``LMFAST_BENCH_QUICK=1`` (what
benchmarks/gpu_check.sh runs) keeps the target's sizes: fwd+bwd at seq 1024 and 2048, head dim 64 and 128, fused
against flash and cuDNN. Target on an H100/H200: fused fwd+bwd >= 0.9x flash there.
Causal FLOPs: fwd ``2 * 2 * B * H * N^2 * D / 2`` (two matmuls, half the scores), bwd 2.5x fwd. Each result
carries ``tflops`` in ``extra_info``; a summary table (GPU, versions, commit, and fused / flash per shape) is
written to benchmarks/results/attention_<gpu>.md. Skipped without CUDA.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import pytest
import torch
from _machine import commit

pytest.importorskip("triton")

from lmfast.kernels.attention import attention as fused_attention
from torch.nn.attention import SDPBackend, sdpa_kernel

from lmfast import functional

# Imported above on any machine, so collecting this file without a GPU shows a broken import (the CPU rehearsal
# of benchmarks/gpu_check.sh does); only running needs CUDA.
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="attention benchmarks need a CUDA GPU")

ROOT = Path(__file__).resolve().parent.parent
QUICK = os.environ.get("LMFAST_BENCH_QUICK") == "1"
PROVIDERS = ("fused", "flash", "cudnn") if QUICK else ("reference", "compiled", "fused", "flash", "cudnn")
PASSES = ("fwd+bwd",) if QUICK else ("fwd", "bwd", "fwd+bwd")
HEAD_DIMS = (64, 128) if QUICK else (64, 96, 128)
SEQS = (1024, 2048) if QUICK else (1024, 2048, 4096, 8192)
TOKENS, WIDTH = 16384, 1024  # batch * seq, heads * head_dim
_rows: dict[tuple, float] = {}  # (head_dim, seq, pass, provider) -> TFLOPS


def _math_sdpa(q, k, v):
    with sdpa_kernel(SDPBackend.MATH):
        return functional.causal_attention(q, k, v)


def _written_out(q, k, v):
    seq = q.shape[-2]
    mask = torch.ones(seq, seq, dtype=torch.bool, device=q.device).tril()
    return functional.scaled_dot_product_attention(q, k, v, mask)


def _flash(q, k, v):
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return functional.causal_attention(q, k, v)


def _cudnn(q, k, v):
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        return functional.causal_attention(q, k, v)


_FNS = {"reference": _math_sdpa, "compiled": torch.compile(_written_out, dynamic=False), "fused": fused_attention,
        "flash": _flash, "cudnn": _cudnn}


def _flops(batch: int, heads: int, seq: int, head_dim: int, pass_: str) -> float:
    fwd = 2 * 2 * batch * heads * seq * seq * head_dim / 2
    return {"fwd": fwd, "bwd": 2.5 * fwd, "fwd+bwd": 3.5 * fwd}[pass_]


def _runner(fn, pass_: str, shape: tuple[int, ...]):
    """A no-argument callable running ``pass_`` of ``fn`` once and waiting for the GPU."""
    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16, requires_grad=pass_ != "fwd") for _ in range(3))
    grad = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
    if pass_ == "fwd":
        def run():
            with torch.no_grad():
                fn(q, k, v)
            torch.cuda.synchronize()
    elif pass_ == "bwd":
        out = fn(q, k, v)

        def run():
            torch.autograd.grad(out, (q, k, v), grad, retain_graph=True)
            torch.cuda.synchronize()
    else:
        def run():
            torch.autograd.grad(fn(q, k, v), (q, k, v), grad)
            torch.cuda.synchronize()
    return run


@pytest.mark.parametrize("seq", SEQS)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_attention_tflops(benchmark, provider, pass_, head_dim, seq):
    batch, heads = TOKENS // seq, WIDTH // 2 ** (head_dim - 1).bit_length()
    shape = (batch, heads, seq, head_dim)
    try:
        run = _runner(_FNS[provider], pass_, shape)
        run()  # warm up: compiles and autotunes outside the timed rounds
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        pytest.skip(f"{provider} {pass_} at {shape} does not fit in GPU memory")
    except RuntimeError as e:  # an SDPA backend that does not take this shape or GPU (cuDNN's versions vary)
        pytest.skip(f"{provider} {pass_} at {shape}: {str(e).splitlines()[0][:200]}")
    benchmark.group = f"attention {pass_} head_dim={head_dim} seq={seq}"
    benchmark.pedantic(run, rounds=10, warmup_rounds=2, iterations=1)
    if benchmark.stats is None:  # --benchmark-disable: ran once as a smoke test, nothing timed
        return
    tflops = _flops(batch, heads, seq, head_dim, pass_) / benchmark.stats.stats.mean / 1e12
    benchmark.extra_info.update(tflops=round(tflops, 1), shape=list(shape), dtype="bfloat16", provider=provider,
                                pass_=pass_, **_machine())
    _rows[(head_dim, seq, pass_, provider)] = tflops


def _machine() -> dict[str, str]:
    import triton

    return {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "commit": commit()}


@pytest.fixture(scope="module", autouse=True)
def _summary():
    yield
    if not _rows:
        return
    machine = _machine()
    lines = [f"# Causal attention, bf16, TFLOPS ({machine['gpu']})", "",
             f"torch {machine['torch']}, triton {machine['triton']}, commit {machine['commit']}; "
             f"batch * seq = {TOKENS}, heads * head_dim = {WIDTH}. Generated by `pytest benchmarks/bench_attention.py "
             "--benchmark-only`.", "",
             "| head_dim | seq | pass | " + " | ".join(PROVIDERS) + " | fused / flash |",
             "|---|---|---|" + "---|" * (len(PROVIDERS) + 1)]
    for head_dim in HEAD_DIMS:
        for seq in SEQS:
            for pass_ in PASSES:
                vals = [_rows.get((head_dim, seq, pass_, p), math.nan) for p in PROVIDERS]
                ratio = vals[PROVIDERS.index("fused")] / vals[PROVIDERS.index("flash")]
                lines.append(f"| {head_dim} | {seq} | {pass_} | " + " | ".join(f"{x:.1f}" for x in vals)
                             + f" | {ratio:.2f} |")
    slug = re.sub(r"[^a-z0-9]+", "_", machine["gpu"].lower()).strip("_")
    out = ROOT / "benchmarks" / "results" / f"attention_{slug}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
