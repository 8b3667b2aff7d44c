#!/usr/bin/env bash
# Everything a lent GPU machine should check, in one call of at most ~8 minutes (cold compiles included), that
# installs and downloads nothing (Python 3.12, torch 2.11, triton 3.6 there; transformers, pytest, pytest-xdist and
# pytest-benchmark are in the image). Stages in order of value, each writing its results as it finishes:
#   0. preflight (seconds: versions, device, each fused op once)   a. the gpu-marked tests
#   b. tinystories_17m trained 200 steps in bf16, fused vs reference loss curves
#   c. train step tokens/s, MFU, peak memory (tinystories_17m, gpt2_124m; lmfast vs HF Llama)
#   d. kernel benchmarks vs torch eager, torch.compile, SDPA flash/cuDNN, torch fused AdamW
# See benchmarks/gpu_check.py. Results: $OUT/gpu_check.md, gpu_check.json, gpu_check_logs.tar.gz (3 files),
# rewritten after every stage, so a run cut short still reports every stage it finished.
#
#   OUT=/tmp/out bash benchmarks/gpu_check.sh           # GPU_CHECK_BUDGET_S=460 by default
#
# From a coordinator session, through the device tool, as ONE call (the budget keeps it inside the limit):
#   run(command="bash benchmarks/gpu_check.sh", timeout_s=560)
# ($OUT is set there; the three files come back.) Then commit gpu_check.md under benchmarks/results/ named after
# the device, e.g. benchmarks/results/gpu_check_h200.md. Without CUDA it still walks every stage in order (each
# GPU stage recorded as skipped) in a few seconds: tests/test_gpu_check.py runs it that way.
#
# lmfast is not installed there and nothing is built: the package is put on PYTHONPATH as a copy of lmfast/ with
# kernels/ linked in as lmfast.kernels (the C++ tokenizer is optional and unused by these checks).
set -u -o pipefail
export GPU_CHECK_STARTED="${GPU_CHECK_STARTED:-$(date +%s)}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$(command -v python3 || command -v python)}"
SITE="$(mktemp -d "${TMPDIR:-/tmp}/lmfast_site.XXXXXX")"
cp -r "$ROOT/lmfast" "$SITE/lmfast"
rm -rf "$SITE/lmfast/kernels" "$SITE"/lmfast/*.so
ln -s "$ROOT/kernels" "$SITE/lmfast/kernels"
export PYTHONPATH="$SITE:$ROOT/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET
cd "$ROOT"
"$PY" benchmarks/gpu_check.py
rc=$?
rm -rf "$SITE"
exit $rc
