#!/usr/bin/env bash
# Rehearse benchmarks/gpu_check.sh on CPU with the GPU machine's software, before a GPU lease is spent on it.
# Run it whenever benchmarks/gpu_check*, the stage scripts, kernels/ or the test layout change.
#
#   bash scripts/rehearse_gpu_check.sh                 # the working tree -> benchmarks/results/rehearsal_gpu_check.md
#   bash scripts/rehearse_gpu_check.sh --ref 5f44be4   # a commit -> benchmarks/results/rehearsal_gpu_check_5f44be4.md
#
# The GPU machine: Python 3.12, torch 2.11 (a CUDA build), triton 3.6, transformers, pytest, hypothesis,
# pytest-benchmark, pybind11; no pytest-xdist; the repo a copy without .git, nothing of it installed; commands run
# from the repo root. This builds that software in a throwaway venv outside the repo (reused while its versions
# hold): ${LMFAST_REHEARSAL_VENV:-${TMPDIR:-/tmp}/lmfast-rehearsal-torch2.11.0-triton3.6.0}, about 2.8 GB of wheels
# from PyPI (torch's CUDA wheels run on CPU), numpy as the image resolves it (the newest). Then
# scripts/rehearse_gpu_check.py copies the repo without .git and, without CUDA, checks that gpu_check.sh walks and
# records every stage, that every stage starts as on a GPU (GPU_CHECK_DRY_RUN=1: stage a collects > 0 tests with
# 0 errors, every kernel benchmark file collects, every stage script imports), and that the kernel tests pass under
# the interpreter with these versions. About 5 minutes on 2 cores with the venv in place; building it
# (2.8 GB downloaded, installed) took 8 more here.
#
# What only a GPU shows: native kernels' results and speed, real compile times (does the run fit its budget?),
# inductor graphs, MFU. Exit 0 when every check passes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TORCH=2.11.0
TRITON=3.6.0
PACKAGES=("torch==$TORCH" "triton==$TRITON" numpy pytest hypothesis pytest-benchmark transformers pybind11)
VENV="${LMFAST_REHEARSAL_VENV:-${TMPDIR:-/tmp}/lmfast-rehearsal-torch$TORCH-triton$TRITON}"
ARGS=("$@")

python312() {  # the image's Python: python3.12 on PATH, or pyenv's, else python3 (the report names which ran)
    local candidate
    for candidate in "${REHEARSAL_PYTHON:-}" python3.12 "$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 2>/dev/null | tail -1)" python3; do
        if [ -n "$candidate" ] && "$candidate" -c "" 2>/dev/null; then
            echo "$candidate"
            return
        fi
    done
}

venv_ok() {
    [ -f "$VENV/rehearsal-venv.json" ] && "$VENV/bin/python" - "$TORCH" "$TRITON" <<'EOF'
import importlib.metadata as md, importlib.util, sys
ok = md.version("torch").split("+")[0] == sys.argv[1] and md.version("triton") == sys.argv[2]
sys.exit(0 if ok and importlib.util.find_spec("xdist") is None else 1)
EOF
}

if ! venv_ok 2>/dev/null; then
    PY="$(python312)"
    echo "rehearse_gpu_check: building $VENV with $("$PY" --version 2>&1)" >&2
    rm -rf "$VENV" "$VENV.wheels"
    "$PY" -m venv "$VENV"
    t0=$(date +%s)
    "$VENV/bin/pip" download --no-cache-dir --disable-pip-version-check -q -d "$VENV.wheels" "${PACKAGES[@]}"
    t1=$(date +%s)
    "$VENV/bin/pip" install --disable-pip-version-check -q --no-index --find-links "$VENV.wheels" "${PACKAGES[@]}"
    t2=$(date +%s)
    bytes=$(du -sb "$VENV.wheels" | cut -f1)
    rm -rf "$VENV.wheels"
    printf '{"download_bytes": %s, "download_s": %s, "install_s": %s, "built": "%s", "fresh": true}\n' \
        "$bytes" "$((t1 - t0))" "$((t2 - t1))" "$(date -u +%Y-%m-%dT%H:%MZ)" > "$VENV/rehearsal-venv.json"
    FRESH_INFO="$(cat "$VENV/rehearsal-venv.json")"
    venv_ok || { echo "rehearse_gpu_check: $VENV lacks torch $TORCH / triton $TRITON or has pytest-xdist" >&2; exit 1; }
fi
INFO="$(mktemp)"
trap 'rm -f "$INFO"' EXIT
if [ -n "${FRESH_INFO:-}" ]; then
    echo "$FRESH_INFO" > "$INFO"
    sed -i 's/"fresh": true/"fresh": false/' "$VENV/rehearsal-venv.json"  # the next run reuses it
else
    cp "$VENV/rehearsal-venv.json" "$INFO"
fi
cd /
"$VENV/bin/python" "$ROOT/scripts/rehearse_gpu_check.py" --venv-info "$INFO" ${ARGS[@]+"${ARGS[@]}"}
