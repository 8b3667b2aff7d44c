"""Name the machine in every saved benchmark: GPU model (or CPU), driver, torch/triton versions, git commit.

pytest-benchmark calls ``pytest_benchmark_update_machine_info`` once per session (the result lands in the
JSON's ``machine_info``), and the autouse fixture below copies the same facts into each benchmark's
``extra_info``, so a single benchmark row read out of context still says where it ran.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from _machine import commit, cpu_name, run, version

ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def machine() -> dict[str, str]:
    """The facts every benchmark result carries (strings, JSON-ready)."""
    info = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_name(),
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "triton": version("triton"),
        "cuda": str(torch.version.cuda),
        "commit": commit(),
    }
    if torch.cuda.is_available():
        driver = run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        info["driver"] = (driver.splitlines() or ["unknown"])[0]
    return info


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["lmfast"] = machine()


def _time_gbps(benchmark, step, bytes_per_step: float, reps: int = 10, rounds: int = 20) -> float | None:
    """Time ``step`` (one pass of one provider) with pytest-benchmark and record effective GB/s in ``extra_info``.

    Each timed call launches ``step`` ``reps`` times and then synchronizes once, so the sync latency is shared
    by many launches; ``bytes_per_step`` is the op's minimum memory traffic (the same for every provider), so
    GB/s compares providers directly. Returns GB/s, or None under ``--benchmark-disable`` (nothing timed).
    """

    def run():
        for _ in range(reps):
            step()
        torch.cuda.synchronize()

    run()  # compile / autotune outside the timed rounds
    benchmark.pedantic(run, rounds=rounds, warmup_rounds=2, iterations=1)
    if benchmark.stats is None:
        return None
    gbps = bytes_per_step * reps / benchmark.stats.stats.median / 1e9
    benchmark.extra_info.update(gbps=round(gbps, 1), bytes_per_step=int(bytes_per_step), reps_per_round=reps)
    return gbps


@pytest.fixture
def time_gbps():
    """``time_gbps(benchmark, step, bytes_per_step, reps=10, rounds=20)``: see :func:`_time_gbps`."""
    return _time_gbps


@pytest.fixture(autouse=True)
def _name_the_machine(request):
    if "benchmark" in request.fixturenames:
        request.getfixturevalue("benchmark").extra_info.update(machine())
    yield
