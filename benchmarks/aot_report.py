"""Compile every Triton kernel configuration ahead of time for sm_80 and sm_90 and report registers, spills and
dynamic shared memory against each target's limits.

No GPU is needed: ``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))`` runs the whole
pipeline down to a cubin; ``cuobjdump --dump-resource-usage`` (shipped in the triton wheel) reads the registers and
stack (spill) bytes of each kernel from it, and the compiled kernel's metadata gives the dynamic shared memory it
asks for at launch (cuobjdump's SHARED column is only the static part). Every kernel module lists the
configurations its launchers can pick in ``aot_specs()``. Each result is checked against the target:

* shared memory within the smallest GPU that runs the build: sm_80 builds also run on sm_86/sm_89, which give a
  block 99 KiB (sm_80 itself 164 KiB); sm_90 gives 227 KiB;
* no spills, unless the module names the configuration in ``AOT_SPILLS_ALLOWED = {spec name: reason}``;
* on sm_90 at most 168 registers a thread (two blocks of eight warps fit a multiprocessor), unless the module
  names it in ``AOT_REGISTERS_ALLOWED = {spec name: reason}``.

The report prints each accepted exception's reason; tests/kernels/test_kernels_aot.py fails on any other.

    python benchmarks/aot_report.py [--out benchmarks/results] [--jobs 2] [--modules rmsnorm rope] [--dtype bf16]
        [--quick]
    PYTHONPATH=/tmp/triton36 python benchmarks/aot_report.py   # another triton, e.g. the GPU image's 3.6

Writes ``aot_registers_triton-<version>.md`` and ``.json`` under ``--out``. Must run without TRITON_INTERPRET
(the interpreter replaces the compiler); the script refuses to run with it set.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import importlib
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

from _machine import commit

MODULES = ("rmsnorm", "add_rmsnorm", "rope", "attention", "adamw", "linear_cross_entropy")
TARGETS = (80, 90)
KIB = 1024
# Dynamic shared memory a block may use, per GPU, and the GPUs each compile target's build runs on.
SMEM_LIMITS = {"sm_80": 164 * KIB, "sm_86": 99 * KIB, "sm_89": 99 * KIB, "sm_90": 227 * KIB}
RUNS_ON = {80: ("sm_80", "sm_86", "sm_89"), 90: ("sm_90",)}
SM90_MAX_REGISTERS = 168
_RESULTS = Path(__file__).resolve().parent / "results"
_specs: list = []  # (module, spec), filled in the parent before the workers fork


def _tool(name: str) -> str:
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: no {name} in this triton wheel; reinstall triton on Linux x86-64")
    return str(path)


def _resource_usage(cubin: bytes, kernel: str) -> dict:
    """Registers, stack, local and shared bytes of ``kernel`` in ``cubin``, as cuobjdump reports them."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", f.name], capture_output=True, text=True,
                             check=True).stdout
    match = re.search(rf"Function {re.escape(kernel)}:\s*\n\s*(.*)", out)
    if match is None:
        raise RuntimeError(f"cuobjdump printed no resource line for {kernel}:\n{out}")
    fields = dict(re.findall(r"(\w+(?:\[\d+\])?):(\d+)", match.group(1)))
    return {"registers": int(fields["REG"]), "stack_bytes": int(fields.get("STACK", 0)),
            "local_bytes": int(fields.get("LOCAL", 0)), "shared_bytes": int(fields.get("SHARED", 0))}


def _compile_one(job: tuple[int, int]) -> dict:
    index, cc = job
    module, spec = _specs[index]
    row = {"module": module, "name": spec.name, "kernel": spec.fn.__name__, "target": f"sm_{cc}",
           "num_warps": spec.num_warps, "num_stages": spec.num_stages}
    started = time.perf_counter()
    try:
        import triton
        from triton.backends.compiler import GPUTarget

        # Every tensor a launcher passes is 16-byte aligned, which the runtime specializes on (and which lets
        # Triton vectorize); integer arguments stay generic since their divisibility varies by shape.
        aligned = {(i,): [["tt.divisibility", 16]] for i, arg in enumerate(spec.fn.arg_names)
                   if str(spec.signature.get(arg, "")).startswith("*") or arg in spec.divisible}
        src = triton.compiler.ASTSource(spec.fn, spec.signature, spec.constexprs, aligned)
        options = {"num_warps": spec.num_warps, "num_stages": spec.num_stages}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compiled = triton.compile(src, target=GPUTarget("cuda", cc, 32), options=options)
        row.update(_resource_usage(compiled.asm["cubin"], compiled.metadata.name))
        row["spill_bytes"] = row["stack_bytes"] + row["local_bytes"]
        row["dynamic_shared_bytes"] = int(compiled.metadata.shared)
        limits = {gpu: SMEM_LIMITS[gpu] for gpu in RUNS_ON[cc]}
        row["shared_limit_bytes"] = min(limits.values())
        row["shared_over_limit_on"] = [gpu for gpu, limit in limits.items() if row["dynamic_shared_bytes"] > limit]
        row["ok"] = True
    except Exception as e:  # reported per spec: one broken config must not hide the others
        row.update(ok=False, error=f"{type(e).__name__}: {e}".strip()[:2000], traceback=traceback.format_exc()[-4000:])
    row["seconds"] = round(time.perf_counter() - started, 3)
    return row


def collect_specs(modules: list[str], dtype: str | None = None, quick: bool = False
                  ) -> tuple[list, dict[str, str], dict[str, dict]]:
    """(module, spec) for every spec of every importable kernel module (only names mentioning ``dtype`` when
    given; with ``quick``, attention's builds with documents on only, the variant with the most live values), an
    error per module that failed, and the exceptions the modules accept: {"spills": {spec name: reason},
    "registers": {spec name: reason}}."""
    specs, errors, allowed = [], {}, {"spills": {}, "registers": {}}
    for name in modules:
        try:
            mod = importlib.import_module(f"lmfast.kernels.{name}")
            mod_specs = list(mod.aot_specs())
            allowed["spills"].update(getattr(mod, "AOT_SPILLS_ALLOWED", {}))
            allowed["registers"].update(getattr(mod, "AOT_REGISTERS_ALLOWED", {}))
        except Exception as e:
            errors[name] = f"{type(e).__name__}: {e}"
            continue
        if not mod_specs:
            errors[name] = "aot_specs() returned no configurations"
        names = [s.name for s in mod_specs]
        if len(set(names)) != len(names):
            errors[name] = "aot_specs() returned duplicate names"
        if dtype is not None:
            mod_specs = [s for s in mod_specs if dtype in s.name.split()]
        if quick:
            mod_specs = [s for s in mod_specs if "DOC=0" not in s.name.split()]
        specs += [(name, s) for s in mod_specs]
    return specs, errors, allowed


def _check(row: dict, allowed: dict[str, dict]) -> None:
    """Mark ``row`` with the exceptions it needs and whether each is accepted (the reason) or not (None)."""
    row["spill_allowed"] = allowed["spills"].get(row["name"]) if row.get("spill_bytes") else None
    over = row.get("target") == "sm_90" and row.get("registers", 0) > SM90_MAX_REGISTERS
    row["registers_over_budget"] = over
    row["registers_allowed"] = allowed["registers"].get(row["name"]) if over else None


def problems(report: dict) -> list[str]:
    """Every failed compile, shared-memory overflow, and spill or register count over budget without a reason."""
    found = [f"{m}: {e}" for m, e in report["module_errors"].items()]
    for r in report["results"]:
        where = f"{r['name']} on {r['target']}"
        if not r["ok"]:
            found.append(f"{where}: {r['error'].splitlines()[0]}")
            continue
        if r["shared_over_limit_on"]:
            found.append(f"{where}: {r['dynamic_shared_bytes']} bytes of shared memory, over the limit of "
                         f"{', '.join(r['shared_over_limit_on'])}")
        if r["spill_bytes"] and not r["spill_allowed"]:
            found.append(f"{where}: spills {r['spill_bytes']} bytes")
        if r["registers_over_budget"] and not r["registers_allowed"]:
            found.append(f"{where}: {r['registers']} registers, over {SM90_MAX_REGISTERS}")
    return found


def _kib(n: int) -> str:
    return f"{n / KIB:.1f} KiB"


def _markdown(report: dict) -> str:
    issues = problems(report)
    lines = [
        f"# Ahead-of-time compile report, triton {report['triton']}: registers, spills, shared memory",
        "",
        f"triton {report['triton']}, torch {report['torch']}, commit {report['commit']}; "
        f"{report['compiled']} of {report['total']} compiles succeeded; targets {', '.join(report['targets'])}"
        f"{'; dtype ' + report['dtype'] + ' only' if report.get('dtype') else ''}.",
        f"Generated by `{report['command']}`. Registers and spill bytes (stack + local) from cuobjdump; dynamic "
        "shared memory from the compiled kernel, checked against the smallest GPU that runs the build (sm_80 "
        "builds also run on sm_86/sm_89: 99 KiB; sm_90: 227 KiB). Budget on sm_90: "
        f"{SM90_MAX_REGISTERS} registers a thread. Tensor arguments compiled as 16-byte aligned (as the runtime "
        "specializes them).",
        "",
        f"**Problems: {len(issues)}**" + ("" if issues else " (every compile fits its target without an unexplained "
                                                            "spill or register count)"),
        "",
    ]
    lines += [f"- {p}" for p in issues]
    accepted = sorted({(r["name"], r["spill_allowed"] or r["registers_allowed"]) for r in report["results"]
                       if r.get("spill_allowed") or r.get("registers_allowed")})
    if accepted:
        lines += ["", "Accepted, with the module's reason:", ""]
        lines += [f"- {name}: {reason}" for name, reason in accepted]
    lines += ["", "| module | configuration | target | warps | stages | registers | spill bytes | dynamic shared "
              "(limit) |", "|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        head = f"| {r['module']} | {r['name']} | {r['target']} | {r['num_warps']} | {r['num_stages']} |"
        if not r["ok"]:
            lines.append(f"{head} FAILED: {r['error'].splitlines()[0][:120]} | | |")
            continue
        regs = f"**{r['registers']}**" if r["registers_over_budget"] else str(r["registers"])
        spill = f"**{r['spill_bytes']}**" if r["spill_bytes"] else "0"
        smem = f"{_kib(r['dynamic_shared_bytes'])} ({_kib(r['shared_limit_bytes'])})"
        if r["shared_over_limit_on"]:
            smem = f"**{smem}**"
        lines.append(f"{head} {regs} | {spill} | {smem} |")
    return "\n".join(lines) + "\n"


def build_report(modules: list[str], jobs: int, dtype: str | None = None, command: str = "",
                 quick: bool = False) -> dict:
    """Compile every spec of ``modules`` for every target; returns the report dict written to JSON."""
    import torch
    import triton

    global _specs
    _specs, errors, allowed = collect_specs(modules, dtype, quick)
    work = [(i, cc) for i, (_, spec) in enumerate(_specs) for cc in TARGETS if cc in spec.targets]
    if jobs > 1 and len(work) > 1:
        with cf.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
            results = list(pool.map(_compile_one, work, chunksize=4))
    else:
        results = [_compile_one(job) for job in work]
    for r in results:
        _check(r, allowed)
    return {"triton": triton.__version__, "torch": torch.__version__, "commit": commit(), "command": command,
            "dtype": dtype, "targets": [f"sm_{cc}" for cc in TARGETS], "modules": modules, "module_errors": errors,
            "total": len(results), "compiled": sum(r["ok"] for r in results), "results": results}


def recheck(path: Path) -> int:
    """Re-judge the report at ``path`` (its .json, with the .md beside it rewritten) against the exceptions the kernel
    modules accept now: the compiled numbers are kept, only the verdicts change."""
    report = json.loads(path.read_text())
    _, _, allowed = collect_specs(report["modules"])
    for row in report["results"]:
        if row["ok"]:
            _check(row, allowed)
    path.write_text(json.dumps(report, indent=1) + "\n")
    path.with_suffix(".md").write_text(_markdown(report))
    found = problems(report)
    print(f"aot_report: rechecked {path}: {len(found)} problems")
    return 1 if found else 0


def report_name(triton_version: str) -> str:
    """The file stem of a report: ``aot_registers_triton-3.6.0``."""
    return f"aot_registers_triton-{triton_version}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=_RESULTS, help="folder for the report (.md and .json)")
    parser.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), help="parallel compile processes")
    parser.add_argument("--modules", nargs="+", default=list(MODULES), choices=MODULES, help="kernel modules")
    parser.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), help="only the configurations of this dtype")
    parser.add_argument("--quick", action="store_true", help="attention with documents on only (the test's build)")
    parser.add_argument("--recheck", type=Path, help="judge an existing report (.json) against the modules' current "
                        "accepted exceptions and rewrite it, without compiling")
    args = parser.parse_args(argv)
    if args.recheck:
        return recheck(args.recheck)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("aot_report: unset TRITON_INTERPRET; the interpreter cannot compile for a GPU", file=sys.stderr)
        return 2
    command = "python benchmarks/aot_report.py" + (f" --dtype {args.dtype}" if args.dtype else "") + (
        " --quick" if args.quick else "")
    report = build_report(args.modules, args.jobs, args.dtype, command, args.quick)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = report_name(report["triton"])
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / f"{stem}.md").write_text(_markdown(report))
    found = problems(report)
    print(f"aot_report: triton {report['triton']}, {report['compiled']}/{report['total']} compiled, "
          f"{len(found)} problems; wrote {args.out / (stem + '.md')}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
