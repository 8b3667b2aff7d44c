"""One full training step, lmfast vs Hugging Face ``LlamaForCausalLM`` of the same shape, in tokens/s.

    pytest benchmarks/bench_train_step.py --benchmark-only --benchmark-min-rounds=3

A step is: forward, mean cross-entropy, backward, global-norm clipping at 1.0, AdamW step (lr 1e-3, betas
(0.9, 0.95), weight decay 0.1), on one fixed random batch. lmfast uses ``lmfast.functional.cross_entropy``,
``lmfast.optim.clip_grad_norm_`` and ``lmfast.optim.AdamW``; HF uses ``F.cross_entropy``,
``torch.nn.utils.clip_grad_norm_`` and ``torch.optim.AdamW`` with their defaults. Both models are built with the
same shape (untied head, no biases, num_key_value_heads = num_heads, rms_norm_eps 1e-5, HF's default SDPA
attention) and hold the same number of parameters.

* CPU, shape ``cpu-small`` (vocab 4096, context 128, d_model 256, 4 layers, 8 heads, d_ff 704 = 8/3·256 rounded
  up to a multiple of 64, batch 16 → 2048 tokens a step), fp32: providers ``lmfast`` / ``hf`` × ``eager`` /
  ``compiled`` (``torch.compile`` of model + loss; inductor's C++ backend). The run with all four takes 30-60 s
  on 2 idle cores with a warm inductor cache, ~3 minutes cold (compiling is most of it). A Markdown summary
  (CPU, versions, commit, tokens/s, ratios; also the command, threads, timer and load average) is written to
  benchmarks/results/train_step_cpu.md. On a machine shared with other jobs, wall-clock time with two OpenMP
  threads swings by 2-5x (every parallel region waits for a descheduled thread); a steadier comparison is one
  thread timed by process CPU time:

      OMP_NUM_THREADS=1 pytest benchmarks/bench_train_step.py --benchmark-only --benchmark-min-rounds=3 \
          --benchmark-timer=time.process_time

* CUDA (skipped without a GPU), the shape of configs/tinystories_17m.yaml, bf16 autocast: providers ``hf``,
  ``lmfast-reference`` (plain-PyTorch ops, multi-tensor AdamW) and ``lmfast-fused`` (Triton ops and AdamW) × eager /
  compiled, with tokens/s and MFU against 989 TFLOPS (H100 SXM bf16 dense) in ``extra_info`` and a summary in
  benchmarks/results/train_step_<gpu>.md.

Training FLOPs per token are ``6 N + 12 L d T`` (N non-embedding parameters including the LM head; the
attention term as in the CS336 handout, counting the full T x T score matrix).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from _machine import commit, cpu_name

from lmfast import functional
from lmfast.model import TransformerLM
from lmfast.optim import AdamW, clip_grad_norm_

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parent.parent
CPU_SHAPE = dict(vocab_size=4096, context_length=128, d_model=256, num_layers=4, num_heads=8, d_ff=704,
                 rope_theta=10000.0)
CPU_BATCH = 16
H100_BF16_DENSE_FLOPS = 989e12
OPTIM = dict(lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
_results: dict[str, dict[str, float]] = {"cpu": {}, "cuda": {}}  # device -> {provider-mode: tokens/s}
_spread: dict[str, tuple[float, float]] = {}  # provider-mode -> (fastest, slowest) round in seconds


def _gpu_shape() -> tuple[dict, int]:
    cfg = yaml.safe_load((ROOT / "configs" / "tinystories_17m.yaml").read_text())
    keys = ("vocab_size", "context_length", "d_model", "num_layers", "num_heads", "d_ff", "rope_theta")
    return {k: cfg[k] for k in keys}, int(cfg["batch_size"])


def _flops_per_token(shape: dict) -> float:
    d, layers, d_ff, vocab = shape["d_model"], shape["num_layers"], shape["d_ff"], shape["vocab_size"]
    non_embedding = layers * (4 * d * d + 3 * d * d_ff + 2 * d) + d + vocab * d
    return 6 * non_embedding + 12 * layers * d * shape["context_length"]


def _hf_llama(shape: dict, device: str):
    config = transformers.LlamaConfig(
        vocab_size=shape["vocab_size"], hidden_size=shape["d_model"], intermediate_size=shape["d_ff"],
        num_hidden_layers=shape["num_layers"], num_attention_heads=shape["num_heads"],
        num_key_value_heads=shape["num_heads"], max_position_embeddings=shape["context_length"],
        rms_norm_eps=1e-5, rope_theta=shape["rope_theta"], tie_word_embeddings=False, attention_bias=False,
        mlp_bias=False, use_cache=False,
    )
    return transformers.LlamaForCausalLM(config).to(device).train()


def _make_step(provider: str, mode: str, shape: dict, batch: int, device: str, autocast: torch.dtype | None
               ) -> tuple[Callable[[], None], int]:
    """A no-argument training step for ``provider`` and the model's parameter count."""
    torch.manual_seed(0)
    vocab = shape["vocab_size"]
    x = torch.randint(0, vocab, (batch, shape["context_length"]), device=device)
    y = torch.randint(0, vocab, (batch, shape["context_length"]), device=device)
    if provider == "hf":
        model = _hf_llama(shape, device)
        opt = torch.optim.AdamW(model.parameters(), **OPTIM)
        clip = torch.nn.utils.clip_grad_norm_

        def loss_fn(a, b):
            return F.cross_entropy(model(input_ids=a).logits.flatten(0, 1).float(), b.flatten())
    else:
        backend = provider.removeprefix("lmfast-") if provider != "lmfast" else "auto"
        model = TransformerLM(**shape, backend=backend, device=device)
        opt = AdamW(model.parameters(), **OPTIM, fused={"reference": False, "fused": True}.get(backend))
        clip = clip_grad_norm_

        def loss_fn(a, b):
            return functional.cross_entropy(model(a), b)
    if mode == "compiled":
        loss_fn = torch.compile(loss_fn)
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> None:
        with torch.autocast(device, dtype=autocast, enabled=autocast is not None):
            loss = loss_fn(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip(params, 1.0)
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()

    return step, sum(p.numel() for p in params)


def _run(benchmark, device: str, provider: str, mode: str, shape: dict, batch: int, autocast) -> float:
    step, n_params = _make_step(provider, mode, shape, batch, device, autocast)
    d, layers, d_ff, vocab = shape["d_model"], shape["num_layers"], shape["d_ff"], shape["vocab_size"]
    assert n_params == 2 * vocab * d + layers * (4 * d * d + 3 * d * d_ff + 2 * d) + d, "models differ in shape"
    for _ in range(2):  # warm up: compiles, autotunes and allocates optimizer state outside the timed rounds
        step()
    benchmark.group = f"train step {device} {mode}"
    benchmark(step)
    tokens_per_s = batch * shape["context_length"] / benchmark.stats.stats.median
    info = dict(tokens_per_s=round(tokens_per_s), tokens_per_step=batch * shape["context_length"], shape=shape,
                batch=batch, autocast=str(autocast), **_machine(device))
    if device == "cuda":
        info["mfu"] = round(tokens_per_s * _flops_per_token(shape) / H100_BF16_DENSE_FLOPS, 4)
    benchmark.extra_info.update(info)
    _results[device][f"{provider} {mode}"] = tokens_per_s
    _spread[f"{provider} {mode}"] = (benchmark.stats.stats.min, benchmark.stats.stats.max)
    return tokens_per_s


@pytest.mark.parametrize("mode", ["eager", "compiled"])
@pytest.mark.parametrize("provider", ["lmfast", "hf"])
def test_train_step_tokens_per_second_cpu(benchmark, provider, mode):
    _run(benchmark, "cpu", provider, mode, CPU_SHAPE, CPU_BATCH, None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", ["eager", "compiled"])
@pytest.mark.parametrize("provider", ["lmfast-reference", "lmfast-fused", "hf"])
def test_train_step_tokens_per_second_cuda(benchmark, provider, mode):
    shape, batch = _gpu_shape()
    if provider == "lmfast-fused":
        pytest.importorskip("triton")
    _run(benchmark, "cuda", provider, mode, shape, batch, torch.bfloat16)


# ---------------------------------------------------------------------------------------------- summary


def _machine(device: str) -> dict[str, str]:
    if device == "cuda":
        name = torch.cuda.get_device_name()
    else:
        name = f"{cpu_name()} ({os.cpu_count()} cores), {torch.get_num_threads()} torch thread(s)"
    return {"machine": name, "torch": torch.__version__, "transformers": transformers.__version__,
            "commit": commit()}


def _command(device: str, timer: str, min_rounds: int) -> str:
    cmd = f"pytest benchmarks/bench_train_step.py --benchmark-only --benchmark-min-rounds={min_rounds}"
    if device == "cpu" and torch.get_num_threads() != (os.cpu_count() or 1):
        cmd = f"OMP_NUM_THREADS={torch.get_num_threads()} {cmd}"
    return cmd if timer.endswith("perf_counter") else f"{cmd} --benchmark-timer={timer}"


def _load() -> str:
    try:
        return ", ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def _ratio(rows: dict[str, float], a: str, b: str) -> str:
    return f"{rows[a] / rows[b]:.2f}" if a in rows and b in rows else "n/a"


def _summary(device: str, title: str, shape: dict, batch: int, pairs: list[tuple[str, str, str]], timer: str,
             min_rounds: int) -> str:
    rows, machine = _results[device], _machine(device)
    flops = _flops_per_token(shape)
    lines = [f"# {title}", "",
             f"Machine: {machine['machine']}; torch {machine['torch']}; transformers {machine['transformers']}; "
             f"commit {machine['commit']}.",
             f"Shape: {shape}, batch {batch} ({batch * shape['context_length']} tokens a step); "
             f"{flops / 1e6:.1f} MFLOP per token (6N + 12LdT).",
             f"Command: `{_command(device, timer, min_rounds)}` (median of the rounds; timer {timer}); "
             f"load average (1, 5, 15 min) at the end of the run: {_load()}.", "",
             "| provider | tokens/s | ms / step (median) | fastest / slowest round, ms | GFLOP/s |",
             "|---|---:|---:|---:|---:|"]
    for name, tps in rows.items():
        fastest, slowest = _spread[name]
        lines.append(f"| {name} | {tps:,.0f} | {batch * shape['context_length'] / tps * 1e3:.1f} | "
                     f"{fastest * 1e3:.0f} / {slowest * 1e3:.0f} | {tps * flops / 1e9:.1f} |")
    lines += ["", "| ratio | x |", "|---|---:|"]
    lines += [f"| {label} | {_ratio(rows, a, b)} |" for label, a, b in pairs]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module", autouse=True)
def _write_summaries(request):
    yield
    timer = str(request.config.getoption("benchmark_timer", None) or "time.perf_counter")
    min_rounds = request.config.getoption("benchmark_min_rounds", None) or 5
    out_dir = ROOT / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    if _results["cpu"]:
        pairs = [("eager: lmfast / HF", "lmfast eager", "hf eager"),
                 ("compiled: lmfast / HF", "lmfast compiled", "hf compiled"),
                 ("defaults (eager on CPU, the trainer's compile: auto): lmfast / HF", "lmfast eager", "hf eager"),
                 ("best of each: lmfast compiled / HF eager", "lmfast compiled", "hf eager"),
                 ("lmfast: compiled / eager", "lmfast compiled", "lmfast eager"),
                 ("HF: compiled / eager", "hf compiled", "hf eager")]
        text = _summary("cpu", "Training step on CPU: lmfast vs HF LlamaForCausalLM (fp32)", CPU_SHAPE, CPU_BATCH,
                        pairs, timer, min_rounds)
        (out_dir / "train_step_cpu.md").write_text(text)
    if _results["cuda"]:
        shape, batch = _gpu_shape()
        pairs = [(f"{mode}: lmfast-{b} / HF", f"lmfast-{b} {mode}", f"hf {mode}")
                 for mode in ("eager", "compiled") for b in ("reference", "fused")]
        pairs.append(("compiled: lmfast-fused / lmfast-reference", "lmfast-fused compiled",
                      "lmfast-reference compiled"))
        text = _summary("cuda", f"Training step on {torch.cuda.get_device_name()}: lmfast vs HF (bf16 autocast)",
                        shape, batch, pairs, timer, min_rounds)
        mfu = [f"| {name} | {tps * _flops_per_token(shape) / H100_BF16_DENSE_FLOPS:.1%} |"
               for name, tps in _results["cuda"].items()]
        text += "\n| provider | MFU vs 989 TFLOPS |\n|---|---:|\n" + "\n".join(mfu) + "\n"
        slug = re.sub(r"[^a-z0-9]+", "_", torch.cuda.get_device_name().lower()).strip("_")
        (out_dir / f"train_step_{slug}.md").write_text(text)


def test_flops_per_token_formula_matches_the_model():
    model = TransformerLM(**CPU_SHAPE, backend="reference", device="meta")
    assert math.isclose(_flops_per_token(CPU_SHAPE), model.flops_per_token())
