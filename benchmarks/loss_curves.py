"""Train one config twice, fused and reference ops, on the same data and initialisation, and compare the loss curves.

    python benchmarks/loss_curves.py --out DIR [--config tinystories_17m] [--steps 200] [--device cuda]

Both runs go through the real trainer (:mod:`lmfast.train`) with bf16 autocast and without torch.compile (the
kernels are the thing compared; compiling adds minutes of cold start), on a learnable Markov-chain token file
(benchmarks/_gpu_runs.py) so the loss falls several nats instead of sitting at ln(vocab). Same seed, same batches,
same initial weights: the curves differ only by what the backends compute differently (the Triton kernels and
AdamW step against PyTorch's ops and foreach AdamW, both in bf16 autocast), which stays small while training goes
the same way and grows if a kernel is wrong.

Writes ``DIR/loss_curves.json``: both curves, and a verdict with its numbers: each run learned (its last 20 steps
average at least 2 nats below its first step), the curves agree over the first 20 steps (max |difference| <=
0.05 nats) and at the end (means of the last 50 steps within 0.05 nats + 1%).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
from _gpu_runs import build_trainer, dry_run, markov_entropy, markov_tokens

EARLY, LATE = 20, 50
EARLY_TOL, LATE_TOL, LATE_REL = 0.05, 0.05, 0.01
MIN_DROP = 2.0


def _curve(config: str, tokens: Path, work: Path, backend: str, steps: int, device: str) -> dict:
    started = time.perf_counter()
    trainer = build_trainer(config, tokens, work / backend, device, backend=backend, dtype="bfloat16",
                            compile="false", max_steps=steps, warmup_iters=min(20, steps), cosine_cycle_iters=steps)
    losses, norms = [], []
    for step in range(steps):
        loss, norm, _ = trainer.train_step(step)
        losses.append(loss.item())
        norms.append(float(norm))
    return {"backend": trainer.model.ops.name, "optimizer_fused": trainer.optimizer.param_groups[0]["fused"],
            "losses": losses, "grad_norms": norms, "seconds": round(time.perf_counter() - started, 1)}


def compare(fused: list[float], reference: list[float]) -> dict:
    """The verdict on two loss curves of one run (see the module docstring for the thresholds)."""
    n = min(len(fused), len(reference))
    diffs = [abs(a - b) for a, b in zip(fused[:n], reference[:n], strict=True)]
    early = max(diffs[:EARLY], default=math.nan)
    late_f, late_r = (sum(c[n - LATE:n]) / LATE for c in (fused, reference)) if n >= LATE else (math.nan, math.nan)
    learned = [c[0] - sum(c[n - EARLY:n]) / EARLY >= MIN_DROP for c in (fused, reference)] if n >= EARLY else [False]
    late_ok = abs(late_f - late_r) <= LATE_TOL + LATE_REL * abs(late_r)
    return {"steps": n, "max_abs_diff_first_20": early, "max_abs_diff": max(diffs, default=math.nan),
            "mean_last_50": {"fused": late_f, "reference": late_r}, "both_learned": all(learned),
            "agree_early": early <= EARLY_TOL, "agree_late": late_ok,
            "passed": all(learned) and early <= EARLY_TOL and late_ok}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--config", default="tinystories_17m")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dry-run", action="store_true", help="import what the run uses, run nothing")
    args = parser.parse_args(argv)
    if args.dry_run:
        return dry_run("loss_curves")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("loss_curves: no CUDA device; nothing run", file=sys.stderr)
        return 3
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        import yaml

        vocab = yaml.safe_load((Path(__file__).resolve().parent.parent / "configs" / f"{args.config}.yaml")
                               .read_text())["vocab_size"]
        tokens = markov_tokens(work / "tokens.npy", vocab, 2_000_000)
        runs = {backend: _curve(args.config, tokens, work, backend, args.steps, args.device)
                for backend in ("fused", "reference")}
    result = {"config": args.config, "steps": args.steps, "dtype": "bfloat16", "compile": False,
              "chain_entropy_nats": markov_entropy(), "runs": runs,
              "verdict": compare(runs["fused"]["losses"], runs["reference"]["losses"])}
    (args.out / "loss_curves.json").write_text(json.dumps(result, indent=1) + "\n")
    v = result["verdict"]
    print(f"loss_curves: {'PASS' if v['passed'] else 'FAIL'}; first-20 max |diff| {v['max_abs_diff_first_20']:.4f}, "
          f"last-50 means fused {v['mean_last_50']['fused']:.4f} reference {v['mean_last_50']['reference']:.4f}")
    return 0 if v["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
