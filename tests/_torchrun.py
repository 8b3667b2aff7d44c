"""Test helpers for runs under torchrun: a tiny config, its text, a two-rank launch, the losses a run logged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

__all__ = ["WORLD", "BATCH", "ACCUM", "STEPS", "TINY", "text", "torchrun", "write_config", "losses", "make_data"]

WORLD, BATCH, ACCUM, STEPS = 2, 8, 2, 12
TINY = dict(vocab_size=256, context_length=32, d_model=64, num_layers=2, num_heads=4, d_ff=128, batch_size=BATCH,
            gradient_accumulation_steps=ACCUM, max_steps=STEPS, warmup_iters=4, cosine_cycle_iters=40,
            max_learning_rate=3e-3, min_learning_rate=1e-4,
            checkpoint_interval=1, checkpoint_steps=1, log_interval=1, eval_iters=2, compile="false", progress=False,
            dtype="float32")  # ranks vs one process to 1e-5: fp32 even on CPUs where dtype auto picks bf16 (AMX)


def text(n_lines: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    words = ["to be", "or not", "that is", "the question", "whether", "tis nobler", "in the mind", "to suffer"]
    return "\n".join(" ".join(rng.choice(words, 6)) for _ in range(n_lines)) + "\n"


def make_data(root: Path) -> None:
    (root / "train.txt").write_text(text(400, seed=0))
    (root / "val.txt").write_text(text(100, seed=1))


def torchrun(args: list[str], cwd: Path, timeout: int = 180) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=WORLD *args`` in ``cwd``, free of an outer run's variables."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def write_config(root: Path, name: str, run_dir: str = "ck", **overrides) -> Path:
    """``root/name``: the tiny config over ``root``'s data, writing to ``root/run_dir``."""
    cfg = {**TINY, "train_data_path": str(root / "train.txt"), "val_data_path": str(root / "val.txt"),
           "checkpoint_dir": str(root / run_dir), "log_file": str(root / run_dir / "train.log"),
           "cache_dir": str(root / "cache"), **overrides}
    path = root / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def losses(run_dir: Path) -> dict[int, float]:
    """Step -> train loss from ``run_dir/metrics.jsonl``; a step logged twice (by two ranks?) fails."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert len(steps) == len(set(steps)), f"a step was logged twice (by two ranks?): {steps}"
    return {r["step"]: r["loss"] for r in records if "loss" in r}
