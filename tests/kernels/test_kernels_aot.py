"""Every Triton kernel configuration compiles ahead of time for sm_80 and sm_90, without a GPU, within its target.

The compile needs the real Triton compiler, not the interpreter this test session may have switched on, so
benchmarks/aot_report.py runs in a subprocess with TRITON_INTERPRET removed from its environment. To stay within
the suite's time, the test builds the bf16 configurations (fp16 and fp32 ones compile to the same registers and
shared memory), attention's with documents on only (``--quick``: the same tiles with the most live values); the
committed reports in benchmarks/results/ hold every build, for the installed triton and the GPU image's 3.6.
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

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"

pytestmark = [requires_triton, pytest.mark.slow]


@pytest.fixture(scope="module")
def aot_report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("aot")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # This tree's kernels, also from an uninstalled copy (the GPU machine's): `python benchmarks/aot_report.py` puts
    # benchmarks/ first on sys.path, not the root that holds lmfast/.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    jobs = str(min(8, os.cpu_count() or 1))
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "aot_report.py"), "--out", str(out), "--jobs", jobs,
                           "--dtype", "bf16", "--quick"], env=env, capture_output=True, text=True, timeout=900)
    reports = sorted(out.glob("aot_registers_triton-*.json"))
    if len(reports) != 1:
        pytest.fail(f"aot_report.py wrote {len(reports)} reports (exit {proc.returncode}):\n{proc.stdout}\n"
                    f"{proc.stderr[-4000:]}")
    report = json.loads(reports[0].read_text())
    report["markdown"] = reports[0].with_suffix(".md").read_text()
    report["exit_code"] = proc.returncode
    return report


def test_every_kernel_module_lists_its_configurations(aot_report):
    assert aot_report["module_errors"] == {}
    modules = {r["module"] for r in aot_report["results"]}
    assert {"rmsnorm", "add_rmsnorm", "rope", "attention", "adamw", "linear_cross_entropy"} <= modules


def test_every_configuration_compiles_for_each_target_that_launches_it(aot_report):
    # Most configurations run on sm_80 and sm_90 alike; attention's tables are per generation, each built for its own.
    failures = [f"{r['name']} on {r['target']}: {r['error']}" for r in aot_report["results"] if not r["ok"]]
    assert failures == []
    targets = defaultdict(set)
    for r in aot_report["results"]:
        targets[(r["module"], r["name"])].add(r["target"])
    assert targets and all(t == {"sm_80", "sm_90"} for (m, _), t in targets.items() if m != "attention")
    assert set().union(*(t for (m, _), t in targets.items() if m == "attention")) == {"sm_80", "sm_90"}


def test_attention_builds_every_padded_head_dim_exact_and_masked(aot_report):
    from lmfast.kernels import attention

    names = {r["name"] for r in aot_report["results"] if r["module"] == "attention"}
    for head_dim in (32, 64, 128, 256, *attention.AOT_MASKED_HEAD_DIMS):
        for rope in (0, 1):
            assert any(f" HEAD_DIM={head_dim} " in n and f" ROPE={rope} " in n for n in names), (head_dim, rope)


def test_no_configuration_spills_overflows_shared_memory_or_passes_168_registers_on_sm90_unexplained(aot_report):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from aot_report import problems
    finally:
        sys.path.remove(str(BENCHMARKS))
    assert problems(aot_report) == []
    assert aot_report["exit_code"] == 0


def test_report_reads_dynamic_shared_memory_against_each_targets_limit(aot_report):
    # cuobjdump's SHARED column is static shared memory only (1 KiB for every attention kernel); the report reads
    # what each kernel asks for at launch, 10-130 KiB for attention's software-pipelined tiles.
    attention = [r for r in aot_report["results"] if r["module"] == "attention" and r["ok"]]
    assert max(r["dynamic_shared_bytes"] for r in attention) > 16 * 1024
    limits = {r["target"]: r["shared_limit_bytes"] for r in aot_report["results"] if r["ok"]}
    assert limits == {"sm_80": 99 * 1024, "sm_90": 227 * 1024}


def test_report_tables_every_compile(aot_report):
    rows = [line for line in aot_report["markdown"].splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == aot_report["total"] + 1  # header + one row per compile
