"""The facts every benchmark result names: CPU model, package versions, the git commit.

Imported by the benchmark modules, their conftest and aot_report.py (pytest and ``python benchmarks/...`` both put
this folder on ``sys.path``).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(cmd: list[str]) -> str:
    """stdout of ``cmd`` run in the repository root, or ``"unknown"`` when it cannot run."""
    try:
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True, timeout=20).stdout.strip()
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return "unknown"


def commit() -> str:
    """The commit measured: ``$LMFAST_COMMIT`` when given (a copy of the repo without ``.git``, as the GPU machine
    gets, cannot know it), else the short commit with ``-dirty`` when tracked files have uncommitted changes
    (numbers not of HEAD alone), else ``"unknown"``."""
    given = os.environ.get("LMFAST_COMMIT", "").strip()
    if given or not (ROOT / ".git").exists():  # a copy inside some other repository must not name that one's commit
        return given or "unknown"
    return run(["git", "describe", "--always", "--dirty"])


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def version(package: str) -> str:
    """An installed distribution's version, or ``"not installed"``."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def slug(name: str) -> str:
    """A device name as a file-name part: ``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia_h100_80gb_hbm3"``."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def timer_and_rounds(config, default_rounds: int) -> tuple[str, int]:
    """The pytest-benchmark timer and minimum rounds a run was given, for the command a result file names."""
    timer = str(config.getoption("benchmark_timer", None) or "time.perf_counter")
    return timer, config.getoption("benchmark_min_rounds", None) or default_rounds


def results_dir() -> Path:
    """benchmarks/results, where every benchmark writes its Markdown summary (created if missing)."""
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    return out
