"""One AdamW step over the GPT-2 small (124M) parameters: lmfast's fused kernel vs PyTorch, in effective GB/s.

    pytest benchmarks/bench_adamw.py --benchmark-only

The parameter shapes are those of ``TransformerLM`` built from configs/gpt2_124m.yaml (embedding, 12 blocks,
untied head: 111 tensors, 162M elements), fp32 params and grads, fp32 states. Providers: ``reference``
(``lmfast.optim.adamw_step_reference``, a Python loop of in-place ops), ``compiled`` (``torch.compile`` of
it, at a fixed step), ``fused`` (``lmfast.kernels.adamw.adamw_step``: one launch), ``torch-fused``
(``torch.optim.AdamW(fused=True)``, the peer a PyTorch user would pick) and ``torch-foreach``
(``torch.optim.AdamW(foreach=True)``, PyTorch's default on CUDA). GB/s counts the minimum traffic: read p,
g, m, v and write p, m, v, 28 bytes an element. Target on an H100: fused >= 1.2x torch-fused.
``LMFAST_BENCH_QUICK=1`` (what benchmarks/gpu_check.sh runs) leaves out ``compiled`` (minutes to compile the loop
over 111 tensors) and ``reference``. The fused step runs with fresh gradient tensors each step, as after the
trainer's ``zero_grad(set_to_none=True)``, in ``fused-new-grads``. Skipped without CUDA.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("triton")

from lmfast.kernels.adamw import adamw_step

from lmfast.model import TransformerLM
from lmfast.optim import adamw_step_reference

# Imported above on any machine, so collecting this file without a GPU shows a broken import (the CPU rehearsal
# of benchmarks/gpu_check.sh does); only running needs CUDA.
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="adamw benchmarks need a CUDA GPU")

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "gpt2_124m.yaml"
SHAPE_KEYS = ("vocab_size", "context_length", "d_model", "num_layers", "num_heads", "d_ff", "rope_theta")
HYPER = dict(lr=6e-4, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)
STEP = 10  # a fixed step, so the compiled reference never recompiles for a new bias correction


def _param_shapes() -> list[torch.Size]:
    cfg = yaml.safe_load(CONFIG.read_text())
    model = TransformerLM(**{k: cfg[k] for k in SHAPE_KEYS}, backend="reference", device="meta")
    return [p.shape for p in model.parameters()]


def _tensors():
    shapes = _param_shapes()
    params = [torch.nn.Parameter(torch.randn(s, device="cuda") * 0.02) for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    return params


def _lmfast_step(fn):
    params = _tensors()
    grads = [p.grad for p in params]
    ms, vs = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
    data = [p.detach() for p in params]

    def step():
        fn(data, grads, ms, vs, step=STEP, **HYPER)
    return step, params


def _torch_step(**flags):
    params = _tensors()
    opt = torch.optim.AdamW(params, lr=HYPER["lr"], betas=(HYPER["beta1"], HYPER["beta2"]), eps=HYPER["eps"],
                            weight_decay=HYPER["weight_decay"], **flags)
    return opt.step, params


def _fused_new_grads_step():
    # The trainer frees its gradients every step; two sets alternate here so each step sees grads at other
    # addresses (the kernel re-points its grad table instead of rebuilding every table).
    params = _tensors()
    data = [p.detach() for p in params]
    ms, vs = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
    sets = [[p.grad for p in params], [torch.randn_like(p) * 1e-3 for p in params]]
    flip = iter(range(10**9))

    def step():
        adamw_step(data, sets[next(flip) % 2], ms, vs, step=STEP, **HYPER)
    return step, params


_PROVIDERS = {
    "reference": lambda: _lmfast_step(adamw_step_reference),
    "compiled": lambda: _lmfast_step(torch.compile(adamw_step_reference, dynamic=False)),
    "fused": lambda: _lmfast_step(adamw_step),
    "fused-new-grads": _fused_new_grads_step,
    "torch-fused": lambda: _torch_step(fused=True),
    "torch-foreach": lambda: _torch_step(foreach=True),
}
if os.environ.get("LMFAST_BENCH_QUICK") == "1":
    _PROVIDERS = {k: v for k, v in _PROVIDERS.items() if k not in ("reference", "compiled")}


@pytest.mark.parametrize("provider", list(_PROVIDERS))
def test_adamw_step_gbps(benchmark, time_gbps, provider):
    benchmark.group = "adamw step, gpt2_124m parameters"
    step, params = _PROVIDERS[provider]()
    numel = sum(p.numel() for p in params)
    time_gbps(benchmark, step, 28 * numel, reps=3, rounds=10)
    benchmark.extra_info.update(provider=provider, tensors=len(params), elements=numel, dtype="float32")
