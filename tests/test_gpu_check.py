"""benchmarks/gpu_check.sh walks every stage in order and writes its results after each one, without a GPU too.

On a machine without CUDA the preflight runs and says so, and every GPU stage is recorded as skipped, in order; with
a budget too small for any stage every stage is recorded as skipped for the budget. Either way the three result
files exist, as they would after a run cut short on a GPU. The verdict of the loss-curve comparison and the
target table are checked on made-up numbers.

What a lent GPU would fail at is checked here too, on CPU: from an uninstalled copy of the repository, the dry run
(``GPU_CHECK_DRY_RUN=1``) starts every stage as the GPU run does and stage a's pytest commands and every kernel
benchmark collect without an error (a broken import showed only on the GPU once); the stage caps fit the budget;
the test counts survive a stage cut at its cap; stage a finds test files at any depth; the report names the commit
given to a copy without ``.git``. scripts/rehearse_gpu_check.sh runs the same with the GPU image's versions.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["preflight", "gpu_tests", "loss_curves", "train_step", "attention_configs", "kernels"]

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA walk")


def _run(tmp_path: Path, budget: str, root: Path = ROOT, **env: str) -> dict:
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "GPU_CHECK_BUDGET_S": budget, **env}
    proc = subprocess.run(["bash", str(root / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=600)
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
    assert summary["stdout"].count("s of budget left") == len(STAGES) + 1  # a stage that runs prints it twice
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


def _benchmarks(name):
    return _benchmarks_module(name)


def test_the_stage_caps_and_the_reserve_fit_the_budget_and_the_budget_fits_the_device_call():
    gpu_check = _benchmarks("gpu_check")
    caps = sum(s.cap_s for s in gpu_check.STAGES)
    assert caps + gpu_check.RESERVE_S <= gpu_check.DEFAULT_BUDGET_S
    assert all(s.min_s <= s.cap_s for s in gpu_check.STAGES)
    # The device tool's one call: its timeout leaves a minute past the budget and stays within the 600 s a command.
    header = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    timeout = int(re.search(r"bash benchmarks/gpu_check.sh\", timeout_s=(\d+)\)", header).group(1))
    assert gpu_check.DEFAULT_BUDGET_S + 60 <= timeout <= 600


CUT_RUN = """\
============================= test session starts ==============================
collecting ... collected 9 items / 2 deselected / 7 selected

tests/test_kernel_rope.py::test_rope_matches_reference[1-2-odd shape (3, 5)] PASSED [ 14%]
tests/test_kernel_rope.py::test_rope_on_gpu[8-12-1024-64] SKIPPED (needs a CUDA GPU) [ 28%]
tests/test_kernel_attention.py::test_attention_at_real_sizes[1024-64] FAILED [ 42%]
tests/test_kernel_attention.py::test_attention_backward_is_deterministic PASSED [ 57%]
tests/test_kernel_attention.py::test_attention_backward_is_deterministic ERROR [ 57%]
tests/test_kernel_attention.py::test_attention_under_torch_compile[inductor] \
"""


def test_a_run_cut_at_its_cap_still_counts_every_test_that_finished():
    counts = _benchmarks("_gpu_tests").count_streamed(CUT_RUN)
    assert (counts["selected"], counts["passed"], counts["skipped"], counts["failed"], counts["errors"]) == (7, 1, 1, 1,
                                                                                                             1)
    assert counts["not_run"] == 3 and not counts["finished"]
    assert counts["cut_while_running"] == "tests/test_kernel_attention.py::test_attention_under_torch_compile[inductor]"
    assert counts["failures"] == ["tests/test_kernel_attention.py::test_attention_at_real_sizes[1024-64]",
                                  "tests/test_kernel_attention.py::test_attention_backward_is_deterministic"]
    done = _benchmarks("_gpu_tests").count_streamed(CUT_RUN.replace("[inductor] ", "[inductor] PASSED [100%]\n")
                                                    + "FAILED tests/test_kernel_attention.py::test_attention_at_real_"
                                                      "sizes[1024-64] - AssertionError: out: 3 of 8 differ\n"
                                                    + "=== 2 passed, 1 failed, 1 skipped, 1 error in 3.1s ===\n")
    assert done["finished"] and done["not_run"] == 2 and done["cut_while_running"] is None
    assert done["failures"][0].endswith("[1024-64]: AssertionError: out: 3 of 8 differ")


def test_stage_a_takes_kernel_tests_and_gpu_marked_ones_at_any_depth_in_disjoint_shards(tmp_path):
    files = {"tests/test_kernel_rope.py": "def test_a():\n    pass\n\n\ndef test_b():\n    pass\n",
             "tests/kernels/test_attention.py": "import pytest\n\n\n@pytest.mark.parametrize('x', [1, 2, 3])\n"
                                                "def test_c(x):\n    pass\n",
             "tests/model/test_fused_model.py": "import pytest\n\npytestmark = pytest.mark.gpu\n\n\n"
                                                "def test_d():\n    pass\n",
             "tests/data/test_data.py": "import pytest\n\n\ndef test_on_cpu_only():\n    pass\n\n\n"
                                        "@pytest.mark.gpu\ndef test_on_cuda():\n    pass\n",
             "tests/test_environment.py": "def test_writes_a_sample():\n    text = '@pytest.mark.gpu'\n"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    gpu_tests = _benchmarks("_gpu_tests")
    assert gpu_tests.gpu_test_files(tmp_path) == ["tests/data/test_data.py", "tests/kernels/test_attention.py",
                                                  "tests/model/test_fused_model.py", "tests/test_kernel_rope.py"]
    shards = gpu_tests.gpu_test_shards(tmp_path, shards=3)
    ids = [i for shard in shards for i in shard]
    assert sorted(ids) == ["tests/data/test_data.py::test_on_cuda", "tests/kernels/test_attention.py::test_c",
                           "tests/model/test_fused_model.py::test_d", "tests/test_kernel_rope.py::test_a",
                           "tests/test_kernel_rope.py::test_b"]
    assert len(shards) == 3 and all(shards)


def test_the_report_names_the_commit_given_to_a_copy_without_git(tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(ROOT / "benchmarks", copy / "benchmarks", ignore=shutil.ignore_patterns("__pycache__", "results"))
    assert not (copy / ".git").exists()
    summary = _run(tmp_path / "out", "5", root=copy, LMFAST_COMMIT="abc1234")
    assert "commit abc1234;" in summary["md"]


def _uninstalled_copy(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The repository's files as the GPU machine gets them (no .git, nothing built), and an environment in which the
    editable install of this checkout cannot stand in for the copy's own package."""
    copy = tmp_path / "copy"
    listed = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, '__module__', '').startswith('__editable__')]\n"
        "sys.path_hooks[:] = [h for h in sys.path_hooks if not getattr(h, '__module__', '').startswith('__editable__')]"
        "\n")
    env = {"PYTHONPATH": str(hide)}
    probe = subprocess.run([sys.executable, "-c", "import lmfast"], cwd=tmp_path, env={**os.environ, **env},
                           capture_output=True, text=True)
    assert probe.returncode != 0, "lmfast still imports from outside the copy"
    return copy, env


@pytest.mark.slow
def test_a_dry_run_from_an_uninstalled_copy_collects_every_gpu_test_and_benchmark_and_imports_every_stage(tmp_path):
    copy, env = _uninstalled_copy(tmp_path)
    summary = _run(tmp_path / "out", "460", root=copy, GPU_CHECK_DRY_RUN="1", **env)
    stages = {s["name"]: s for s in summary["stages"]}
    assert list(stages) == STAGES
    assert {n: s["status"] for n, s in stages.items()} == dict.fromkeys(STAGES, "ok"), summary["md"]
    tests = stages["gpu_tests"]
    assert tests["counts"]["collected"] > 0 and tests["counts"]["errors"] == 0
    assert len(tests["shards"]) > 1 and all(sh["collected"] > 0 for sh in tests["shards"])
    benches = {f["file"]: f for f in stages["kernels"]["files"]}
    assert set(benches) == {p.name for p in (ROOT / "benchmarks").glob("bench_*.py")} & set(
        _benchmarks("gpu_check").KERNEL_BENCHES)
    assert all(f["collected"] > 0 and f["errors"] == 0 for f in benches.values()), benches


def test_the_attention_configurations_stage_names_the_fastest_candidate_of_each_shape_and_pass():
    configs = _benchmarks("attention_configs")
    found = configs.candidates("sm90")  # keyed by the table's (head dim, RoPE inside)
    keys = {(h, r) for h in (64, 128) for r in (False, True)}
    assert {(k, p) for k, p, _ in found} == {(k, p) for k in keys for p in configs.PASSES}
    timed = [{"head_dim": k, "seq": seq, "pass": p, "config": list(c), "ms": 1.0 + i / 100 if i else 0.5}
             for seq in configs.SEQS for i, (k, p, c) in enumerate(found)]  # the first candidate fastest
    fastest, tables = configs._fastest(timed, "sm90")
    assert len(fastest) == 4 * 2 * 3 and all(r["best_ms"] <= r["shipped_ms"] for r in fastest)
    first = next(r for r in fastest if (r["head_dim"], r["seq"], r["pass"]) == ((64, False), 1024, "fwd"))
    assert first["best"] == first["shipped"] == tuple(found[0][2]) and first["best_ms"] == 0.5
    assert set(tables) == {(k, seq) for k in keys for seq in configs.SEQS}


def test_the_rehearsals_compile_count_keys_launches_as_triton_compiles_them(tmp_path):
    # scripts/_launch_keys.py: one key per compile a GPU would pay. A launch repeated with the same dtype, constexpr
    # and integer specializations costs nothing more; a new dtype, constexpr or alignment class of an int does.
    pytest.importorskip("triton")
    (tmp_path / "test_launches.py").write_text('''
import torch
import triton
import triton.language as tl


@triton.jit
def _copy_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=offs < n), mask=offs < n)


def test_launches():
    for dtype, n, block in [(torch.float32, 32, 16), (torch.float32, 48, 16),  # n divisible by 16 both times: 1
                            (torch.float32, 33, 16),  # n not: 2
                            (torch.float16, 32, 16),  # dtype: 3
                            (torch.float32, 32, 32)]:  # constexpr: 4
        x = torch.arange(n, dtype=dtype)
        y = torch.empty_like(x)
        _copy_kernel[(triton.cdiv(n, block),)](x, y, n, BLOCK=block)
        assert torch.equal(x, y)
''')
    keys = tmp_path / "keys.json"
    env = {**os.environ, "TRITON_INTERPRET": "1", "LMFAST_LAUNCH_KEYS": str(keys),
           "PYTHONPATH": str(ROOT / "scripts")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "_launch_keys",
                           str(tmp_path / "test_launches.py")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(keys.read_text()) == {"_copy_kernel": 4}
