"""Run every GPU check in order of value within one time budget, writing results after each stage.

Called by benchmarks/gpu_check.sh (see there for how to run it). Stages, in order, each with its cap and the cold
compiles it pays on a fresh machine (Triton kernels, inductor's own included; torch.compile graphs), estimated from
the code (each stage's record counts them from the run's fresh caches, so the first lease gives the real numbers). The
caps and the reserve for writing results add up to the default budget (tests/test_gpu_check.py holds them to it):

0. preflight, 30 s: versions, the device, every kernel module imported, each fused op once against its reference
   (gpu_preflight.py); ~11 Triton compiles (RMSNorm and RoPE forward, attention's four kernels at head dims 64 and
   128, the AdamW step), ~15 s;
a. the GPU tests, 130 s: every ``gpu``-marked test (kernels at real sizes in bf16, inductor / aot_eager compiles, the
   fused model, generation) and the kernel test files' other tests, which run natively there; ~250-300 Triton
   compiles (the rehearsal counts 252 distinct launch keys in the tests the interpreter runs, attention 202 of them,
   a lower bound) and ~8 torch.compile graphs, ~8-10 minutes one after another, so they run as
   ``GPU_TEST_SHARDS`` pytest processes side by side on the one GPU (_gpu_tests.py; there is no pytest-xdist);
b. loss curves, 55 s: configs/tinystories_17m.yaml trained 200 steps in bf16, fused and reference ops, eager
   (loss_curves.py); ~10 Triton compiles;
c. training step, 130 s: tokens/s, MFU, peak memory, gpt2_124m first (fused+compiled, then reference+compiled: the
   headline rows), then HF Llama and tinystories_17m (bench_train_step_gpu.py); a cold inductor compile of 30-60 s
   (a few hundred Triton kernels, compiled in inductor's worker pool) per compiled provider, so 2-3 providers fit and
   the later ones are the ones a short stage drops;
d. attention configurations, 40 s: the tuning candidates of kernels/_attention_configs.py against the shipped table
   at head dims 64 and 128, bf16, seq 1024 and 2048, the fastest per shape recorded (attention_configs.py); ~35
   Triton compiles, warmed in parallel processes before the timing;
e. kernels, 85 s: RMSNorm, RoPE, attention, AdamW and linear cross-entropy against torch eager,
   torch.compile(reference), SDPA flash and cuDNN, torch's fused AdamW (pytest-benchmark, ``LMFAST_BENCH_QUICK=1``:
   the sizes the targets name); ~25 Triton compiles and ~6 torch.compile graphs, warmed by running every file once in
   parallel (``--benchmark-disable``), then timed one file at a time.

Each stage runs as subprocesses under its own cap, never past the budget (a stage that cannot get its minimum is
skipped, and says so). Test counts are read from pytest's ``-v`` output as it streams, so a stage cut at its cap
still reports what ran (a killed pytest writes no junit XML). A fresh Triton and inductor cache is shared by every
stage, and the compiles each stage added are counted from it. After each stage ``$OUT/gpu_check.json`` and
``$OUT/gpu_check.md`` are rewritten with every stage so far, and the logs packed into ``$OUT/gpu_check_logs.tar.gz``:
a run cut short still reports what it did.
Without CUDA the GPU stages are recorded as skipped, in order, and the preflight says why.

``GPU_CHECK_DRY_RUN=1`` (scripts/rehearse_gpu_check.sh, tests/test_gpu_check.py) starts every stage exactly as a GPU
run would, without CUDA too, adding ``--collect-only`` to each pytest command and ``--dry-run`` to each stage
script (which then imports what it would use and stops): what a GPU run would fail at on import shows on a CPU.
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
from dataclasses import dataclass, field
from pathlib import Path

from _gpu_tests import collect_only, count_collected, count_streamed, gpu_test_commands
from _machine import commit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_BUDGET_S = 480  # the device call gives the command 560 s (gpu_check.sh's header)
RESERVE_S = 10  # kept for writing the results after the last stage
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
    Stage("preflight", "0. Preflight: versions, device, each fused op once", 30, 5, needs_cuda=False),
    Stage("gpu_tests", "a. GPU tests (gpu-marked, and the kernel tests run natively)", 130, 40),
    Stage("loss_curves", "b. Loss curves, tinystories_17m, 200 steps bf16, fused vs reference", 55, 30),
    Stage("train_step", "c. Training step: tokens/s, MFU, peak memory (gpt2_124m first)", 130, 50),
    Stage("attention_configs", "d. Attention launch configurations: the fastest per shape", 40, 20),
    Stage("kernels", "e. Kernel benchmarks", 85, 30),
]


class Check:
    def __init__(self, out: Path, work: Path, budget_s: float, started: float, dry_run: bool = False):
        # Logs stay outside $OUT, which may hand back only a few files: they travel packed in one archive.
        self.out, self.logs, self.budget_s, self.started, self.dry_run = out, work / "logs", budget_s, started, dry_run
        self.logs.mkdir(parents=True, exist_ok=True)
        self.caches = {"triton": work / "triton_cache", "inductor": work / "inductor_cache"}
        self.env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        # Fresh caches shared by every stage: each compile happens once per run, and counting them is exact.
        self.env.update(PYTHONUNBUFFERED="1", TRITON_CACHE_DIR=str(self.caches["triton"]),
                        TORCHINDUCTOR_CACHE_DIR=str(self.caches["inductor"]))
        self.machine: dict = {"commit": commit()}  # the preflight adds the rest

    def left(self) -> float:
        return self.budget_s - (time.time() - self.started)

    def compiles(self) -> dict[str, int]:
        """Compiled Triton kernels (inductor's included) and inductor graphs in this run's caches so far."""
        return {"triton_kernels": sum(1 for _ in self.caches["triton"].rglob("*.cubin")),
                "inductor_graphs": sum(1 for p in (self.caches["inductor"] / "fxgraph").rglob("*") if p.is_file())}

    def run(self, name: str, cmd: list[str], limit_s: float, **env) -> tuple[int, float]:
        """Run ``cmd``, its process group killed at ``limit_s``; returns (exit code, seconds), 124 = timed out."""
        (rc, secs), = self.run_parallel(name, [cmd], limit_s, **env)
        return rc, secs

    def run_parallel(self, name: str, cmds: list[list[str]], limit_s: float, **env) -> list[tuple[int, float]]:
        """Run ``cmds`` side by side (one log each, ``name.log`` or ``name.<i>.log``), every process group still
        running at ``limit_s`` killed; returns (exit code, seconds) per command, 124 = timed out."""
        t0, procs = time.time(), []
        for i, cmd in enumerate(cmds):
            log = (self.logs / (f"{name}.log" if len(cmds) == 1 else f"{name}.{i}.log")).open("ab")
            log.write(f"$ {' '.join(cmd)}\n".encode())
            log.flush()
            procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                          env={**self.env, **env}, start_new_session=True))
            log.close()
        done: dict[int, tuple[int, float]] = {}
        while len(done) < len(procs):
            for i, proc in enumerate(procs):
                if i not in done and proc.poll() is not None:
                    done[i] = (proc.returncode, time.time() - t0)
            if len(done) < len(procs) and time.time() - t0 > max(1.0, limit_s):
                for i, proc in enumerate(procs):
                    if i not in done:
                        try:
                            os.killpg(proc.pid, signal.SIGKILL)
                        except ProcessLookupError:  # it ended since the poll above
                            pass
                        proc.wait()
                        done[i] = (124, time.time() - t0)
            time.sleep(0.2)
        return [done[i] for i in range(len(procs))]

    def write(self) -> None:
        """Rewrite gpu_check.json / .md from every stage so far and pack the logs (atomically, file by file)."""
        summary = {"machine": self.machine, "budget_s": self.budget_s, "elapsed_s": round(time.time() - self.started),
                   "dry_run": self.dry_run,
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
    check.machine.update(result.get("machine", {}))
    return {"exit_code": rc, "seconds": round(secs, 1), **result}


def stage_gpu_tests(check: Check, limit: float) -> dict:
    cmds = gpu_test_commands()
    if check.dry_run:
        cmds = [collect_only(c) for c in cmds]
    # Several processes share the CPUs: a few threads each, not a full pool per process.
    results = check.run_parallel("gpu_tests", cmds, limit, OMP_NUM_THREADS="2", TORCHINDUCTOR_COMPILE_THREADS="4")
    shards, total = [], {}
    for i, (rc, secs) in enumerate(results):
        log = check.logs / ("gpu_tests.log" if len(cmds) == 1 else f"gpu_tests.{i}.log")
        text = log.read_text(errors="replace") if log.exists() else ""
        counts = count_collected(text) if check.dry_run else count_streamed(text)
        shards.append({"shard": i, "exit_code": rc, "seconds": round(secs, 1),
                       "functions": sum(1 for a in cmds[i] if "::" in a), **counts})
        for k, v in counts.items():
            if isinstance(v, bool) or v is None:
                continue
            total[k] = total.get(k, 0) + v if isinstance(v, int) else [*total.get(k, []), *v]
    codes = [s["exit_code"] for s in shards]
    code = 124 if 124 in codes else next((c for c in codes if c != 0), 0)
    return {"exit_code": code, "seconds": round(max(s["seconds"] for s in shards), 1), "counts": total,
            "shards": shards}


def _script_stage(check: Check, name: str, cmd: list[str], limit: float) -> tuple[int, float]:
    return check.run(name, cmd + (["--dry-run"] if check.dry_run else []), limit)


def stage_loss_curves(check: Check, limit: float) -> dict:
    rc, secs = _script_stage(check, "loss_curves",
                             [sys.executable, str(HERE / "loss_curves.py"), "--out", str(check.logs)], limit)
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
    rc, secs = _script_stage(check, "train_step", cmd, limit)
    path = out / "train_step_gpu.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return {"exit_code": rc, "seconds": round(secs, 1), "rows": rows}


def stage_attention_configs(check: Check, limit: float) -> dict:
    out = check.logs / "attention_configs.json"
    cmd = [sys.executable, str(HERE / "attention_configs.py"), "--out", str(out), "--deadline-s",
           str(max(0, limit - 8))]
    rc, secs = _script_stage(check, "attention_configs", cmd, limit)
    data = json.loads(out.read_text()) if out.exists() else {}
    return {"exit_code": rc, "seconds": round(secs, 1), **data}


KERNEL_BENCHES = ("bench_document_attention.py", "bench_rope_attention.py", "bench_add_rmsnorm.py",
                  "bench_clip_adamw.py", "bench_attention.py", "bench_rmsnorm.py", "bench_rope.py", "bench_adamw.py",
                  "bench_linear_cross_entropy.py")


def kernel_bench_command(name: str, *extra: str) -> list[str]:
    """Stage e's pytest command for one benchmark file (from the repository root, ``LMFAST_BENCH_QUICK=1``)."""
    return [sys.executable, "-m", "pytest", str(HERE / name), "-q", "-p", "no:cacheprovider", *extra]


def stage_kernels(check: Check, limit: float) -> dict:
    end = time.time() + limit
    names = [n for n in KERNEL_BENCHES if (HERE / n).exists()]
    if check.dry_run:
        results = check.run_parallel("kernels", [collect_only(kernel_bench_command(n)) for n in names], limit,
                                     LMFAST_BENCH_QUICK="1")
        files = []
        for i, (name, (rc, secs)) in enumerate(zip(names, results, strict=True)):
            text = (check.logs / f"kernels.{i}.log").read_text(errors="replace")
            files.append({"file": name, "exit_code": rc, "seconds": round(secs, 1), **count_collected(text)})
        return {"files": files, "rows": []}
    # Every file once, side by side, without timing: each cold compile (Triton, inductor) lands in the shared
    # caches, so the timed runs below, one file at a time on an otherwise idle GPU, start warm.
    warm = check.run_parallel("kernels_warm", [kernel_bench_command(n, "--benchmark-disable") for n in names],
                              0.45 * limit, LMFAST_BENCH_QUICK="1", OMP_NUM_THREADS="2",
                              TORCHINDUCTOR_COMPILE_THREADS="4")
    files, rows = [], []
    for name, (warm_rc, warm_s) in zip(names, warm, strict=True):
        left = end - time.time()
        if left < 10:
            files.append({"file": name, "status": "skipped (stage time used up)", "warm_exit_code": warm_rc})
            continue
        out = check.logs / f"{Path(name).stem}.json"
        cmd = kernel_bench_command(name, "--benchmark-only", "--benchmark-disable-gc", f"--benchmark-json={out}")
        rc, secs = check.run("kernels", cmd, left, LMFAST_BENCH_QUICK="1")
        files.append({"file": name, "exit_code": rc, "seconds": round(secs, 1), "warm_exit_code": warm_rc,
                      "warm_seconds": round(warm_s, 1)})
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
           "train_step": stage_train_step, "attention_configs": stage_attention_configs, "kernels": stage_kernels}


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
        if r["config"] == "gpt2_124m" and r["provider"].startswith(("lmfast fused", "lmfast auto")) and r.get(
                "mfu") is not None:
            found.append({"target": f"gpt2_124m {r['provider']}: MFU >= {MFU_TARGET:.0%}", "value": r["mfu"],
                          "met": r["mfu"] >= MFU_TARGET})
    by_provider = {r["provider"]: r for r in steps if r["config"] == "gpt2_124m" and r.get("tokens_per_s")}
    auto, reference = by_provider.get("lmfast auto+compiled"), by_provider.get("lmfast reference+compiled")
    if auto and reference:  # backend auto must never be slower than the compiled reference
        ratio = auto["tokens_per_s"] / reference["tokens_per_s"]
        found.append({"target": "gpt2_124m tokens/s: auto / reference+compiled >= 1.0", "value": round(ratio, 3),
                      "met": ratio >= 1.0})
    return found


def _test_lines(s: dict, dry_run: bool) -> list[str]:
    c = s["counts"]
    if dry_run:
        lines = [f"{c.get('collected', 0)} tests collected in {len(s['shards'])} pytest commands, "
                 f"{c.get('errors', 0)} collection errors."]
        return lines + [f"- ERROR collecting {e}" for e in c.get("collection_errors", [])]
    lines = [f"{len(s['shards'])} pytest processes: {c.get('passed', 0)} passed, {c.get('failed', 0)} failed, "
             f"{c.get('errors', 0)} errors, {c.get('skipped', 0)} skipped, {c.get('not_run', 0)} not run (cut at the "
             "stage's limit)."]
    lines += [f"- ERROR collecting {e}" for e in c.get("collection_errors", [])]
    lines += [f"- FAILED {f}" for f in c.get("failures", [])]
    lines += [f"- shard {sh['shard']}: exit {sh['exit_code']}, {sh['seconds']} s, {sh['functions']} test functions"
              + (f"; cut while running {sh['cut_while_running']}" if sh.get("cut_while_running") else "")
              for sh in s["shards"]]
    return lines


def _config_lines(s: dict) -> list[str]:
    lines = ["", "| head_dim | seq | pass | fastest configuration | ms | shipped configuration | ms |",
             "|---|---|---|---|---|---|---|"]
    for r in s.get("fastest", []):
        lines.append(f"| {r['head_dim']} | {r['seq']} | {r['pass']} | {r['best']} | {r['best_ms']} | {r['shipped']} "
                     f"| {r['shipped_ms']} |")
    lines += [f"- head_dim {r['head_dim']}, seq {r['seq']}: fwd+bwd {r['best_ms']} ms with the fastest of each pass "
              f"(fwd, dkdv, dq, preprocess: {r['best']}) against {r['shipped_ms']} ms shipped"
              for r in s.get("fwd_bwd", [])]
    return lines + [f"- {e}" for e in s.get("errors", [])]


def _stage_lines(s: dict, dry_run: bool) -> list[str]:
    compiles = s.get("compiles")
    lines = [f"## {s['title']}: {s['status']}", "",
             f"{s.get('seconds', 0)} s (limit {s.get('limit_s', 0):.0f} s); {s.get('budget_left_s', 0):.0f} s of the "
             "budget left after it." + (f" Compiled: {compiles['triton_kernels']} Triton kernels, "
                                        f"{compiles['inductor_graphs']} inductor graphs." if compiles else "")]
    if s["status"] == "skipped":
        return lines + ["", s["reason"], ""]
    if s.get("log_tail"):
        lines += ["", "End of its log:", "", "```", *s["log_tail"], "```"]
    if s["name"] == "preflight":
        lines += ["", "| check | result |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in s.get("checks", {}).items()]
    elif s["name"] == "gpu_tests" and "counts" in s:
        lines += ["", *_test_lines(s, dry_run)]
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
    elif s["name"] == "attention_configs":
        lines += _config_lines(s)
    elif s["name"] == "kernels":
        lines += [""] + [f"- {f['file']}: {f.get('status') or 'exit ' + str(f['exit_code'])} ({f.get('seconds', 0)} s"
                         + (f", {f['collected']} collected, {f['errors']} errors" if "collected" in f else "")
                         + (f"; warm-up exit {f['warm_exit_code']}, {f.get('warm_seconds', 0)} s"
                            if "warm_exit_code" in f else "") + ")" for f in s.get("files", [])]
        groups: dict[str, dict] = {}
        for r in s.get("rows", []):
            groups.setdefault(r["group"], {})[r["provider"]] = f"{r['value']} {r['unit']}"
        if groups:
            lines += ["", "| group | results |", "|---|---|"]
            lines += [f"| {g} | {', '.join(f'{p}: {v}' for p, v in vals.items())} |" for g, vals in groups.items()]
    return lines + [""]


def markdown(summary: dict) -> str:
    m, dry = summary["machine"], summary.get("dry_run")
    lines = [f"# GPU check: {m.get('gpu', 'no GPU')}" + (" (dry run: collected and imported, nothing run)" if dry
                                                        else ""), "",
             f"torch {m.get('torch')}, triton {m.get('triton')}, CUDA {m.get('cuda')}, driver {m.get('driver')}, "
             f"python {m.get('python')}, commit {m.get('commit')}; {summary['elapsed_s']} s of a "
             f"{summary['budget_s']:.0f} s budget. Generated by `LMFAST_COMMIT=<sha> bash "
             "benchmarks/gpu_check.sh`.", ""]
    if summary["targets"]:
        lines += ["## Targets (benchmarks, not test asserts)", "", "| target | measured | met |", "|---|---|---|"]
        lines += [f"| {t['target']} | {t['value']} | {'yes' if t['met'] else 'NO'} |" for t in summary["targets"]]
        lines.append("")
    for s in summary["stages"]:
        lines += _stage_lines(s, dry)
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


def _status(record: dict, dry_run: bool, name: str) -> str:
    codes = [record.get("exit_code", 0), *(f.get("exit_code", 0) for f in record.get("files", []))]
    if 124 in codes:
        return "timed out (partial results)"
    errors = record.get("counts", {}).get("errors", 0) + sum(f.get("errors", 0) for f in record.get("files", []))
    empty = dry_run and (name == "gpu_tests" and not record.get("counts", {}).get("collected")
                         or any(not f.get("collected") for f in record.get("files", [])))
    return "failed" if errors or empty or any(c != 0 for c in codes) else "ok"


def main() -> int:
    out = Path(os.environ.get("OUT") or ROOT / "benchmarks" / "results" / "gpu_check")
    out.mkdir(parents=True, exist_ok=True)
    budget = float(os.environ.get("GPU_CHECK_BUDGET_S", DEFAULT_BUDGET_S))
    started = float(os.environ.get("GPU_CHECK_STARTED", time.time()))
    dry_run = os.environ.get("GPU_CHECK_DRY_RUN", "0") not in ("", "0")
    work = Path(tempfile.mkdtemp(prefix="gpu_check."))
    check = Check(out, work, budget, started, dry_run)
    has_cuda = None
    for stage in STAGES:
        left = check.left() - RESERVE_S
        limit = min(stage.cap_s, left)
        record = {"limit_s": round(max(0.0, limit))}
        if stage.needs_cuda and has_cuda is False and not dry_run:
            record.update(status="skipped", reason="Skipped: no CUDA device (see the preflight).")
        elif limit < stage.min_s:
            record.update(status="skipped", reason=f"Skipped: {max(0.0, left):.0f} s of the budget left (after "
                                                   f"{RESERVE_S} s kept for writing results), under the "
                                                   f"{stage.min_s} s this stage needs.")
        else:
            print(f"gpu_check: {stage.name} (limit {limit:.0f} s, {left:.0f} s of budget left)", flush=True)
            before = check.compiles()
            record.update(RUNNERS[stage.name](check, limit))
            after = check.compiles()
            record["compiles"] = {k: after[k] - before[k] for k in after}
            record["status"] = _status(record, dry_run, stage.name)
            if record["status"] != "ok":
                logs = sorted(check.logs.glob(f"{stage.name}*.log"))
                record["log_tail"] = [line for log in logs for line in
                                      [f"--- {log.name}", *log.read_text(errors="replace").splitlines()[-12:]]][-40:]
        if stage.name == "preflight" and "cuda_available" in check.machine:
            has_cuda = bool(check.machine.get("cuda_available"))
        record["budget_left_s"] = round(check.left())
        stage.record = record
        check.write()
        print(f"gpu_check: {stage.name} {record['status']}; {record['budget_left_s']} s of budget left", flush=True)
    _propose_fused_table(check, out)
    shutil.rmtree(work, ignore_errors=True)
    print(f"gpu_check: wrote {out / 'gpu_check.md'}, gpu_check.json, gpu_check_logs.tar.gz", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
