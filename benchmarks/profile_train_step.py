"""Where a CPU training step spends its time: torch.profiler self time per op, grouped, lmfast vs HF Llama.

    OMP_NUM_THREADS=1 python benchmarks/profile_train_step.py [--steps 3] [--out benchmarks/results]

Profiles the steps of benchmarks/bench_train_step.py (same models, loss, clipping and optimizer; eager) at both CPU
shapes (d256, d512), fp32 and bf16 autocast, and writes ``train_step_cpu_profile.md``: per configuration, the self
CPU time of every aten op summed into groups (matmuls, attention, casts and copies, softmax/cross-entropy,
elementwise, optimizer, allocation) in ms per step. One thread keeps the split readable on a shared machine
(with two, time spent waiting for a descheduled thread lands in whichever op was running); the profiler adds a
little time to every op, so the total exceeds an unprofiled step.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from pathlib import Path

import bench_train_step as bench  # the benchmark's models and steps, not a copy of them
import torch
from _machine import commit, cpu_name
from torch.profiler import ProfilerActivity, profile

from lmfast.model.precision import cpu_bf16_native

GROUPS = {  # group -> aten op names (without "aten::"); anything else is "other"
    "matmul": {"mm", "bmm", "addmm", "addmm_", "baddbmm"},
    "attention (SDPA)": set(),  # every op with scaled_dot_product in its name
    "casts and copies": {"copy_", "_to_copy", "clone", "contiguous"},
    "softmax / cross-entropy": {"_log_softmax", "_log_softmax_backward_data", "log_softmax", "nll_loss_forward",
                                "nll_loss_backward", "exp", "exp_", "gather", "index_put_", "_index_put_impl_"},
    "elementwise (norms, RoPE, SiLU, residual adds, clipping)": {
        "mul", "mul_", "add", "add_", "sub", "sub_", "div", "div_", "sum", "mean", "pow", "rsqrt", "neg", "silu",
        "silu_backward", "cat", "stack", "linalg_vector_norm", "_foreach_norm", "_foreach_mul_", "clamp", "where",
        "masked_fill", "reciprocal", "sqrt", "view_as_real", "view_as_complex", "complex", "cos", "sin",
        "index_select", "embedding_dense_backward", "embedding", "addcmul", "addcmul_", "lerp_"},
    "optimizer (fused AdamW)": {"_fused_adamw_"},
    "allocation and fills": {"empty", "empty_strided", "empty_like", "zeros", "zeros_like", "fill_", "zero_"},
}


def _group(name: str) -> str:
    op = name.removeprefix("aten::")
    if "scaled_dot_product" in op:
        return "attention (SDPA)"
    for group, ops in GROUPS.items():
        if op in ops:
            return group
    return "other (views, autograd, dispatch)"


def profile_step(shape_name: str, dtype: str, provider: str, steps: int) -> dict[str, float]:
    """ms per step of each group's self CPU time."""
    shape, batch = bench.CPU_SHAPES[shape_name]
    step, _ = bench._make_step(provider, "eager", shape, batch, "cpu", bench.CPU_DTYPES[dtype])
    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    groups: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        groups[_group(event.key)] += event.self_cpu_time_total / 1e3 / steps
    return dict(groups)


def _table(results: dict[str, dict[str, float]]) -> list[str]:
    names = list(results)
    order = [*GROUPS, "other (views, autograd, dispatch)"]
    lines = ["| group | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for group in order:
        cells = []
        for name in names:
            ms, total = results[name].get(group, 0.0), sum(results[name].values())
            cells.append(f"{ms:,.0f} ({ms / total:.0%})")
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    lines.append("| **total** | " + " | ".join(f"**{sum(r.values()):,.0f}**" for r in results.values()) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="profiled steps per configuration (after 2 warm-up)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    amx = "AMX bf16" if cpu_bf16_native()[0] else "no AMX"
    cmd = "python benchmarks/profile_train_step.py" + (f" --steps {args.steps}" if args.steps != 3 else "")
    if threads != (os.cpu_count() or 1):
        cmd = f"OMP_NUM_THREADS={threads} {cmd}"
    lines = ["# Where a CPU training step spends its time: lmfast vs HF LlamaForCausalLM", "",
             f"Machine: {cpu_name()} ({os.cpu_count()} cores, {amx}), {threads} torch thread(s); torch "
             f"{torch.__version__}; commit {commit()}.",
             f"Command: `{cmd}`. Self CPU time of each aten op under torch.profiler, summed into groups, ms per "
             f"step (mean of {args.steps} steps after 2 warm-up); the step is benchmarks/bench_train_step.py's "
             "(eager). Profiling adds a little to every op."]
    for shape_name in bench.CPU_SHAPES:
        results = {}
        for dtype in bench.CPU_DTYPES:
            for provider in ("lmfast", "hf"):
                results[f"{provider} {dtype}"] = profile_step(shape_name, dtype, provider, args.steps)
                print(f"{shape_name} {provider} {dtype}: {sum(results[f'{provider} {dtype}'].values()):,.0f} ms/step",
                      file=sys.stderr)
        shape, batch = bench.CPU_SHAPES[shape_name]
        lines += ["", f"## {shape_name}", "", f"Shape: {shape}, batch {batch}.", "", *_table(results)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_step_cpu_profile.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'train_step_cpu_profile.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
