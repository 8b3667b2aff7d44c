"""benchmarks/gpu_check.sh walks every stage in order and writes its results after each one, without a GPU too.

On a machine without CUDA the preflight runs and says so, and every GPU stage is recorded as skipped, in order; with
a budget too small for any stage every stage is recorded as skipped for the budget. Either way the three result
files exist, as they would after a run cut short on a GPU. The verdict of the loss-curve comparison and the
target table are checked on made-up numbers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["preflight", "gpu_tests", "loss_curves", "train_step", "kernels"]

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA walk")


def _run(tmp_path: Path, budget: str) -> dict:
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "GPU_CHECK_BUDGET_S": budget}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_check.json", "gpu_check.md", "gpu_check_logs.tar.gz"]
    return json.loads((tmp_path / "gpu_check.json").read_text()) | {"stdout": proc.stdout,
                                                                    "md": (tmp_path / "gpu_check.md").read_text()}


def test_without_cuda_every_stage_is_walked_in_order_and_the_gpu_ones_say_why_they_were_skipped(tmp_path):
    summary = _run(tmp_path, "460")
    assert [s["name"] for s in summary["stages"]] == STAGES
    preflight, *gpu_stages = summary["stages"]
    assert preflight["status"] == "ok" and preflight["machine"]["cuda_available"] is False
    assert preflight["checks"]["cuda"].startswith("not available")
    assert all(s["status"] == "skipped" and "no CUDA" in s["reason"] for s in gpu_stages)
    titles = [line for line in summary["md"].splitlines() if line.startswith("## ")]
    assert [t.rsplit(": ", 1)[0] for t in titles] == [f"## {s['title']}" for s in summary["stages"]]
    assert summary["stdout"].count("s of budget left") == 2 * len(STAGES) - 4  # each stage run prints it twice
    with tarfile.open(tmp_path / "gpu_check_logs.tar.gz") as tar:
        assert "logs/preflight.log" in tar.getnames() and "logs/preflight.json" in tar.getnames()


def test_a_budget_too_small_for_any_stage_still_writes_every_stage_as_skipped(tmp_path):
    summary = _run(tmp_path, "5")
    assert [s["name"] for s in summary["stages"]] == STAGES
    assert all(s["status"] == "skipped" and "of the budget left" in s["reason"] for s in summary["stages"])


def _benchmarks_module(name):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_loss_curve_verdict_passes_close_learning_curves_and_fails_diverging_or_flat_ones():
    compare = _benchmarks_module("loss_curves").compare
    falling = [9.2 - 6.0 * (1 - 0.98**i) for i in range(200)]
    assert compare(falling, [x + 0.01 for x in falling])["passed"]
    assert not compare(falling, [x + 0.01 + 0.002 * i for i, x in enumerate(falling)])["passed"]  # drifts apart
    assert not compare([9.2] * 200, [9.2] * 200)["passed"]  # nothing learned: the comparison would mean nothing


def test_target_table_reads_ratios_and_mfu_from_the_stages():
    gpu_check = _benchmarks_module("gpu_check")
    kernels = gpu_check.Stage("kernels", "", 1, 1)
    kernels.record = {"rows": [
        {"group": "rmsnorm fwd+bwd hidden=768", "provider": "fused", "value": 1500.0},
        {"group": "rmsnorm fwd+bwd hidden=768", "provider": "compiled", "value": 1000.0},
        {"group": "attention fwd+bwd head_dim=64 seq=1024", "provider": "fused", "value": 300.0},
        {"group": "attention fwd+bwd head_dim=64 seq=1024", "provider": "flash", "value": 400.0},
    ]}
    train = gpu_check.Stage("train_step", "", 1, 1)
    train.record = {"rows": [{"config": "gpt2_124m", "provider": "lmfast fused+compiled", "mfu": 0.5}]}
    found = {t["target"]: (t["value"], t["met"]) for t in gpu_check.targets([kernels, train])}
    assert found == {"rmsnorm fwd+bwd hidden=768: fused / compiled >= 1.2": (1.5, True),
                     "attention fwd+bwd head_dim=64 seq=1024: fused / flash >= 0.9": (0.75, False),
                     "gpt2_124m lmfast fused+compiled: MFU >= 45%": (0.5, True)}
