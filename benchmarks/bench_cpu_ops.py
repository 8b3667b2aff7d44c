"""CPU ops outside the matmuls, one thread: lmfast's choice against the plain way of writing the same op.

    pytest benchmarks/bench_cpu_ops.py --benchmark-only

- cross-entropy, forward + backward of 2048 x 4096 fp32 logits: lmfast's hand-written backward
  (``lmfast.functional.cross_entropy``) vs autograd through ``logsumexp - gather`` vs ``F.cross_entropy``;
- RoPE, forward + backward of queries laid out as the model makes them, (16, 8, 128, 32) views of a
  (16, 128, 256) projection: lmfast's complex multiply vs the pairwise formula (what ``torch.compile`` gets);
- AdamW, one step over the parameters of the train-step benchmark's model (vocab 4096, d_model 256, 4 layers,
  d_ff 704): ``lmfast.optim.AdamW`` (PyTorch's fused CPU kernel) vs ``torch.optim.AdamW`` with its defaults,
  with ``foreach=True`` and with ``fused=True``.

Results (ms per call, median) go to benchmarks/results/cpu_ops.md with the CPU, versions and commit.
"""

from __future__ import annotations

import os
import platform

import _machine as machine
import pytest
import torch
import torch.nn.functional as F

from lmfast import functional
from lmfast.model import TransformerLM
from lmfast.optim import AdamW

RESULTS = machine.ROOT / "benchmarks" / "results" / "cpu_ops.md"
_rows: dict[str, dict[str, float]] = {}  # op -> provider -> median seconds


@pytest.fixture(scope="module", autouse=True)
def _one_thread_and_summary():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    if _rows:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(_markdown())


def _time(benchmark, op: str, provider: str, fn, rounds: int = 20) -> None:
    benchmark.group = op
    benchmark.pedantic(fn, rounds=rounds, warmup_rounds=3, iterations=1)
    if benchmark.stats is not None:
        _rows.setdefault(op, {})[provider] = benchmark.stats.stats.median


def _markdown() -> str:
    lines = [
        "# CPU ops outside the matmuls (1 thread)",
        "",
        f"CPU: {machine.cpu_name()}, {os.cpu_count()} logical cores, 1 torch thread; Python "
        f"{platform.python_version()}; torch {torch.__version__}; lmfast commit {machine.commit()}.",
        "Command: `pytest benchmarks/bench_cpu_ops.py --benchmark-only` (median of 20 rounds after 3 warm-up).",
        "",
        "| op | provider | ms | lmfast's speedup over it |",
        "|---|---|---:|---:|",
    ]
    for op, providers in _rows.items():
        ours = providers.get("lmfast")
        for provider, seconds in providers.items():
            ratio = f"{seconds / ours:.2f}" if ours and provider != "lmfast" else ""
            lines.append(f"| {op} | {provider} | {seconds * 1e3:.2f} | {ratio} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# Cross-entropy


def _ce_formula(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (torch.logsumexp(logits, -1) - logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)).mean()


@pytest.mark.parametrize("provider", ["lmfast", "autograd formula", "F.cross_entropy"])
def test_cross_entropy_fwd_bwd(benchmark, provider):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2048, 4096, generator=g).requires_grad_()
    targets = torch.randint(0, 4096, (2048,), generator=g)
    loss_fn = {"lmfast": functional.cross_entropy, "autograd formula": _ce_formula,
               "F.cross_entropy": F.cross_entropy}[provider]

    def step():
        logits.grad = None
        loss_fn(logits, targets).backward()

    _time(benchmark, "cross-entropy fwd+bwd, 2048 x 4096 fp32", provider, step)


# ----------------------------------------------------------------------------------------------------------------
# RoPE


@pytest.mark.parametrize("provider", ["lmfast", "pairwise formula"])
def test_rope_fwd_bwd(benchmark, provider):
    g = torch.Generator().manual_seed(0)
    proj = torch.randn(16, 128, 256, generator=g).requires_grad_()
    cos, sin = functional.rope_cos_sin(10000.0, 32, torch.arange(128))
    rope = functional.apply_rope if provider == "lmfast" else functional._apply_rope_pairs

    def step():
        proj.grad = None
        q = proj.view(16, 128, 8, 32).transpose(1, 2)  # the model's head view
        rope(q, cos, sin).sum().backward()

    _time(benchmark, "RoPE fwd+bwd, (16, 8, 128, 32) head views", provider, step)


# ----------------------------------------------------------------------------------------------------------------
# AdamW


def _model_params() -> list[torch.nn.Parameter]:
    torch.manual_seed(0)
    model = TransformerLM(4096, 128, 256, 4, 8, 704, 10000.0, backend="reference")
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    return params


@pytest.mark.parametrize("provider", ["lmfast", "torch default", "torch foreach", "torch fused"])
def test_adamw_step(benchmark, provider):
    params = _model_params()
    kwargs = dict(lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    opt = {"lmfast": lambda: AdamW(params, **kwargs),
           "torch default": lambda: torch.optim.AdamW(params, **kwargs),
           "torch foreach": lambda: torch.optim.AdamW(params, foreach=True, **kwargs),
           "torch fused": lambda: torch.optim.AdamW(params, fused=True, **kwargs)}[provider]()
    millions = sum(p.numel() for p in params) / 1e6
    _time(benchmark, f"AdamW step, {millions:.1f}M fp32 parameters", provider, opt.step)
