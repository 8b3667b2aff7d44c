"""Compile every Triton kernel configuration ahead of time for sm_80 and sm_90 and report registers and spills.

No GPU is needed: ``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))`` runs the whole
pipeline down to a cubin, and ``cuobjdump --dump-resource-usage`` (shipped in the triton wheel) reads the
registers, stack (spill) and shared memory of each kernel from it. Every kernel module lists the
configurations its launchers can pick in ``aot_specs()``; a module may name configurations whose spills are
known and accepted in ``AOT_SPILLS_ALLOWED = {spec name: reason}`` (the report prints the reason, and
tests/test_kernels_aot.py fails on any other spill).

    python benchmarks/aot_report.py [--out benchmarks/results] [--jobs 2] [--modules rmsnorm rope]

Writes ``aot_registers.md`` and ``aot_registers.json`` under ``--out``. Must run without TRITON_INTERPRET
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

MODULES = ("rmsnorm", "rope", "attention", "adamw")
TARGETS = (80, 90)
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
                   if str(spec.signature.get(arg, "")).startswith("*")}
        src = triton.compiler.ASTSource(spec.fn, spec.signature, spec.constexprs, aligned)
        options = {"num_warps": spec.num_warps, "num_stages": spec.num_stages}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compiled = triton.compile(src, target=GPUTarget("cuda", cc, 32), options=options)
        row.update(_resource_usage(compiled.asm["cubin"], compiled.metadata.name))
        row["spill_bytes"] = row["stack_bytes"] + row["local_bytes"]
        row["ok"] = True
    except Exception as e:  # reported per spec: one broken config must not hide the others
        row.update(ok=False, error=f"{type(e).__name__}: {e}".strip()[:2000], traceback=traceback.format_exc()[-4000:])
    row["seconds"] = round(time.perf_counter() - started, 3)
    return row


def collect_specs(modules: list[str]) -> tuple[list, dict[str, str], dict[str, str]]:
    """(module, spec) for every spec of every importable kernel module, an error per module that failed, and
    the accepted spills (spec name -> reason) the modules declare."""
    specs, errors, allowed = [], {}, {}
    for name in modules:
        try:
            mod = importlib.import_module(f"lmfast.kernels.{name}")
            mod_specs = list(mod.aot_specs())
            allowed.update(getattr(mod, "AOT_SPILLS_ALLOWED", {}))
        except Exception as e:
            errors[name] = f"{type(e).__name__}: {e}"
            continue
        if not mod_specs:
            errors[name] = "aot_specs() returned no configurations"
        names = [s.name for s in mod_specs]
        if len(set(names)) != len(names):
            errors[name] = "aot_specs() returned duplicate names"
        specs += [(name, s) for s in mod_specs]
    return specs, errors, allowed


def _markdown(report: dict) -> str:
    lines = [
        "# Ahead-of-time compile report: registers and spills per kernel configuration",
        "",
        f"triton {report['triton']}, torch {report['torch']}, commit {report['commit']}; "
        f"{report['compiled']} of {report['total']} compiles succeeded; targets {', '.join(report['targets'])}.",
        "Generated by `python benchmarks/aot_report.py`; spill bytes = stack + local bytes from cuobjdump; "
        "tensor arguments compiled as 16-byte aligned (as the runtime specializes them).",
        "",
    ]
    for module, error in report["module_errors"].items():
        lines.append(f"- **{module}**: {error}")
    lines += ["", "| module | configuration | target | warps | stages | registers | spill bytes | shared bytes |",
              "|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        if r["ok"]:
            spill = f"{r['spill_bytes']} (accepted: {r['spill_allowed']})" if r["spill_allowed"] else r["spill_bytes"]
            lines.append(f"| {r['module']} | {r['name']} | {r['target']} | {r['num_warps']} | {r['num_stages']} | "
                         f"{r['registers']} | {spill} | {r['shared_bytes']} |")
        else:
            lines.append(f"| {r['module']} | {r['name']} | {r['target']} | {r['num_warps']} | {r['num_stages']} | "
                         f"FAILED: {r['error'].splitlines()[0][:120]} | | |")
    return "\n".join(lines) + "\n"


def build_report(modules: list[str], jobs: int) -> dict:
    """Compile every spec of ``modules`` for every target; returns the report dict written to JSON."""
    import torch
    import triton

    global _specs
    _specs, errors, allowed = collect_specs(modules)
    work = [(i, cc) for i in range(len(_specs)) for cc in TARGETS]
    if jobs > 1 and len(work) > 1:
        with cf.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
            results = list(pool.map(_compile_one, work, chunksize=4))
    else:
        results = [_compile_one(job) for job in work]
    for r in results:
        r["spill_allowed"] = allowed.get(r["name"]) if r.get("spill_bytes") else None
    return {"triton": triton.__version__, "torch": torch.__version__, "commit": commit(),
            "targets": [f"sm_{cc}" for cc in TARGETS], "modules": modules, "module_errors": errors,
            "total": len(results), "compiled": sum(r["ok"] for r in results), "results": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=_RESULTS, help="folder for aot_registers.md/.json")
    parser.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), help="parallel compile processes")
    parser.add_argument("--modules", nargs="+", default=list(MODULES), choices=MODULES, help="kernel modules")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("aot_report: unset TRITON_INTERPRET; the interpreter cannot compile for a GPU", file=sys.stderr)
        return 2
    report = build_report(args.modules, args.jobs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "aot_registers.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "aot_registers.md").write_text(_markdown(report))
    failed = report["total"] - report["compiled"]
    print(f"aot_report: {report['compiled']}/{report['total']} compiled, {failed} failed, "
          f"module errors: {report['module_errors'] or 'none'}; wrote {args.out / 'aot_registers.md'}")
    return 1 if failed or report["module_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
