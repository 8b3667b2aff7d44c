"""The cost of document masking: a training step with ``doc_ids`` (SDPA with a block-diagonal causal mask, RoPE
positions restarting per document) against the same step without, at the quickstart shape, interleaved.

    OMP_NUM_THREADS=1 python benchmarks/document_masking.py --out benchmarks/results/document_masking_cpu.md

Each round runs one masked and one unmasked step (forward, backward, AdamW) on the same batch, timed by the
process's CPU time (one thread), so the VM's drifting speed hits both alike; the ratio is the median of the rounds'.
The batch is packed documents of 20-200 tokens (mean ~110), each ending in the end-of-text token, as
``document_masking: true`` trains on.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import commit, cpu_name  # noqa: E402

from lmfast.model import TransformerLM  # noqa: E402
from lmfast.model.functional import document_ids  # noqa: E402
from lmfast.model.precision import auto_autocast_dtype  # noqa: E402
from lmfast.train.optim import AdamW  # noqa: E402

QUICKSTART = dict(vocab_size=1024, context_length=128, d_model=192, num_layers=4, num_heads=6, d_ff=512,
                  rope_theta=10000.0)
BATCH, EOT = 16, 0


def _packed_batch(gen: torch.Generator) -> torch.Tensor:
    rows = []
    for _ in range(BATCH):
        row = []
        while len(row) < QUICKSTART["context_length"] + 1:
            n = int(torch.randint(20, 200, (1,), generator=gen))
            row += torch.randint(1, 1024, (n,), generator=gen).tolist() + [EOT]
        rows.append(row[: QUICKSTART["context_length"] + 1])
    return torch.tensor(rows)


def _step(model, opt, x, y, doc_ids, dtype) -> float:
    start = time.process_time()
    with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        loss = model(x, targets=y, doc_ids=doc_ids)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.process_time() - start


def measure(dtype, rounds: int) -> dict:
    torch.manual_seed(0)
    models = {m: TransformerLM(**QUICKSTART, backend="reference") for m in ("masked", "plain")}
    opts = {m: AdamW(model.parameters(), lr=1e-3) for m, model in models.items()}
    both = _packed_batch(torch.Generator().manual_seed(1))
    x, y = both[:, :-1], both[:, 1:]
    ids = document_ids(x, EOT)
    times = {"masked": [], "plain": []}
    for r in range(rounds + 2):
        for m in ("masked", "plain") if r % 2 else ("plain", "masked"):
            t = _step(models[m], opts[m], x, y, ids if m == "masked" else None, dtype)
            if r >= 2:  # two warm-up rounds
                times[m].append(t)
    ratios = [a / b for a, b in zip(times["masked"], times["plain"], strict=True)]
    return {"masked": statistics.median(times["masked"]), "plain": statistics.median(times["plain"]),
            "ratio": statistics.median(ratios), "lo": min(ratios), "hi": max(ratios),
            "docs": float((x == EOT).sum(dim=1).float().mean()) + 1}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.set_num_threads(1)
    bf16 = auto_autocast_dtype(torch.device("cpu"))[0]
    rows = []
    for name, dtype in (("float32", None), *((("bfloat16 autocast (dtype auto here)", bf16),) if bf16 else ())):
        r = measure(dtype, args.rounds)
        tok = BATCH * QUICKSTART["context_length"]
        rows.append(f"| {name} | {r['plain'] * 1e3:.1f} ms ({tok / r['plain']:,.0f} tok/s) | "
                    f"{r['masked'] * 1e3:.1f} ms ({tok / r['masked']:,.0f} tok/s) | **{r['ratio']:.3f}×** | "
                    f"{r['lo']:.3f}-{r['hi']:.3f} |")
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    text = "\n".join([
        "# Document masking on CPU: the masked training step against the unmasked one, quickstart shape", "",
        f"Machine: {cpu_name()} ({os.cpu_count()} cores); Python {sys.version.split()[0]}, torch {torch.__version__}; "
        f"commit {commit()}; load average (1, 5, 15 min) at the end {load}.",
        f"Command: `OMP_NUM_THREADS=1 python benchmarks/document_masking.py --rounds {args.rounds}` (one thread, "
        "CPU time per step, masked and unmasked interleaved; median of the rounds).", "",
        f"Shape: {QUICKSTART}, batch {BATCH}; {r['docs']:.1f} documents per 128-token window on average.", "",
        "| dtype | unmasked step | masked step | masked / unmasked (median) | lowest-highest round |",
        "|---|---:|---:|---:|---:|", *rows, ""])
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
