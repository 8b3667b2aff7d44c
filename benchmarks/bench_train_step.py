"""One full training step, lmfast vs Hugging Face ``LlamaForCausalLM`` of the same shape, in tokens/s.

    pytest benchmarks/bench_train_step.py --benchmark-only --benchmark-min-rounds=5

A step is: forward, mean cross-entropy, backward, global-norm clipping at 1.0, AdamW step (lr 1e-3, betas
(0.9, 0.95), weight decay 0.1), on one fixed random batch. lmfast runs what its trainer runs by default: the
loss from the final hidden states and the LM head weight through ``ops.linear_cross_entropy`` (``fused_loss:
true``), ``lmfast.optim.clip_grad_norm_`` and ``lmfast.optim.AdamW`` (PyTorch's fused kernel on CPU). HF gets
its best settings: ``torch.optim.AdamW(fused=True)``, ``torch.nn.utils.clip_grad_norm_(foreach=True)``, HF's
default SDPA attention, and ``F.cross_entropy`` on the logits upcast to fp32 (what its own loss does). Both
models are built with the same shape (untied head, no biases, num_key_value_heads = num_heads, rms_norm_eps
1e-5) and hold the same number of parameters.

* CPU, two shapes: ``d256`` (vocab 4096, context 128, d_model 256, 4 layers, 8 heads, d_ff 704, batch 16 → 2048
  tokens a step) and ``d512`` (the config defaults: vocab 10000, context 256, d_model 512, 4 layers, 16 heads,
  d_ff 1344, batch 8 → 2048 tokens), each eager and ``torch.compile``d (model + loss; inductor's C++ backend;
  ``-k eager`` leaves those out, they take minutes to compile). lmfast's defaults are its eager step in the dtype
  ``dtype: auto`` picks here: bf16 autocast where the CPU has AMX (:mod:`lmfast.model.precision`), else fp32.
  The four steps of a shape and mode (lmfast and HF, fp32 and under bf16 autocast) are measured interleaved:
  each round runs each once, in a rotating order, and every ratio is the median over rounds of that round's
  ratio. On a machine shared with other jobs the same step's time drifts by 30-50% over minutes (on this
  workplace's VMs even its CPU time), which steps measured one after another cannot cancel and interleaved
  rounds do. Wall-clock time with two OpenMP threads swings by 2-5x there (every parallel region waits for a
  descheduled thread); one thread timed by the process's CPU time is steadier. A Markdown summary per shape
  (CPU, AMX or not, versions, commit, tokens/s, ratios, the command, threads, timer and load average) is
  written to benchmarks/results/train_step_cpu.md:

      OMP_NUM_THREADS=1 pytest benchmarks/bench_train_step.py --benchmark-only --benchmark-min-rounds=7 \
          --benchmark-timer=time.process_time

* CUDA (skipped without a GPU), the shape of configs/tinystories_17m.yaml, bf16 autocast: providers ``hf``,
  ``lmfast-reference`` (plain-PyTorch ops, multi-tensor AdamW) and ``lmfast-fused`` (Triton ops and AdamW) × eager /
  compiled, with tokens/s and MFU (against the GPU's dense bf16 peak from :mod:`lmfast.train.mfu`; left out for a GPU
  its table does not know) in ``extra_info`` and a summary in
  benchmarks/results/train_step_<gpu>.md.

Training FLOPs per token are ``6 N + 12 L d T`` (N non-embedding parameters including the LM head; the
attention term as in the CS336 handout, counting the full T x T score matrix).
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from _machine import commit, cpu_name, results_dir, slug, timer_and_rounds

from lmfast.model import TransformerLM
from lmfast.model.precision import auto_autocast_dtype, cpu_bf16_native
from lmfast.optim import AdamW, clip_grad_norm_
from lmfast.train.mfu import device_peak_flops, mfu

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parent.parent
CPU_SHAPES = {  # name -> (shape, batch)
    "d256": (dict(vocab_size=4096, context_length=128, d_model=256, num_layers=4, num_heads=8, d_ff=704,
                  rope_theta=10000.0), 16),
    "d512": (dict(vocab_size=10000, context_length=256, d_model=512, num_layers=4, num_heads=16, d_ff=1344,
                  rope_theta=10000.0), 8),
}
CPU_DTYPES = {"fp32": None, "bf16": torch.bfloat16}
OPTIM = dict(lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
_results: dict[str, dict[str, float]] = {}  # "cuda" -> {"provider dtype mode": tokens/s}
_spread: dict[str, tuple[float, float]] = {}  # "cuda provider dtype mode" -> (fastest, slowest) round, s
INTERLEAVED = ("lmfast fp32", "lmfast bf16", "hf fp32", "hf bf16")
_interleaved: dict[tuple[str, str], dict[str, list[float]]] = {}  # (shape, mode) -> {"provider dtype": round s}


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
        opt = torch.optim.AdamW(model.parameters(), **OPTIM, fused=True)

        def clip(params, max_norm):
            return torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)

        def loss_fn(a, b):
            return F.cross_entropy(model(input_ids=a).logits.flatten(0, 1).float(), b.flatten())
    else:
        backend = provider.removeprefix("lmfast-") if provider != "lmfast" else "auto"
        model = TransformerLM(**shape, backend=backend, device=device)
        opt = AdamW(model.parameters(), **OPTIM, fused={"reference": False, "fused": True}.get(backend))
        clip = clip_grad_norm_

        def loss_fn(a, b):  # the trainer's default loss (fused_loss: true)
            return model(a, targets=b)
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


def _check_shape(shape: dict, n_params: int) -> None:
    d, layers, d_ff, vocab = shape["d_model"], shape["num_layers"], shape["d_ff"], shape["vocab_size"]
    assert n_params == 2 * vocab * d + layers * (4 * d * d + 3 * d * d_ff + 2 * d) + d, "models differ in shape"


def _run(benchmark, table: str, provider: str, dtype: str, mode: str, shape: dict, batch: int, autocast) -> float:
    device = table.split()[0]
    step, n_params = _make_step(provider, mode, shape, batch, device, autocast)
    _check_shape(shape, n_params)
    for _ in range(2):  # warm up: compiles, autotunes and allocates optimizer state outside the timed rounds
        step()
    benchmark.group = f"train step {table} {dtype} {mode}"
    benchmark(step)
    tokens_per_s = batch * shape["context_length"] / benchmark.stats.stats.median
    info = dict(tokens_per_s=round(tokens_per_s), tokens_per_step=batch * shape["context_length"], shape=shape,
                batch=batch, autocast=str(autocast), **_machine(device))
    if device == "cuda":
        achieved = mfu(tokens_per_s, _flops_per_token(shape), device_peak_flops("cuda", torch.bfloat16))
        if achieved is not None:
            info["mfu"] = round(achieved, 4)
    benchmark.extra_info.update(info)
    name = f"{provider} {dtype} {mode}"
    _results.setdefault(table, {})[name] = tokens_per_s
    _spread[f"{table} {name}"] = (benchmark.stats.stats.min, benchmark.stats.stats.max)
    return tokens_per_s


@pytest.mark.parametrize("mode", ["eager", "compiled"])
@pytest.mark.parametrize("shape_name", list(CPU_SHAPES))
def test_train_step_tokens_per_second_cpu(benchmark, request, shape_name, mode):
    """lmfast and HF, fp32 and bf16, one step each per round in a rotating order, so that a machine whose speed
    drifts slows all four alike; the summary gives medians of the per-round ratios."""
    shape, batch = CPU_SHAPES[shape_name]
    timer, rounds = timer_and_rounds(request.config, 5)
    clock = time.process_time if timer.endswith("process_time") else time.perf_counter
    steps = {}
    for name in INTERLEAVED:
        provider, dtype = name.split()
        steps[name], n_params = _make_step(provider, mode, shape, batch, "cpu", CPU_DTYPES[dtype])
        _check_shape(shape, n_params)
        steps[name]()  # warm up: compile, allocate the optimizer state and autocast's weight casts outside the rounds
        steps[name]()
    times: dict[str, list[float]] = {name: [] for name in INTERLEAVED}

    def rounds_of_all_four() -> None:
        for r in range(rounds):
            for name in INTERLEAVED[r % 4:] + INTERLEAVED[:r % 4]:
                start = clock()
                steps[name]()
                times[name].append(clock() - start)

    benchmark.group = f"train step cpu {shape_name} {mode} interleaved"
    benchmark.pedantic(rounds_of_all_four, rounds=1, iterations=1)
    assert all(len(t) == rounds for t in times.values())
    _interleaved[shape_name, mode] = times


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", ["eager", "compiled"])
@pytest.mark.parametrize("provider", ["lmfast-reference", "lmfast-fused", "hf"])
def test_train_step_tokens_per_second_cuda(benchmark, provider, mode):
    shape, batch = _gpu_shape()
    if provider == "lmfast-fused":
        pytest.importorskip("triton")
    _run(benchmark, "cuda", provider, "bf16", mode, shape, batch, torch.bfloat16)


# ---------------------------------------------------------------------------------------------- summary


def _machine(device: str) -> dict[str, str]:
    if device == "cuda":
        name = torch.cuda.get_device_name()
    else:
        amx = "AMX bf16" if cpu_bf16_native()[0] else "no AMX"
        name = f"{cpu_name()} ({os.cpu_count()} cores, {amx}), {torch.get_num_threads()} torch thread(s)"
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


def _header(device: str, title: str, timer: str, min_rounds: int) -> list[str]:
    machine = _machine(device)
    return [f"# {title}", "",
            f"Machine: {machine['machine']}; torch {machine['torch']}; transformers {machine['transformers']}; "
            f"commit {machine['commit']}.",
            f"Command: `{_command(device, timer, min_rounds)}` (median of the rounds; timer {timer}); "
            f"load average (1, 5, 15 min) at the end of the run: {_load()}."]


def _table(table: str, shape: dict, batch: int, pairs: list[tuple[str, str, str]]) -> list[str]:
    rows, flops = _results[table], _flops_per_token(shape)
    lines = [f"Shape: {shape}, batch {batch} ({batch * shape['context_length']} tokens a step); "
             f"{flops / 1e6:.1f} MFLOP per token (6N + 12LdT).", "",
             "| provider | tokens/s | ms / step (median) | fastest / slowest round, ms | GFLOP/s |",
             "|---|---:|---:|---:|---:|"]
    for name, tps in rows.items():
        fastest, slowest = _spread[f"{table} {name}"]
        lines.append(f"| {name} | {tps:,.0f} | {batch * shape['context_length'] / tps * 1e3:.1f} | "
                     f"{fastest * 1e3:.0f} / {slowest * 1e3:.0f} | {tps * flops / 1e9:.1f} |")
    lines += ["", "| ratio | x |", "|---|---:|"]
    lines += [f"| {label} | {_ratio(rows, a, b)} |" for label, a, b in pairs]
    return lines


def _interleaved_table(name: str, mode: str) -> list[str]:
    shape, batch = CPU_SHAPES[name]
    times, tokens, flops = _interleaved[name, mode], batch * shape["context_length"], _flops_per_token(shape)
    lines = [f"### {mode}", "", "| provider | tokens/s (median) | ms / step (median) | fastest / slowest round, ms "
             "| GFLOP/s |", "|---|---:|---:|---:|---:|"]
    for provider, t in times.items():
        median = statistics.median(t)
        lines.append(f"| {provider} {mode} | {tokens / median:,.0f} | {median * 1e3:.1f} | "
                     f"{min(t) * 1e3:.0f} / {max(t) * 1e3:.0f} | {tokens / median * flops / 1e9:.1f} |")
    auto = "bf16" if auto_autocast_dtype("cpu")[0] is not None else "fp32"
    pairs = [(f"lmfast defaults (dtype auto = {auto} here) / HF fp32", f"lmfast {auto}", "hf fp32")] * (mode == "eager")
    pairs += [("fp32: lmfast / HF", "lmfast fp32", "hf fp32"), ("bf16: lmfast / HF", "lmfast bf16", "hf bf16"),
              ("lmfast: bf16 / fp32", "lmfast bf16", "lmfast fp32"), ("HF: bf16 / fp32", "hf bf16", "hf fp32")]
    lines += ["", f"| ratio ({mode}) | x (median of rounds) | lowest / highest round |", "|---|---:|---:|"]
    for label, a, b in pairs:
        per_round = [tb / ta for ta, tb in zip(times[a], times[b], strict=True)]
        lines.append(f"| {label} | {statistics.median(per_round):.2f} | "
                     f"{min(per_round):.2f} / {max(per_round):.2f} |")
    return lines


@pytest.fixture(scope="module", autouse=True)
def _write_summaries(request):
    yield
    timer, min_rounds = timer_and_rounds(request.config, 5)
    out_dir = results_dir()
    tables = [name for name in CPU_SHAPES if any((name, mode) in _interleaved for mode in ("eager", "compiled"))]
    if tables:
        lines = _header("cpu", "Training step on CPU: lmfast vs HF LlamaForCausalLM, fp32 and bf16 autocast", timer,
                        min_rounds)
        rounds = len(next(iter(_interleaved.values()))["hf fp32"])
        lines += ["", f"Each shape and mode: {rounds} rounds, each running the four steps back to back in a rotating "
                  "order; tokens/s from the median round of each, ratios the median over rounds of each round's "
                  "ratio (so a machine whose speed drifts slows both sides of a ratio alike)."]
        for name in tables:
            shape, batch = CPU_SHAPES[name]
            lines += ["", f"## {name}", "", f"Shape: {shape}, batch {batch} ({batch * shape['context_length']} tokens "
                      f"a step); {_flops_per_token(shape) / 1e6:.1f} MFLOP per token (6N + 12LdT)."]
            for mode in ("eager", "compiled"):
                if (name, mode) in _interleaved:
                    lines += ["", *_interleaved_table(name, mode)]
        (out_dir / "train_step_cpu.md").write_text("\n".join(lines) + "\n")
    if "cuda" in _results:
        shape, batch = _gpu_shape()
        pairs = [(f"{mode}: lmfast-{b} / HF", f"lmfast-{b} bf16 {mode}", f"hf bf16 {mode}")
                 for mode in ("eager", "compiled") for b in ("reference", "fused")]
        pairs.append(("compiled: lmfast-fused / lmfast-reference", "lmfast-fused bf16 compiled",
                      "lmfast-reference bf16 compiled"))
        lines = _header("cuda", f"Training step on {torch.cuda.get_device_name()}: lmfast vs HF (bf16 autocast)",
                        timer, min_rounds)
        lines += ["", *_table("cuda", shape, batch, pairs)]
        peak = device_peak_flops("cuda", torch.bfloat16)
        if peak is not None:
            flops = _flops_per_token(shape)
            rows = [f"| {name} | {mfu(tps, flops, peak):.1%} |" for name, tps in _results["cuda"].items()]
            lines += ["", f"| provider | MFU vs {peak / 1e12:.0f} TFLOPS (dense bf16) |", "|---|---:|", *rows]
        text = "\n".join(lines) + "\n"
        (out_dir / f"train_step_{slug(torch.cuda.get_device_name())}.md").write_text(text)


@pytest.mark.parametrize("shape_name", list(CPU_SHAPES))
def test_flops_per_token_formula_matches_the_model(shape_name):
    shape = CPU_SHAPES[shape_name][0]
    model = TransformerLM(**shape, backend="reference", device="meta")
    assert math.isclose(_flops_per_token(shape), model.flops_per_token())
