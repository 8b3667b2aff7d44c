"""Run every GPU check in order of value within one time budget, writing results after each stage.

Called by benchmarks/gpu_check.sh (see there for how to run it). Stages, in order:

0. preflight (seconds): versions, the device, and each fused op once against its reference (gpu_preflight.py);
a. the GPU tests: every ``gpu``-marked test (kernels at real sizes in bf16, inductor / aot_eager compiles, the
   fused model, generation) and the kernel test files' other tests, which run natively there;
b. loss curves: configs/tinystories_17m.yaml trained 200 steps in bf16, fused and reference ops (loss_curves.py);
c. training step: tokens/s, MFU, peak memory at tinystories_17m and gpt2_124m, lmfast against HF Llama
   (bench_train_step_gpu.py);
d. kernels: RMSNorm, RoPE, attention, AdamW (and linear cross-entropy where benchmarks/bench_linear_cross_entropy.py
   exists) against torch eager, torch.compile(reference), SDPA flash and cuDNN, torch's fused AdamW (pytest-benchmark,
   ``LMFAST_BENCH_QUICK=1``: the sizes the targets name).

Each stage runs as a subprocess under its own limit, never past the budget (a stage that cannot get its minimum is
skipped, and says so). After each stage ``$OUT/gpu_check.json`` and ``$OUT/gpu_check.md`` are rewritten with every
stage so far, and the logs packed into ``$OUT/gpu_check_logs.tar.gz``: a run cut short still reports what it did.
Without CUDA the GPU stages are recorded as skipped, in order, and the preflight says why.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESERVE_S = 12  # kept for writing the results after the last stage
TARGETS = {  # (benchmark group prefix, provider, peer, minimum ratio): fused / peer, higher is better
    "rmsnorm": ("rmsnorm fwd+bwd", "fused", "compiled", 1.2),
    "rope": ("rope fwd+bwd", "fused", "compiled", 1.2),
    "attention": ("attention fwd+bwd", "fused", "flash", 0.9),
    "adamw": ("adamw step", "fused", "torch-fused", 1.2),
    "document_attention_flex": ("document attention fwd+bwd", "fused", "flex", 1.0),
    "document_attention_dense": ("document attention fwd+bwd", "fused", "sdpa-dense", 2.0),
    "rope_attention": ("rope attention fwd+bwd", "fused", "rope-flash", 0.9),
    "add_rmsnorm": ("add_rmsnorm fwd+bwd", "fused", "compiled", 1.1),
    "clip_adamw": ("clip + adamw step", "fused-clip", "torch-fused", 1.15),
}
MFU_TARGET = 0.45


@dataclass
class Stage:
    name: str
    title: str
    cap_s: int  # the most this stage may take
    min_s: int  # below this much budget left it is skipped
    needs_cuda: bool = True
    record: dict = field(default_factory=dict)


STAGES = [
    Stage("preflight", "0. Preflight: versions, device, each fused op once", 40, 5, needs_cuda=False),
    Stage("gpu_tests", "a. GPU tests (gpu-marked, and the kernel tests run natively)", 140, 30),
    Stage("loss_curves", "b. Loss curves, tinystories_17m, 200 steps bf16, fused vs reference", 80, 30),
    Stage("train_step", "c. Training step: tokens/s, MFU, peak memory", 150, 40),
    Stage("kernels", "d. Kernel benchmarks", 150, 30),
]


class Check:
    def __init__(self, out: Path, logs: Path, budget_s: float, started: float):
        # Logs stay outside $OUT, which may hand back only a few files: they travel packed in one archive.
        self.out, self.logs, self.budget_s, self.started = out, logs, budget_s, started
        self.env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        self.env["PYTHONUNBUFFERED"] = "1"
        self.machine: dict = {}

    def left(self) -> float:
        return self.budget_s - (time.time() - self.started)

    def run(self, name: str, cmd: list[str], limit_s: float, **env) -> tuple[int, float]:
        """Run ``cmd``, its process group killed at ``limit_s``; returns (exit code, seconds), 124 = timed out."""
        t0 = time.time()
        with (self.logs / f"{name}.log").open("ab") as log:
            log.write(f"$ {' '.join(cmd)}\n".encode())
            log.flush()
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**self.env, **env},
                                    start_new_session=True)
            try:
                rc = proc.wait(timeout=max(1.0, limit_s))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                rc = 124
        return rc, time.time() - t0

    def write(self) -> None:
        """Rewrite gpu_check.json / .md from every stage so far and pack the logs (atomically, file by file)."""
        summary = {"machine": self.machine, "budget_s": self.budget_s, "elapsed_s": round(time.time() - self.started),
                   "stages": [{"name": s.name, "title": s.title, **s.record} for s in STAGES if s.record],
                   "targets": targets(STAGES)}
        _atomic(self.out / "gpu_check.json", json.dumps(summary, indent=1, default=str) + "\n")
        _atomic(self.out / "gpu_check.md", markdown(summary))
        tmp = self.out / "gpu_check_logs.tar.gz.tmp"
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(self.logs, arcname="logs")
        tmp.replace(self.out / "gpu_check_logs.tar.gz")


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


# ------------------------------------------------------------------------------------------------ the stages


def stage_preflight(check: Check, limit: float) -> dict:
    rc, secs = check.run("preflight", [sys.executable, str(HERE / "gpu_preflight.py"), "--out", str(check.logs)],
                         limit)
    path = check.logs / "preflight.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    check.machine = result.get("machine", {})
    return {"exit_code": rc, "seconds": round(secs, 1), **result}


def _gpu_test_files() -> list[str]:
    """Every test file with gpu-marked tests, and every kernel test file: on a GPU their unmarked tests (odd shapes,
    bad input, CUDA's dtype rule) run the kernels natively."""
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
                  if "mark.gpu" in p.read_text() or p.name.startswith("test_kernel_"))


def stage_gpu_tests(check: Check, limit: float) -> dict:
    junit = check.logs / "gpu_tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "not slow", *_gpu_test_files(), "-q", "-p", "no:cacheprovider",
           "-rfE", f"--junitxml={junit}"]
    if _importable("xdist"):
        cmd += ["-n", "4"]  # cold Triton and inductor compiles in parallel; the tests assert no timings
    rc, secs = check.run("gpu_tests", cmd, limit)
    record = {"exit_code": rc, "seconds": round(secs, 1)}
    if junit.exists():
        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        failed = [f"{case.get('classname')}::{case.get('name')}: {(bad.get('message') or '')[:300]}"
                  for case in suite.iter("testcase") for bad in (case.find("failure"), case.find("error"))
                  if bad is not None]
        record.update(counts=counts, failed=failed)
    return record


def stage_loss_curves(check: Check, limit: float) -> dict:
    rc, secs = check.run("loss_curves", [sys.executable, str(HERE / "loss_curves.py"), "--out", str(check.logs)],
                         limit)
    path = check.logs / "loss_curves.json"
    record = {"exit_code": rc, "seconds": round(secs, 1)}
    if path.exists():
        data = json.loads(path.read_text())
        record["verdict"] = data["verdict"]
        record["curves_every_10_steps"] = {b: [round(x, 3) for x in r["losses"][::10]] for b, r in data["runs"].items()}
        record["run_seconds"] = {b: r["seconds"] for b, r in data["runs"].items()}
    return record


def stage_train_step(check: Check, limit: float) -> dict:
    out = check.logs / "train_step"
    cmd = [sys.executable, str(HERE / "bench_train_step_gpu.py"), "--out", str(out), "--deadline-s",
           str(max(0, limit - 45))]  # the last provider started may need a cold compile
    rc, secs = check.run("train_step", cmd, limit)
    path = out / "train_step_gpu.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return {"exit_code": rc, "seconds": round(secs, 1), "rows": rows}


KERNEL_BENCHES = ("bench_document_attention.py", "bench_rope_attention.py", "bench_add_rmsnorm.py",
                  "bench_clip_adamw.py", "bench_attention.py", "bench_rmsnorm.py", "bench_rope.py", "bench_adamw.py",
                  "bench_linear_cross_entropy.py")


def stage_kernels(check: Check, limit: float) -> dict:
    end = time.time() + limit
    files, rows = [], []
    for name in KERNEL_BENCHES:
        if not (HERE / name).exists():
            continue
        left = end - time.time()
        if left < 15:
            files.append({"file": name, "status": "skipped (stage time used up)"})
            continue
        out = check.logs / f"{Path(name).stem}.json"
        cmd = [sys.executable, "-m", "pytest", str(HERE / name), "-q", "-p", "no:cacheprovider", "--benchmark-only",
               "--benchmark-disable-gc", f"--benchmark-json={out}"]
        rc, secs = check.run("kernels", cmd, left, LMFAST_BENCH_QUICK="1")
        files.append({"file": name, "exit_code": rc, "seconds": round(secs, 1)})
        rows += benchmark_rows(out, Path(name).stem)
    return {"files": files, "rows": rows}


def benchmark_rows(path: Path, file: str) -> list[dict]:
    """One row per benchmark in a pytest-benchmark JSON: group, provider and its figure (GB/s, TFLOPS, ms)."""
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
    except ValueError:
        return []
    rows = []
    for b in data.get("benchmarks", []):
        extra, params = b.get("extra_info", {}), b.get("params") or {}
        unit = next((u for u in ("tflops", "gbps") if u in extra), None)
        value = extra[unit] if unit else round(1e3 * b["stats"]["median"], 4)
        rows.append({"file": file, "group": b.get("group"), "provider": str(params.get("provider", b["name"])),
                     "unit": unit or "ms", "value": value})
    return rows


RUNNERS = {"preflight": stage_preflight, "gpu_tests": stage_gpu_tests, "loss_curves": stage_loss_curves,
           "train_step": stage_train_step, "kernels": stage_kernels}


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# ------------------------------------------------------------------------------------------------ the summary


def targets(stages: list[Stage]) -> list[dict]:
    """Each benchmark target with the measured ratio (fused / peer) or MFU, where the stage measured it."""
    found = []
    rows = next((s.record.get("rows", []) for s in stages if s.name == "kernels"), [])
    by_group: dict[str, dict[str, float]] = {}
    for r in rows:
        by_group.setdefault(r["group"] or "", {})[r["provider"]] = r["value"]
    for prefix, ours, peer, goal in TARGETS.values():
        for group, vals in sorted(by_group.items()):
            if group.startswith(prefix) and ours in vals and vals.get(peer):
                ratio = vals[ours] / vals[peer]
                found.append({"target": f"{group}: {ours} / {peer} >= {goal}", "value": round(ratio, 3),
                              "met": ratio >= goal})
    steps = next((s.record.get("rows", []) for s in stages if s.name == "train_step"), [])
    for r in steps:
        if r["config"] == "gpt2_124m" and r["provider"].startswith("lmfast fused") and r.get("mfu") is not None:
            found.append({"target": f"gpt2_124m {r['provider']}: MFU >= {MFU_TARGET:.0%}", "value": r["mfu"],
                          "met": r["mfu"] >= MFU_TARGET})
    return found


def _stage_lines(s: dict) -> list[str]:
    lines = [f"## {s['title']}: {s['status']}", "",
             f"{s.get('seconds', 0)} s (limit {s.get('limit_s', 0):.0f} s); {s.get('budget_left_s', 0):.0f} s of the "
             "budget left after it."]
    if s["status"] == "skipped":
        return lines + ["", s["reason"], ""]
    if s.get("log_tail"):
        lines += ["", "End of its log:", "", "```", *s["log_tail"], "```"]
    if s["name"] == "preflight":
        lines += ["", "| check | result |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in s.get("checks", {}).items()]
    elif s["name"] == "gpu_tests" and "counts" in s:
        c = s["counts"]
        lines += ["", f"{c['tests']} tests: {c['failures']} failed, {c['errors']} errors, {c['skipped']} skipped."]
        lines += [f"- FAILED {f}" for f in s.get("failed", [])]
    elif s["name"] == "loss_curves" and "verdict" in s:
        v = s["verdict"]
        lines += ["", f"Verdict: {'PASS' if v['passed'] else 'FAIL'}; max |fused - reference| over the first 20 steps "
                  f"{v['max_abs_diff_first_20']:.4f} nats, over all {v['max_abs_diff']:.4f}; mean of the last 50 steps "
                  f"fused {v['mean_last_50']['fused']:.4f}, reference {v['mean_last_50']['reference']:.4f}; both "
                  f"learned: {v['both_learned']}.", "", "Loss every 10 steps:", ""]
        lines += [f"- {b}: {c}" for b, c in s.get("curves_every_10_steps", {}).items()]
    elif s["name"] == "train_step":
        lines += ["", "| config | provider | tokens/s | MFU | step ms (median) | peak GiB | warm-up s | note |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in s.get("rows", []):
            mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else ""
            lines.append(f"| {r['config']} | {r['provider']} | {r.get('tokens_per_s', '')} | {mfu} | "
                         f"{r.get('step_ms_median', '')} | {r.get('peak_memory_gib', '')} | {r.get('warmup_s', '')} | "
                         f"{r.get('error') or r.get('skipped') or ''} |")
    elif s["name"] == "kernels":
        lines += [""] + [f"- {f['file']}: {f.get('status') or 'exit ' + str(f['exit_code'])} "
                         f"({f.get('seconds', 0)} s)" for f in s.get("files", [])]
        groups: dict[str, dict] = {}
        for r in s.get("rows", []):
            groups.setdefault(r["group"], {})[r["provider"]] = f"{r['value']} {r['unit']}"
        if groups:
            lines += ["", "| group | results |", "|---|---|"]
            lines += [f"| {g} | {', '.join(f'{p}: {v}' for p, v in vals.items())} |" for g, vals in groups.items()]
    return lines + [""]


def markdown(summary: dict) -> str:
    m = summary["machine"]
    lines = [f"# GPU check: {m.get('gpu', 'no GPU')}", "",
             f"torch {m.get('torch')}, triton {m.get('triton')}, CUDA {m.get('cuda')}, driver {m.get('driver')}, "
             f"python {m.get('python')}, commit {m.get('commit')}; {summary['elapsed_s']} s of a "
             f"{summary['budget_s']:.0f} s budget. Generated by `bash benchmarks/gpu_check.sh`.", ""]
    if summary["targets"]:
        lines += ["## Targets (benchmarks, not test asserts)", "", "| target | measured | met |", "|---|---|---|"]
        lines += [f"| {t['target']} | {t['value']} | {'yes' if t['met'] else 'NO'} |" for t in summary["targets"]]
        lines.append("")
    for s in summary["stages"]:
        lines += _stage_lines(s)
    return "\n".join(lines) + "\n"


def _propose_fused_table(check: Check, out: Path) -> None:
    """$OUT/fused_table.json: the backend table with this GPU generation's rows from the kernel stage (see
    fused_table_update.py), when the kernel stage measured anything."""
    kernels = next((s for s in STAGES if s.name == "kernels"), None)
    if kernels is None or not kernels.record.get("rows"):
        return
    import torch
    from fused_table_update import write_proposal

    generation = {8: "sm80", 9: "sm90"}.get(torch.cuda.get_device_capability()[0], "default")
    summary = {"machine": check.machine, "stages": [{"name": s.name, **s.record} for s in STAGES if s.record]}
    write_proposal(summary, generation, out / "fused_table.json")


def main() -> int:
    out = Path(os.environ.get("OUT") or ROOT / "benchmarks" / "results" / "gpu_check")
    out.mkdir(parents=True, exist_ok=True)
    budget = float(os.environ.get("GPU_CHECK_BUDGET_S", "460"))
    started = float(os.environ.get("GPU_CHECK_STARTED", time.time()))
    check = Check(out, Path(tempfile.mkdtemp(prefix="gpu_check_logs.")), budget, started)
    has_cuda = None
    for stage in STAGES:
        left = check.left() - RESERVE_S
        limit = min(stage.cap_s, left)
        record = {"limit_s": round(max(0.0, limit))}
        if stage.needs_cuda and has_cuda is False:
            record.update(status="skipped", reason="Skipped: no CUDA device (see the preflight).")
        elif limit < stage.min_s:
            record.update(status="skipped", reason=f"Skipped: {max(0.0, left):.0f} s of the budget left (after "
                                                   f"{RESERVE_S} s kept for writing results), under the "
                                                   f"{stage.min_s} s this stage needs.")
        else:
            print(f"gpu_check: {stage.name} (limit {limit:.0f} s, {left:.0f} s of budget left)", flush=True)
            record.update(RUNNERS[stage.name](check, limit))
            codes = [record.get("exit_code", 0), *(f.get("exit_code", 0) for f in record.get("files", []))]
            timed_out = 124 in codes
            failed = any(c not in (0, 124) for c in codes)
            record["status"] = "timed out (partial results)" if timed_out else "failed" if failed else "ok"
            if record["status"] != "ok":
                log = check.logs / f"{stage.name}.log"
                record["log_tail"] = log.read_text(errors="replace").splitlines()[-25:] if log.exists() else []
        if stage.name == "preflight" and check.machine:
            has_cuda = bool(check.machine.get("cuda_available"))
        record["budget_left_s"] = round(check.left())
        stage.record = record
        check.write()
        print(f"gpu_check: {stage.name} {record['status']}; {record['budget_left_s']} s of budget left", flush=True)
    _propose_fused_table(check, out)
    shutil.rmtree(check.logs, ignore_errors=True)
    print(f"gpu_check: wrote {out / 'gpu_check.md'}, gpu_check.json, gpu_check_logs.tar.gz", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
