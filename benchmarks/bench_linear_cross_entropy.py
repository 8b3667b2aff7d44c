"""The loss's peak memory and time, fused (chunked linear cross-entropy) against unfused (full logits, then
cross-entropy), forward + backward, at GPT-2's vocabulary: N = 8192 tokens, d = 768, V = 50257.

    pytest benchmarks/bench_linear_cross_entropy.py --benchmark-only

(on a machine shared with other jobs, ``OMP_NUM_THREADS=1 ... --benchmark-timer=time.process_time``: the CPU time
of one thread, which other jobs disturb far less than the wall-clock time of two). Every provider takes the same
fp32 hidden states (N, d) and fp32 LM-head weight (V, d), both requiring grad, and integer targets, and returns the
mean loss; a step is that loss and its backward, leaving ``hidden.grad`` and ``weight.grad`` as a training step
would.

* CPU, fp32 and bf16 autocast: ``unfused`` (``lmfast.functional.cross_entropy(hidden @ weight.T, targets)``, the
  trainer with ``fused_loss: false``) and ``fused`` (``lmfast.functional.linear_cross_entropy``, the default).
  Peak memory is the rise of the process's resident set (``VmHWM`` after resetting it through
  ``/proc/self/clear_refs``) over one step, measured once after a warm-up step: what the step adds on top of
  its inputs, gradients included. Results: benchmarks/results/loss_memory_cpu.md.
* CUDA, bf16 autocast and fp32: ``unfused``, ``fused-reference``, ``fused`` (the Triton twin) and ``liger``
  (Liger-Kernel's ``LigerFusedLinearCrossEntropyLoss``, when installed); peak memory from
  ``torch.cuda.max_memory_allocated``. Results: benchmarks/results/loss_memory_<gpu>.md.

Targets (issue 9): the fused peak at most 25% of the unfused one, in at most 10% more time.
``LMFAST_BENCH_QUICK=1`` (what benchmarks/gpu_check.sh runs) leaves out the CPU rows on a machine with a GPU.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from _machine import commit, cpu_name, results_dir, slug, timer_and_rounds

from lmfast import functional
from lmfast.model.precision import cpu_bf16_native

TOKENS, D_MODEL, VOCAB = 8192, 768, 50257
DTYPES = {"fp32": None, "bf16": torch.bfloat16}
QUICK = os.environ.get("LMFAST_BENCH_QUICK") == "1"  # benchmarks/gpu_check.sh: the GPU rows, none of the CPU ones
_rows: dict[str, list[dict]] = {"cpu": [], "cuda": []}


def _loss_fn(provider: str, device: str) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    if provider == "unfused":
        return lambda h, w, t: functional.cross_entropy(h @ w.T, t)
    if provider == "fused-reference" or (provider == "fused" and device != "cuda"):
        return functional.linear_cross_entropy  # what backend: auto runs off CUDA
    if provider == "fused":
        from lmfast.kernels.linear_cross_entropy import linear_cross_entropy

        return linear_cross_entropy
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    liger = LigerFusedLinearCrossEntropyLoss()

    def liger_loss(h, w, t):
        out = liger(w, h, t)
        return out[0] if isinstance(out, tuple) else out

    return liger_loss


def _inputs(device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(TOKENS, D_MODEL, generator=gen).to(device).requires_grad_()
    weight = (torch.randn(VOCAB, D_MODEL, generator=gen) * 0.02).to(device).requires_grad_()
    return hidden, weight, torch.randint(0, VOCAB, (TOKENS,), generator=gen).to(device)


def _step(loss_fn, hidden, weight, targets, device: str, autocast) -> Callable[[], None]:
    def step() -> None:
        hidden.grad = weight.grad = None
        with torch.autocast(device, dtype=autocast or torch.float32, enabled=autocast is not None):
            loss = loss_fn(hidden, weight, targets)
        loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()

    return step


def _resident() -> tuple[int, int] | None:
    """(peak, current) resident bytes of this process, or None where /proc cannot say (not Linux)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    kib = {k: int(v) for k, v in re.findall(r"(VmHWM|VmRSS):\s+(\d+) kB", status)}
    return kib["VmHWM"] * 1024, kib["VmRSS"] * 1024


def _memory(step: Callable[[], None], device: str) -> tuple[float, float] | None:
    """What one step adds to memory at its peak, and what it still holds after, over what was held before it."""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        return torch.cuda.max_memory_allocated() - base, torch.cuda.memory_allocated() - base
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
    except OSError:
        return None
    before = _resident()
    step()
    after = _resident()
    return None if before is None or after is None else (after[0] - before[1], after[1] - before[1])


def _run(benchmark, request, device: str, provider: str, dtype: str) -> None:
    hidden, weight, targets = _inputs(device)
    step = _step(_loss_fn(provider, device), hidden, weight, targets, device, DTYPES[dtype])
    step()  # warm-up: kernels compiled, allocator pools and page mappings settled
    hidden.grad = weight.grad = None  # the step's own gradients count in its peak,
    functional.lce_release_workspace()  # and so do the chunk buffers the fused loss keeps on CPU between calls
    memory = _memory(step, device)
    peak, held = memory if memory is not None else (None, None)
    rounds = request.config.getoption("benchmark_min_rounds", None) or 3
    benchmark.group = f"loss fwd+bwd {device} {dtype}"
    benchmark.pedantic(step, rounds=rounds, iterations=1)
    median = benchmark.stats.stats.median if benchmark.stats is not None else None
    benchmark.extra_info.update(peak_mib=None if peak is None else round(peak / 2**20, 1), tokens=TOKENS,
                                d_model=D_MODEL, vocab=VOCAB, dtype=dtype)
    _rows[device].append(dict(provider=provider, dtype=dtype, peak=peak, held=held, median=median,
                              spread=(benchmark.stats.stats.min, benchmark.stats.stats.max) if median else None))


@pytest.mark.skipif(QUICK and torch.cuda.is_available(), reason="LMFAST_BENCH_QUICK=1 on a GPU machine: CUDA rows only")
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("provider", ["unfused", "fused"])
def test_loss_memory_and_time_cpu(benchmark, request, provider, dtype):
    _run(benchmark, request, "cpu", provider, dtype)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
@pytest.mark.parametrize("provider", ["unfused", "fused-reference", "fused", "liger"])
def test_loss_memory_and_time_cuda(benchmark, request, provider, dtype):
    if provider == "fused":
        pytest.importorskip("triton")
    if provider == "liger" and importlib.util.find_spec("liger_kernel") is None:
        pytest.skip("liger-kernel is not installed")
    _run(benchmark, request, "cuda", provider, dtype)


# ---------------------------------------------------------------------------------------------- summary


def _summary(device: str, timer: str, min_rounds: int) -> str:
    amx = "AMX bf16" if cpu_bf16_native()[0] else "no AMX"
    machine = torch.cuda.get_device_name() if device == "cuda" else \
        f"{cpu_name()} ({os.cpu_count()} cores, {amx}), {torch.get_num_threads()} torch threads"
    cmd = f"pytest benchmarks/bench_linear_cross_entropy.py --benchmark-only --benchmark-min-rounds={min_rounds}"
    if device == "cpu" and torch.get_num_threads() != (os.cpu_count() or 1):
        cmd = f"OMP_NUM_THREADS={torch.get_num_threads()} {cmd}"
    if not timer.endswith("perf_counter"):
        cmd += f" --benchmark-timer={timer}"
    lines = ["# Loss forward + backward, fused (chunked linear cross-entropy) vs unfused (full logits)", "",
             f"Machine: {machine}; torch {torch.__version__}; commit {commit()}.",
             f"N = {TOKENS} tokens, d = {D_MODEL}, V = {VOCAB}; fp32 hidden states and weight, `bf16` = under bf16 "
             "autocast.",
             f"Command: `{cmd}` (median of the rounds; timer {timer}).",
             "Peak = what one step adds to memory at its peak, gradients included"
             + (" (resident set, VmHWM)" if device == "cpu" else " (torch.cuda.max_memory_allocated)")
             + f"; held = what it still holds after: the gradients (d hidden and d weight, "
             f"{(TOKENS + VOCAB) * D_MODEL * 4 / 2**20:.0f} MiB), and for the fused loss on CPU the chunk buffers it "
             "keeps between calls.", "",
             "| provider | dtype | ms (median) | fastest / slowest, ms | peak MiB | held MiB | peak / unfused | "
             "time / unfused |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    unfused = {r["dtype"]: r for r in _rows[device] if r["provider"] == "unfused"}
    for r in _rows[device]:
        base = unfused.get(r["dtype"])
        peak = f"{r['peak'] / 2**20:,.0f}" if r["peak"] is not None else "n/a"
        held = f"{r['held'] / 2**20:,.0f}" if r["held"] is not None else "n/a"
        peak_ratio = f"{r['peak'] / base['peak']:.0%}" if base and r["peak"] and base["peak"] else "n/a"
        time_ratio = f"{r['median'] / base['median']:.2f}" if base and r["median"] and base["median"] else "n/a"
        ms = f"{r['median'] * 1e3:,.0f}" if r["median"] else "n/a"
        spread = f"{r['spread'][0] * 1e3:,.0f} / {r['spread'][1] * 1e3:,.0f}" if r["spread"] else "n/a"
        lines.append(f"| {r['provider']} | {r['dtype']} | {ms} | {spread} | {peak} | {held} | {peak_ratio} | "
                     f"{time_ratio} |")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module", autouse=True)
def _write_summaries(request):
    yield
    timer, min_rounds = timer_and_rounds(request.config, 3)
    out_dir = results_dir()
    if _rows["cpu"]:
        (out_dir / "loss_memory_cpu.md").write_text(_summary("cpu", timer, min_rounds))
    if _rows["cuda"]:
        (out_dir / f"loss_memory_{slug(torch.cuda.get_device_name())}.md").write_text(_summary("cuda", timer,
                                                                                                min_rounds))
