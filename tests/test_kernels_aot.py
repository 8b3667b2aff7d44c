"""Every Triton kernel configuration compiles ahead of time for sm_80 and sm_90, without a GPU, and none spills.

The compile needs the real Triton compiler, not the interpreter this test session may have switched on, so
benchmarks/aot_report.py runs in a subprocess with TRITON_INTERPRET removed from its environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from _kernel_utils import requires_triton

REPORT = Path(__file__).resolve().parents[1] / "benchmarks" / "aot_report.py"

pytestmark = [requires_triton, pytest.mark.slow]


@pytest.fixture(scope="module")
def aot_report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("aot")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    jobs = str(min(8, os.cpu_count() or 1))
    proc = subprocess.run([sys.executable, str(REPORT), "--out", str(out), "--jobs", jobs], env=env,
                          capture_output=True, text=True, timeout=600)
    if not (out / "aot_registers.json").exists():
        pytest.fail(f"aot_report.py wrote no report (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}")
    report = json.loads((out / "aot_registers.json").read_text())
    report["markdown"] = (out / "aot_registers.md").read_text()
    return report


def test_every_kernel_module_lists_its_configurations(aot_report):
    assert aot_report["module_errors"] == {}
    modules = {r["module"] for r in aot_report["results"]}
    assert modules == {"rmsnorm", "rope", "attention", "adamw"}


def test_every_configuration_compiles_for_sm80_and_sm90(aot_report):
    failures = [f"{r['name']} on {r['target']}: {r['error']}" for r in aot_report["results"] if not r["ok"]]
    assert failures == []
    targets = defaultdict(set)
    for r in aot_report["results"]:
        targets[r["name"]].add(r["target"])
    assert targets and all(t == {"sm_80", "sm_90"} for t in targets.values())


def test_no_configuration_spills_registers_unless_its_module_accepts_it(aot_report):
    spills = [f"{r['name']} on {r['target']}: {r['spill_bytes']} bytes" for r in aot_report["results"]
              if r["ok"] and r["spill_bytes"] and not r["spill_allowed"]]
    assert spills == []


def test_report_tables_registers_for_every_compile(aot_report):
    rows = [line for line in aot_report["markdown"].splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == aot_report["total"] + 1  # header + one row per compile
