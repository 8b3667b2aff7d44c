"""The checks of scripts/rehearse_gpu_check.sh: benchmarks/gpu_check.sh run on CPU as the GPU machine would start it.

    python scripts/rehearse_gpu_check.py --venv-info FILE [--ref REV] [--out FILE.md]

Run by scripts/rehearse_gpu_check.sh with the rehearsal venv's python (the GPU image's torch, triton and Python; no
pytest-xdist; lmfast not installed). Copies the repository without ``.git`` (``--ref``: ``git archive REV``; else the
working tree's tracked and not-ignored untracked files, as the device tool copies them), then in the copy:

1. ``bash benchmarks/gpu_check.sh`` without CUDA: every stage walked in order, its records written
   (gpu_check.json, .md, the logs), the commit named from ``LMFAST_COMMIT``, the stage caps within the budget;
2. ``GPU_CHECK_DRY_RUN=1 bash benchmarks/gpu_check.sh``: every stage started as on a GPU, pytest only collecting and
   the stage scripts only importing: stage a's commands collect > 0 tests with 0 errors, every kernel benchmark file
   collects, every stage script imports. A tree older than the dry run (``--ref`` of an old commit) gets its stage a
   command and benchmark files started inside its own gpu_check.sh instead (see ``legacy_commands``);
3. the kernel tests under Triton's interpreter (``TRITON_INTERPRET=1``), as the normal test run has them, counting
   the distinct compiles their launches would cost on a GPU (scripts/_launch_keys.py).

Writes a Markdown report (versions, commit, time taken, the venv's download size) and exits 0 only if all pass.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("torch", "triton", "numpy", "transformers", "pytest", "hypothesis", "pytest-benchmark", "pybind11")


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def copy_tree(ref: str | None, dest: Path) -> str:
    """The repository at ``ref`` (or the working tree) copied into ``dest`` without .git; returns the commit."""
    dest.mkdir(parents=True)
    if ref:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", ref], capture_output=True, text=True,
                              check=True).stdout.strip()
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "-co", "--exclude-standard"],
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                          text=True, check=True).stdout.strip()


def _env(**extra: str) -> dict[str, str]:
    """The environment of a GPU-machine command: this venv first on PATH, no interpreter switch, no PYTHON."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTHON", "PYTHONPATH", "OUT")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return {**env, **extra}


def _run(cmd: list[str], cwd: Path, timeout: int = 900, **env: str) -> tuple[int, str, float]:
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr, time.time() - t0


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def _tail(text: str, n: int = 15) -> list[str]:
    return text.rstrip().splitlines()[-n:]


# ------------------------------------------------------------------------------------------------ the checks


def check_walk(copy: Path, commit: str, work: Path) -> dict:
    """gpu_check.sh as on the GPU machine, here without CUDA: every stage walked in order and recorded."""
    out = work / "walk"
    rc, text, secs = _run(["bash", "benchmarks/gpu_check.sh"], copy, OUT=str(out), LMFAST_COMMIT=commit)
    files = sorted(p.name for p in out.iterdir()) if out.exists() else []
    summary = json.loads((out / "gpu_check.json").read_text()) if (out / "gpu_check.json").exists() else {}
    md = (out / "gpu_check.md").read_text() if (out / "gpu_check.md").exists() else ""
    stages = summary.get("stages", [])
    caps = sum(s.get("limit_s", 0) for s in stages)
    preflight = next((s for s in stages if s["name"] == "preflight"), {})
    problems = []
    if rc != 0 or files != ["gpu_check.json", "gpu_check.md", "gpu_check_logs.tar.gz"]:
        problems.append(f"exit {rc}, wrote {files}")
    if preflight.get("status") != "ok":
        problems.append(f"preflight {preflight.get('status')}: {preflight.get('checks')}")
    if not stages or any(s.get("status") != "skipped" for s in stages[1:]):
        problems.append("not every GPU stage recorded as skipped: " + ", ".join(
            f"{s['name']} {s.get('status')}" for s in stages))
    if f"commit {commit}" not in md:
        problems.append(f"the report does not name commit {commit}: "
                        f"{next((ln for ln in md.splitlines() if 'commit' in ln), '')[:200]}")
    if caps > summary.get("budget_s", 0):
        problems.append(f"the stage caps add up to {caps} s, over the {summary.get('budget_s')} s budget")
    return {"name": "walk", "passed": not problems, "problems": problems, "seconds": round(secs, 1),
            "stages": [f"{s['name']}: {s.get('status')}" for s in stages], "caps_s": caps,
            "budget_s": summary.get("budget_s"), "preflight": preflight.get("checks", {}),
            "tail": [] if not problems else _tail(text)}


def check_dry_run(copy: Path, commit: str, work: Path) -> dict:
    """Every stage started as on a GPU, only collecting (pytest) and importing (the stage scripts)."""
    if "GPU_CHECK_DRY_RUN" not in (copy / "benchmarks" / "gpu_check.py").read_text():
        return legacy_commands(copy, commit, work)
    out = work / "dry"
    rc, text, secs = _run(["bash", "benchmarks/gpu_check.sh"], copy, OUT=str(out), LMFAST_COMMIT=commit,
                          GPU_CHECK_DRY_RUN="1")
    path = out / "gpu_check.json"
    stages = {s["name"]: s for s in json.loads(path.read_text())["stages"]} if path.exists() else {}
    tests = stages.get("gpu_tests", {})
    counts = tests.get("counts", {})
    benches = stages.get("kernels", {}).get("files", [])
    problems = [f"{n}: {s.get('status')}" + (f" ({s.get('reason')})" if s.get("reason") else "")
                for n, s in stages.items() if s.get("status") != "ok"]
    if rc != 0 or not stages:
        problems.append(f"gpu_check.sh exited {rc}")
    if not counts.get("collected") or counts.get("errors"):
        problems.append(f"stage a collected {counts.get('collected', 0)} tests with {counts.get('errors')} errors")
    return {"name": "dry_run", "passed": not problems, "problems": problems, "seconds": round(secs, 1),
            "stage_a": {"commands": len(tests.get("shards", [])), "collected": counts.get("collected", 0),
                        "errors": counts.get("errors", 0), "collection_errors": counts.get("collection_errors", [])},
            "benchmarks": [{k: f.get(k) for k in ("file", "exit_code", "collected", "errors")} for f in benches],
            "scripts": {n: stages.get(n, {}).get("exit_code") for n in ("loss_curves", "train_step",
                                                                       "attention_configs")},
            "tail": [line for s in stages.values() for line in s.get("log_tail", [])][-30:]}


def legacy_commands(copy: Path, commit: str, work: Path) -> dict:
    """A tree without the dry run: its gpu_check.sh runs this file (given as PYTHON) in place of gpu_check.py, so
    stage a's command (its ``_gpu_test_files()`` with the arguments its ``stage_gpu_tests`` gave pytest) and each
    benchmark file start in exactly that script's environment, with ``--collect-only`` added."""
    out = work / "legacy.json"
    wrapper = work / "legacy_python"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} {Path(__file__).resolve()} --legacy-inside {out}\n")
    wrapper.chmod(0o755)
    rc, text, secs = _run(["bash", "benchmarks/gpu_check.sh"], copy, OUT=str(work / "legacy_out"),
                          LMFAST_COMMIT=commit, PYTHON=str(wrapper))
    if not out.exists():
        return {"name": "dry_run", "passed": False, "problems": [f"gpu_check.sh exited {rc}"], "tail": _tail(text),
                "seconds": round(secs, 1), "legacy": True}
    found = json.loads(out.read_text())
    problems = [f"{r['what']}: exit {r['exit_code']}, {r['collected']} collected, {r['errors']} errors"
                for r in found if r["exit_code"] != 0 or r["errors"] or not r["collected"]]
    stage_a = next(r for r in found if r["what"] == "stage a")
    return {"name": "dry_run", "passed": not problems, "problems": problems, "seconds": round(secs, 1),
            "legacy": True, "stage_a": {k: stage_a[k] for k in ("collected", "errors", "collection_errors")},
            "benchmarks": [{"file": r["what"], **{k: r[k] for k in ("exit_code", "collected", "errors",
                                                                    "module_skipped_without_cuda")}}
                           for r in found if r["what"] != "stage a"],
            "tail": [line for r in found if r["exit_code"] != 0 for line in r["tail"]][-40:]}


def legacy_inside(out: Path) -> int:
    """Inside an old gpu_check.sh (its PYTHONPATH, cwd and environment): collect what its stages a and d ran."""
    sys.path.insert(0, str(Path.cwd() / "benchmarks"))
    import gpu_check

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"PYTHONUNBUFFERED": "1"}
    runs = [("stage a", [sys.executable, "-m", "pytest", "-m", "not slow", *gpu_check._gpu_test_files(), "-q",
                         "-p", "no:cacheprovider", "-rfE", "--collect-only"], {})]
    runs += [(name, [sys.executable, "-m", "pytest", str(gpu_check.HERE / name), "-q", "-p", "no:cacheprovider",
                     "--collect-only"], {"LMFAST_BENCH_QUICK": "1"})
             for name in gpu_check.KERNEL_BENCHES if (gpu_check.HERE / name).exists()]
    found = []
    for what, cmd, extra in runs:
        proc = subprocess.run(cmd, env={**env, **extra}, capture_output=True, text=True, timeout=600)
        text = proc.stdout + proc.stderr
        collected = re.search(r"^(\d+)(?:/\d+)? tests? collected", text, re.MULTILINE)
        errors = set(re.findall(r"^_+ ERROR collecting (\S+) _+$", text, re.MULTILINE))
        # An old benchmark skipped its whole module without CUDA before importing lmfast.kernels: no CPU saw it fail.
        skipped = bool(re.search(r"^SKIPPED \[1\] \S+: .*CUDA", text, re.MULTILINE)) and not collected
        found.append({"what": what, "exit_code": proc.returncode, "collected": int(collected.group(1)) if collected
                      else 0, "errors": len(errors), "collection_errors": sorted(errors), "tail": _tail(text, 20),
                      "module_skipped_without_cuda": skipped})
    out.write_text(json.dumps(found, indent=1))
    return 0


def check_interpreter_tests(copy: Path) -> dict:
    """The kernel tests under Triton's interpreter, on CPU, with these versions."""
    files = sorted(str(p.relative_to(copy)) for p in (copy / "tests").glob("**/test_*.py")
                   if p.name.startswith("test_kernel_") or "kernels" in p.relative_to(copy / "tests").parts[:-1])
    keys = copy.parent / "launch_keys.json"  # the compiles a GPU would pay for these launches (scripts/_launch_keys.py)
    rc, text, secs = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "_launch_keys", "-rfE",
                           *files], copy, timeout=1800, TRITON_INTERPRET="1", COLUMNS="400",  # wide: whole messages
                          PYTHONPATH=str(copy / "scripts"), LMFAST_LAUNCH_KEYS=str(keys))
    summary = next((ln for ln in reversed(text.splitlines()) if re.search(r"\d+ (passed|failed|error)", ln)), "")
    counts = {w: int(n) for n, w in re.findall(r"(\d+) (passed|failed|skipped|errors?)", summary)}
    causes: dict[str, int] = {}
    for message in re.findall(r"^(?:FAILED|ERROR) \S+ - (.*)$", text, re.MULTILINE):
        causes[message[:160]] = causes.get(message[:160], 0) + 1
    passed = rc == 0 and counts.get("passed", 0) > 0
    return {"name": "interpreter", "passed": passed, "seconds": round(secs, 1), "files": files, "counts": counts,
            "summary": summary.strip("= "), "causes": sorted(causes.items(), key=lambda c: -c[1])[:8],
            "compiles": json.loads(keys.read_text()) if keys.exists() else {},
            "problems": [] if passed else [f"pytest exited {rc}: {summary.strip('= ')}"],
            "tail": [] if passed else _tail(text, 25)}


# ------------------------------------------------------------------------------------------------ the report


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def report(facts: dict, checks: list[dict]) -> str:
    venv, v = facts["venv"], facts["versions"]
    built = (f"built for this run: {_gb(venv['download_bytes'])} of wheels downloaded in {venv['download_s']:.0f} s, "
             f"installed in {venv['install_s']:.0f} s" if venv.get("fresh") else
             f"reused (built {venv.get('built')}: {_gb(venv.get('download_bytes', 0))} of wheels downloaded in "
             f"{venv.get('download_s', 0):.0f} s, installed in {venv.get('install_s', 0):.0f} s)")
    verdict = "PASS" if all(c["passed"] for c in checks) else "FAIL"
    lines = [f"# Rehearsal of benchmarks/gpu_check.sh on CPU: {verdict}", "",
             f"Commit {facts['commit']} ({facts['source']}), copied without `.git` and not installed; CUDA absent. "
             f"Python {v['python']}, " + ", ".join(f"{p} {v[p]}" for p in PACKAGES) +
             f"; pytest-xdist {v['pytest-xdist']}; lmfast importable outside the copy: {v['lmfast']}. "
             f"{facts['seconds']:.0f} s for the checks on {facts['cpus']} CPU cores ({facts['cpu']}); the venv "
             f"{built}. Generated by `{facts['command']}`.", "",
             "| check | result | seconds |", "|---|---|---|"]
    names = {"walk": "gpu_check.sh walks every stage without CUDA, writes gpu_check.json/.md, names the commit, caps "
                     "within the budget",
             "dry_run": "every stage started as on a GPU: stage a and each kernel benchmark collect, each stage "
                        "script imports",
             "interpreter": "kernel tests under TRITON_INTERPRET=1"}
    for c in checks:
        lines.append(f"| {names[c['name']]} | {'ok' if c['passed'] else 'FAILED: ' + '; '.join(c['problems'])[:400]}"
                     f" | {c['seconds']} |")
    for c in checks:
        lines += ["", f"## {names[c['name']]}", ""]
        if c["name"] == "walk":
            lines += [f"Stages: {', '.join(c.get('stages', []))}. Caps add up to {c.get('caps_s')} s against a budget "
                      f"of {c.get('budget_s')} s.", "", "Preflight: " + "; ".join(
                          f"{k}: {val}" for k, val in c.get("preflight", {}).items())]
        elif c["name"] == "dry_run":
            a = c.get("stage_a", {})
            how = ("started inside this tree's own gpu_check.sh (it has no dry run), stage a's command rebuilt from "
                   "its `_gpu_test_files()` and arguments" if c.get("legacy") else "GPU_CHECK_DRY_RUN=1")
            lines += [f"How: {how}. Stage a: {a.get('collected', 0)} tests collected"
                      + (f" by {a['commands']} pytest commands" if a.get("commands") else "")
                      + f", {a.get('errors', 0)} errors" + (f" ({', '.join(a['collection_errors'])})"
                                                            if a.get("collection_errors") else "") + "."]
            lines += [f"- {b['file']}: exit {b['exit_code']}, {b['collected']} collected, {b['errors']} errors"
                      + (" (the module skips itself without CUDA before its imports, so a CPU never tries the "
                         "lmfast.kernels import that a GPU runs)" if b.get("module_skipped_without_cuda") else "")
                      for b in c.get("benchmarks", [])]
            if c.get("scripts"):
                lines.append("- stage scripts (`--dry-run`): " + ", ".join(
                    f"{n} exit {rc}" for n, rc in c["scripts"].items()))
        else:
            lines += [f"{len(c['files'])} files: {c['summary']}."]
            if c.get("compiles"):
                per = sorted(c["compiles"].items(), key=lambda kv: -kv[1])
                lines += ["", "Distinct Triton compiles these launches would cost on a GPU (kernel, constexprs, "
                          "warps/stages, dtypes, alignment and integer specializations; `scripts/_launch_keys.py`; "
                          "a lower bound for stage a, whose CUDA-only tests launch nothing here): "
                          f"{sum(n for _, n in per)}: " + ", ".join(f"{k} {n}" for k, n in per) + "."]
            if c["causes"]:
                lines += ["", "Failures by message:", ""] + [f"- {n} x `{m}`" for m, n in c["causes"]]
        if c.get("tail"):
            lines += ["", "Output (end):", "", "```", *c["tail"], "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", help="rehearse this commit (git archive) instead of the working tree")
    parser.add_argument("--venv-info", type=Path, help="rehearsal-venv.json of the venv (required)")
    parser.add_argument("--out", type=Path, help="the Markdown report (default benchmarks/results/...)")
    parser.add_argument("--legacy-inside", type=Path, help=argparse.SUPPRESS)
    args, unknown = parser.parse_known_args(argv)
    if args.legacy_inside:  # an old gpu_check.sh calls us as its python, with benchmarks/gpu_check.py after
        return legacy_inside(args.legacy_inside)
    if unknown or not args.venv_info:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}" if unknown else "--venv-info is required")
    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="lmfast-rehearsal."))
    copy = work / "repo"
    commit = copy_tree(args.ref, copy)
    lmfast = subprocess.run([sys.executable, "-c", "import lmfast"], cwd=work, capture_output=True).returncode == 0
    versions = {"python": platform.python_version(), **{p: _version(p) for p in PACKAGES},
                "pytest-xdist": _version("pytest-xdist"), "lmfast": "yes" if lmfast else "no"}
    checks = [check_walk(copy, commit, work), check_dry_run(copy, commit, work), check_interpreter_tests(copy)]
    command = "bash scripts/rehearse_gpu_check.sh" + (f" --ref {args.ref}" if args.ref else "")
    facts = {"commit": commit, "source": f"git archive {args.ref}" if args.ref else "the working tree",
             "versions": versions, "venv": json.loads(args.venv_info.read_text()), "seconds": time.time() - started,
             "cpus": os.cpu_count(), "cpu": _cpu_name(), "command": command}
    out = args.out or ROOT / "benchmarks" / "results" / (
        f"rehearsal_gpu_check_{commit}.md" if args.ref else "rehearsal_gpu_check.md")
    text = report(facts, checks)
    out.write_text(text)
    print(text)
    shutil.rmtree(work, ignore_errors=True)
    return 0 if all(c["passed"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
