#!/usr/bin/env bash
# Everything a lent GPU machine should check, in one call, cold compiles included, that installs and downloads nothing.
# The machine: one GPU, 16 CPU cores, Python 3.12, torch 2.11, triton 3.6, transformers, pytest, hypothesis,
# pytest-benchmark (no pytest-xdist); the repo arrives as a copy without .git, nothing of it installed.
# Stages in order of value, each under a cap, writing its results as it finishes (benchmarks/gpu_check.py):
#   0. preflight (versions, device, each fused op once)   a. the GPU tests, in 8 pytest processes
#   b. tinystories_17m trained 200 steps in bf16, fused vs reference loss curves
#   c. train step tokens/s, MFU, peak memory (gpt2_124m first; lmfast vs HF Llama)
#   d. attention launch configurations timed, the fastest per shape   e. kernel benchmarks
# The caps and a 10 s reserve add up to the budget, GPU_CHECK_BUDGET_S=480 by default. Results: $OUT/gpu_check.md,
# gpu_check.json, gpu_check_logs.tar.gz (3 files), rewritten after every stage, so a run cut short still reports
# every stage it finished, with test counts read as pytest streams them.
#
# From a session with the device tool, as ONE call, the commit written out on the command line (the copy has no
# .git, and a $(git ...) there would run on the device), e.g. for the sha that `git rev-parse --short HEAD` prints:
#   run(command="LMFAST_COMMIT=1a2b3c4 bash benchmarks/gpu_check.sh", timeout_s=560)
# ($OUT is set there; the three files come back.) Then commit gpu_check.md under benchmarks/results/ named after
# the device, e.g. benchmarks/results/gpu_check_h100.md.
# Elsewhere: OUT=/tmp/out bash benchmarks/gpu_check.sh (the commit then comes from git where .git exists).
#
# Without CUDA it still walks every stage in order (each GPU stage recorded as skipped) in seconds;
# GPU_CHECK_DRY_RUN=1 starts every stage as on a GPU but only collects and imports (see gpu_check.py).
# scripts/rehearse_gpu_check.sh runs both on CPU with the GPU image's versions; tests/test_gpu_check.py too.
#
# lmfast is not installed there and nothing is built: the repository root goes first on PYTHONPATH, as
# `python -m pytest` from the root puts it anyway, so `python benchmarks/<stage>.py` imports the same lmfast, whose
# lmfast.kernels reaches kernels/ (lmfast/kernels/__init__.py). The C++ tokenizer is optional and unused here.
set -u -o pipefail
export GPU_CHECK_STARTED="${GPU_CHECK_STARTED:-$(date +%s)}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$(command -v python3 || command -v python)}"
export PYTHONPATH="$ROOT:$ROOT/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
if [ -z "${LMFAST_COMMIT:-}" ] && [ -e "$ROOT/.git" ]; then
    LMFAST_COMMIT="$(git -C "$ROOT" describe --always --dirty 2>/dev/null)"
fi
LMFAST_COMMIT="${LMFAST_COMMIT:-unknown (a copy without .git: give LMFAST_COMMIT=<sha>)}"
export LMFAST_COMMIT
unset TRITON_INTERPRET
cd "$ROOT"
exec "$PY" benchmarks/gpu_check.py
