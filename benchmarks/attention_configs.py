"""Time attention's launch configurations on this GPU and record the fastest per shape: which configurations to ship.

    python benchmarks/attention_configs.py --out FILE.json [--deadline-s 32] [--jobs 12] [--dry-run]

Candidates: ``TUNING_CANDIDATES`` in kernels/_attention_configs.py, for the table of this GPU's generation at head
dims 64 and 128 with and without RoPE inside, each a configuration the ahead-of-time report builds (for its target
with Triton 3.6 and 3.9: no spills, shared memory within the target; registers over sm_90's 168 named in
attention's AOT_REGISTERS_ALLOWED), the shipped one included. Shapes as
benchmarks/bench_attention.py: bf16, batch * seq = 16k tokens, heads * head_dim = 1024, seq 1024 and 2048. Each
pass is timed on its own, the other passes at the shipped configuration: the forward; the backward with a candidate
dK/dV pass; the backward with a candidate dQ pass. The result names the fastest candidate per (head dim, seq, pass)
against the shipped one, and times forward+backward of the fastest combination against the shipped table.

Cold compiles come first, in ``--jobs`` processes side by side (each launches its share of the candidates once, at
seq 1024: seq 2048 specializes the same way, so Triton's cache then holds every kernel the timing needs); then this
process times one candidate at a time with ``triton.testing.do_bench``, until ``--deadline-s``. Needs CUDA.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

PASSES = ("fwd", "dkdv", "dq")
SEQS = (1024, 2048)
TOKENS, WIDTH = 16384, 1024  # batch * seq, heads * head_dim, as bench_attention.py


def candidates(generation: str) -> list[tuple[tuple[int, bool], str, tuple]]:
    """((head dim, RoPE), pass, config) for every candidate of ``generation``'s table, the shipped ones included."""
    from lmfast.kernels._attention_configs import GPU_CONFIGS, TUNING_CANDIDATES

    found = []
    for head_dim, by_pass in TUNING_CANDIDATES.get(generation, {}).items():
        shipped = GPU_CONFIGS[generation][head_dim]
        for pass_ in PASSES:
            found += [(head_dim, pass_, c) for c in dict.fromkeys((getattr(shipped, pass_), *by_pass[pass_]))]
    return found


def _runner(cfgs, key: tuple[int, bool], pass_: str, seq: int, batch: int | None = None):
    """A no-argument callable running ``pass_`` ("fwd", "bwd" or "fwd+bwd") with the launch configurations ``cfgs``,
    at ``key`` = (head dim, RoPE inside)."""
    from lmfast.kernels import attention
    from lmfast.model import functional

    def use_cfgs(*args):  # the launchers read their configurations here
        return cfgs

    head_dim, rope = key
    heads, batch = WIDTH // head_dim, batch or TOKENS // seq
    q, k, v, do = (torch.randn(batch, heads, seq, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    angles = [t.cuda() for t in functional.rope_cos_sin(10000.0, head_dim, torch.arange(seq))] if rope else []
    scale = head_dim**-0.5
    attention.configs_for = use_cfgs
    out, lse = attention.attention_fwd(q, k, v, scale, *angles)

    def run():
        attention.configs_for = use_cfgs
        if pass_ != "bwd":
            o, lse2 = attention.attention_fwd(q, k, v, scale, *angles)
        if pass_ != "fwd":
            attention.attention_bwd(do, q, k, v, out, lse, scale, *angles)
    return run


def _with(generation: str, head_dim: int, pass_: str, config):
    """The shipped configurations of ``head_dim`` with ``pass_``'s replaced by ``config``; the pass to time."""
    from lmfast.kernels._attention_configs import GPU_CONFIGS

    return GPU_CONFIGS[generation][head_dim]._replace(**{pass_: config}), "fwd" if pass_ == "fwd" else "bwd"


def _generation() -> str:
    from lmfast.kernels._attention_configs import generation

    return generation(torch.device("cuda"))


def warm(index: int, jobs: int) -> int:
    """Launch every ``jobs``-th candidate from ``index`` once at seq 1024: each cold compile lands in the cache."""
    gen = _generation()
    for head_dim, pass_, config in candidates(gen)[index::jobs]:
        try:
            _runner(*_with(gen, head_dim, pass_, config)[:1], head_dim, "fwd+bwd", 1024, batch=1)()
        except Exception as e:  # timed (and reported) in the main process; one failure must not stop the others
            print(f"warm: {head_dim} {pass_} {config}: {type(e).__name__}: {e}"[:300], flush=True)
    torch.cuda.synchronize()
    return 0


def _time(fn) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=5, rep=25)


def _fastest(timed: list[dict], gen: str) -> tuple[list[dict], dict]:
    """The fastest candidate per (head dim, seq, pass) against the shipped one; the fastest table per shape."""
    from lmfast.kernels._attention_configs import GPU_CONFIGS

    fastest, tables = [], {}
    for head_dim, seq, pass_ in sorted({(r["head_dim"], r["seq"], r["pass"]) for r in timed}):
        rows = [r for r in timed if (r["head_dim"], r["seq"], r["pass"]) == (head_dim, seq, pass_)]
        shipped = getattr(GPU_CONFIGS[gen][head_dim], pass_)
        top = min(rows, key=lambda r: r["ms"])
        mine = next((r["ms"] for r in rows if r["config"] == list(shipped)), None)
        fastest.append({"head_dim": head_dim, "seq": seq, "pass": pass_, "best": tuple(top["config"]),
                        "best_ms": top["ms"], "shipped": tuple(shipped), "shipped_ms": mine})
        table = tables.get((head_dim, seq), GPU_CONFIGS[gen][head_dim])
        tables[(head_dim, seq)] = table._replace(**{pass_: type(shipped)(*top["config"])})
    return fastest, tables


def measure(deadline_s: float, jobs: int) -> dict:
    started = time.perf_counter()
    gen = _generation()
    found = candidates(gen)
    procs = [subprocess.Popen([sys.executable, __file__, "--warm", str(i), str(jobs)]) for i in range(jobs)]
    for p in procs:  # at most 60% of the time compiling: a kernel still cold then compiles in the timing loop
        try:
            p.wait(timeout=max(1.0, 0.6 * deadline_s - (time.perf_counter() - started)))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    warm_s = time.perf_counter() - started
    from lmfast.kernels._attention_configs import GPU_CONFIGS

    timed, errors = [], []
    for seq, (head_dim, pass_, config) in ((s, c) for s in SEQS for c in found):
        if time.perf_counter() - started > deadline_s:
            errors.append(f"past the {deadline_s:.0f} s deadline at {head_dim} seq={seq}: the rest not timed")
            break
        try:
            ms = _time(_runner(*_with(gen, head_dim, pass_, config), seq))
        except Exception as e:
            errors.append(f"{head_dim} seq={seq} {pass_} {tuple(config)}: {type(e).__name__}: {e}"[:300])
            continue
        timed.append({"head_dim": tuple(head_dim), "seq": seq, "pass": pass_, "config": list(config),
                      "ms": round(ms, 4)})
    fastest, tables = _fastest(timed, gen)
    fwd_bwd = []
    for (head_dim, seq), best in tables.items():  # head_dim: the table key (head dim, RoPE inside)
        shipped = GPU_CONFIGS[gen][head_dim]
        if best != shipped and time.perf_counter() - started < deadline_s + 4:
            fwd_bwd.append({"head_dim": head_dim, "seq": seq, "best": [tuple(c) for c in best],
                            "best_ms": round(_time(_runner(best, head_dim, "fwd+bwd", seq)), 4),
                            "shipped_ms": round(_time(_runner(shipped, head_dim, "fwd+bwd", seq)), 4)})
    return {"generation": gen, "gpu": torch.cuda.get_device_name(), "candidates": len(found),
            "warm_s": round(warm_s, 1), "config_fields": "block_m, block_n, num_warps, num_stages", "timed": timed,
            "fastest": fastest, "fwd_bwd": fwd_bwd, "errors": errors}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--deadline-s", type=float, default=32.0, help="start no timing after this many seconds")
    parser.add_argument("--jobs", type=int, default=max(1, min(12, (os.cpu_count() or 2) - 2)))
    parser.add_argument("--warm", nargs=2, type=int, metavar=("INDEX", "JOBS"), help=argparse.SUPPRESS)
    parser.add_argument("--dry-run", action="store_true", help="import what the run uses, run nothing")
    args = parser.parse_args(argv)
    if args.dry_run:
        import triton.testing  # noqa: F401

        from lmfast.kernels import attention  # noqa: F401

        found = {gen: len(candidates(gen)) for gen in ("sm80", "sm90")}
        print(f"attention_configs: dry run: candidates per generation {found}; nothing run")
        return 0 if any(found.values()) else 1
    if not torch.cuda.is_available():
        print("attention_configs: no CUDA device; nothing run", file=sys.stderr)
        return 3
    if args.warm:
        return warm(*args.warm)
    result = measure(args.deadline_s, args.jobs)
    text = json.dumps(result, indent=1) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
