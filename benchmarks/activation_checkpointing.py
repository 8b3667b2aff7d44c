"""Activation checkpointing on CPU at GPT-2 124M's shape: peak memory and step time for none, selective and full.

    python benchmarks/activation_checkpointing.py --out benchmarks/results/activation_checkpointing_cpu.md

Each mode runs in a fresh process: build the model and AdamW, take ``--steps`` training steps (forward with the
chunked loss, backward, AdamW step) of ``--batch`` x 1024 tokens in fp32, and report the process's peak RSS
(``ru_maxrss``), the RSS before the first step (weights and optimizer state, once allocated by a first step, are in
both, so the difference is what the activations add), the median CPU and wall time of a step after the first, and
what ``lmfast/train/memory.py`` estimates for the same config.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import commit, cpu_name  # noqa: E402

GPT2_124M = dict(vocab_size=50304, context_length=1024, d_model=768, num_layers=12, num_heads=12, d_ff=2048,
                 rope_theta=10000.0)
MODES = (("none", 2), ("selective", 2), ("selective", 4), ("full", 1))


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(mode: str, every: int, batch: int, steps: int) -> dict:
    import torch

    from lmfast.model import TransformerLM
    from lmfast.train.config import TrainConfig
    from lmfast.train.memory import estimate_training_memory
    from lmfast.train.optim import AdamW

    torch.manual_seed(0)
    model = TransformerLM(**GPT2_124M, backend="reference")
    model.set_activation_checkpointing(mode, every)
    opt = AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, 50257, (batch, 1025))
    cpu, wall, before = [], [], None
    for i in range(steps):
        if i == 1:
            before = _rss()  # after one full step: weights, gradients and AdamW state all exist
        t0, c0 = time.perf_counter(), time.process_time()
        loss = model(x[:, :-1], targets=x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)  # keep the gradients allocated, so RSS before a step includes them
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    cfg = TrainConfig(**GPT2_124M, batch_size=batch, activation_checkpointing=mode,
                      activation_checkpointing_every=every)
    return {"peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "before": before,
            "cpu": statistics.median(cpu[1:]), "wall": statistics.median(wall[1:]),
            "estimate": estimate_training_memory(cfg).total, "layers": len(model.checkpointed_layers)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", type=Path)
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.batch, args.steps)))
        return
    rows, base = [], None
    for mode, every in MODES:
        out = subprocess.run([sys.executable, __file__, "--batch", str(args.batch), "--steps", str(args.steps),
                              "--child", mode, str(every)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        act = r["peak"] - r["before"]
        base = base or r
        name = mode if mode != "selective" else f"selective, every {every}"
        share = act / (base["peak"] - base["before"])
        rows.append(f"| {name} | {r['layers']} of 12 | {r['peak'] / 2**20:,.0f} MiB | {act / 2**20:,.0f} MiB | "
                    f"{share:.2f}× | {r['cpu']:.1f} s | {r['cpu'] / base['cpu']:.2f}× | {r['wall']:.1f} s | "
                    f"{r['estimate'] / 2**20:,.0f} MiB |")
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    import torch

    text = "\n".join([
        "# Activation checkpointing on CPU at GPT-2 124M's shape: peak memory and step time", "",
        f"Machine: {cpu_name()} ({os.cpu_count()} cores); Python {sys.version.split()[0]}, torch {torch.__version__}; "
        f"commit {commit()}; load average (1, 5, 15 min) at the end {load}.",
        f"Command: `python benchmarks/activation_checkpointing.py --batch {args.batch} --steps {args.steps}` (each "
        "mode in a fresh process; fp32; the step times are medians of the steps after the first).", "",
        f"Shape: {GPT2_124M}; batch {args.batch} x 1024 tokens; fused (chunked) loss.", "",
        "| activation_checkpointing | blocks recomputed | peak RSS | activations (peak - RSS before a step) | vs none "
        "| CPU time a step | vs none | wall time a step | memory.py's estimate |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|", *rows, ""])
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
