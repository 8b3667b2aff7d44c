#!/usr/bin/env bash
# Everything a lent GPU machine should check, in one call: build lmfast, run the GPU tests, the kernel and
# training-step benchmarks, and a short training run per bundled config; then write one JSON and one
# Markdown summary naming the GPU, driver, torch/triton versions and the commit.
#
#   bash benchmarks/gpu_check.sh                  # results in $OUT, or benchmarks/results/ when OUT is unset
#   GPU_CHECK_BUDGET_S=300 bash benchmarks/gpu_check.sh
#
# The machine has no network. Each step runs under `timeout`, and a step is skipped when the time left in
# the whole budget (GPU_CHECK_BUDGET_S, default 460 s, under the 8-minute call) cannot hold it, so one hung
# or slow step never eats the others. Steps run in priority order. Without CUDA the GPU steps are skipped
# and the summary says so. Writes three files: gpu_check.json, gpu_check.md, gpu_check_logs.tar.gz.
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DEST="${OUT:-$ROOT/benchmarks/results}"
BUDGET="${GPU_CHECK_BUDGET_S:-460}"
PY="${PYTHON:-python}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
LOGS="$WORK/logs"
STEPS="$WORK/steps.tsv"
START=$(date +%s)
mkdir -p "$DEST" "$LOGS"
: >"$STEPS"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET

elapsed() { echo $(($(date +%s) - START)); }

# step NAME LIMIT_S CMD...: run CMD under `timeout`, at most LIMIT_S and never past the budget; log it.
step() {
  local name="$1" limit="$2"
  shift 2
  local left=$((BUDGET - $(elapsed) - 15))  # 15 s kept for the summary
  if ((left < 20)); then
    printf '%s\tskipped\t0\t0\tout of budget (%ss left)\n' "$name" "$left" >>"$STEPS"
    echo "== $name: skipped, out of budget" >&2
    return 0
  fi
  ((limit > left)) && limit=$left
  echo "== $name (limit ${limit}s, ${left}s of budget left)" >&2
  local t0=$(date +%s) rc=0
  timeout --kill-after=10 "$limit" "$@" >"$LOGS/$name.log" 2>&1 || rc=$?
  local secs=$(($(date +%s) - t0)) status=ok
  ((rc == 124 || rc == 137)) && status=timeout
  ((rc != 0 && rc != 124 && rc != 137)) && status=failed
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$secs" "$*" >>"$STEPS"
  echo "   $status (exit $rc) in ${secs}s" >&2
}

HAS_CUDA=$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)

# 1. Build lmfast (C++ tokenizer extension; kernels install as lmfast.kernels). GPU_CHECK_SKIP_BUILD=1 keeps
#    an existing install (to try this script on a machine where other work uses that install).
if [[ "${GPU_CHECK_SKIP_BUILD:-0}" == 1 ]]; then
  printf 'build\tskipped\t0\t0\tGPU_CHECK_SKIP_BUILD=1\n' >>"$STEPS"
else
  step build 180 "$PY" -m pip install --no-build-isolation --no-deps --no-index -e .
fi

BENCH=(-p no:cacheprovider --benchmark-only --benchmark-disable-gc --benchmark-columns=median,rounds)
if [[ "$HAS_CUDA" == 1 ]]; then
  # 2. Correctness on the GPU: every test marked gpu (kernels vs references, fused model, compile).
  step pytest_gpu 150 "$PY" -m pytest -m gpu tests/ -q -p no:cacheprovider --junitxml="$LOGS/pytest_gpu.xml"
  #    The unmarked kernel tests (odd shapes, bad input) too: on a GPU they run the kernels natively.
  step pytest_kernels_native 60 "$PY" -m pytest tests/test_kernel_rmsnorm.py tests/test_kernel_rope.py \
    tests/test_kernel_attention.py tests/test_kernel_adamw.py -q -p no:cacheprovider -m "not slow and not gpu"
  # 3. Kernel benchmarks, each saving pytest-benchmark JSON (with machine info and GB/s / TFLOPS per row).
  #    (torch.compile of the 100-tensor AdamW reference loop takes minutes, so it is left to the full benchmark.)
  step bench_rmsnorm 90 "$PY" -m pytest benchmarks/bench_rmsnorm.py "${BENCH[@]}" -k "not 2048" \
    --benchmark-json="$LOGS/bench_rmsnorm.json"
  step bench_rope 75 "$PY" -m pytest benchmarks/bench_rope.py "${BENCH[@]}" --benchmark-json="$LOGS/bench_rope.json"
  step bench_adamw 60 "$PY" -m pytest benchmarks/bench_adamw.py "${BENCH[@]}" -k "not compiled" \
    --benchmark-json="$LOGS/bench_adamw.json"
  # 4. A short training run per bundled config on random tokens (no network for the real corpora), with the
  #    remaining benchmarks between them in priority order.
  train() {  # train CONFIG STEPS BATCH LIMIT_S
    local cfg="$1" steps="$2" batch="$3" limit="$4" vocab tokens
    [[ -f "configs/$cfg.yaml" ]] || return 0
    vocab=$("$PY" -c "import yaml; print(yaml.safe_load(open('configs/$cfg.yaml'))['vocab_size'])")
    tokens="$WORK/tokens_$vocab.npy"
    "$PY" -c "import numpy as np; np.save('$tokens', np.random.default_rng(0).integers(0, $vocab, 4_000_000).astype(np.uint16 if $vocab <= 65535 else np.int32))"
    step "train_$cfg" "$limit" "$PY" -m lmfast.train --config "configs/$cfg.yaml" --device cuda \
      --set train_data_path="$tokens" --set val_data_path="$tokens" --set tokenizer=null --set sample_prompt=null \
      --set max_steps="$steps" --set batch_size="$batch" --set gradient_accumulation_steps=1 --set warmup_iters=5 \
      --set cosine_cycle_iters="$steps" --set log_interval=5 --set eval_interval=0 --set eval_iters=2 \
      --set checkpoint_dir="$WORK/ckpt_$cfg" --set log_file="$WORK/ckpt_$cfg/training.log" \
      --set checkpoint_steps=0 --set checkpoint_interval=0 --set progress=false
  }
  train tinystories_17m 30 16 90
  step bench_attention 90 "$PY" -m pytest benchmarks/bench_attention.py "${BENCH[@]}" \
    -k "1024" --benchmark-json="$LOGS/bench_attention.json"
  if [[ -f benchmarks/bench_train_step.py ]]; then
    step bench_train_step 100 "$PY" -m pytest benchmarks/bench_train_step.py "${BENCH[@]}" \
      --benchmark-json="$LOGS/bench_train_step.json"
  fi
  train gpt2_124m 10 8 100
fi
# 5. Ahead-of-time compile report with this machine's triton (cheap with 16 cores; checks the pinned triton).
step aot_report 60 "$PY" benchmarks/aot_report.py --out "$LOGS/aot" --jobs "$(( $(nproc) < 8 ? $(nproc) : 8 ))"

# Summary: one JSON and one Markdown file, then the logs as one archive.
"$PY" - "$STEPS" "$LOGS" "$DEST" "$HAS_CUDA" "$(elapsed)" <<'PYEOF'
import json, platform, subprocess, sys
from pathlib import Path

steps_tsv, logs, dest, has_cuda, elapsed = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4] == "1", int(sys.argv[5])


def sh(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:
        return ""


machine = {"python": platform.python_version(), "host_cpu": platform.processor() or platform.machine()}
try:
    import torch
    machine.update(torch=torch.__version__, cuda=str(torch.version.cuda),
                   gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else "none (CUDA unavailable)")
except Exception as e:
    machine.update(torch=f"import failed: {e}", gpu="unknown")
try:
    import importlib.metadata as md
    machine["triton"] = md.version("triton")
except Exception:
    machine["triton"] = "not installed"
machine["driver"] = (sh("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader").splitlines() or ["none"])[0]
machine["commit"] = sh("git", "rev-parse", "--short", "HEAD") or "unknown"
machine["dirty"] = bool(sh("git", "status", "--porcelain", "--untracked-files=no"))

steps = []
for line in steps_tsv.read_text().splitlines():
    name, status, rc, secs, cmd = line.split("\t", 4)
    log = logs / f"{name}.log"
    tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
    steps.append(dict(name=name, status=status, exit_code=int(rc), seconds=int(secs), command=cmd, log_tail=tail))

UNITS = ("gbps", "tflops", "tokens_per_s", "mfu")
benchmarks = []
for path in sorted(logs.glob("bench_*.json")):
    try:
        data = json.loads(path.read_text())
    except ValueError:
        continue
    for b in data.get("benchmarks", []):
        extra = b.get("extra_info", {})
        row = dict(file=path.stem, group=b.get("group"), name=b.get("name"), params=b.get("params"),
                   median_s=b.get("stats", {}).get("median"))
        row.update({k: extra[k] for k in UNITS if k in extra})
        benchmarks.append(row)


def provider(b):
    params = b.get("params") or {}
    return str(params.get("provider") or params.get("impl") or b["name"].split("[", 1)[-1].rstrip("]"))


def value(b):
    for unit in UNITS[:3]:
        if unit in b:
            return unit, b[unit]
    return "median s", b["median_s"]


tables = {}
for b in benchmarks:
    tables.setdefault(b["file"], {}).setdefault(b["group"], {})[provider(b)] = value(b)

train = {}
for s in steps:
    if s["name"].startswith("train_"):
        losses = [l for l in s["log_tail"] if "Loss" in l]
        train[s["name"][6:]] = losses[-3:]

summary = dict(machine=machine, cuda=has_cuda, elapsed_s=elapsed, steps=steps, benchmarks=benchmarks, training=train)
(dest / "gpu_check.json").write_text(json.dumps(summary, indent=1) + "\n")

md = [f"# GPU check: {machine['gpu']}", "",
      f"driver {machine['driver']}, CUDA {machine.get('cuda')}, torch {machine['torch']}, triton {machine['triton']}, "
      f"python {machine['python']}, commit {machine['commit']}{' (dirty)' if machine['dirty'] else ''}; "
      f"{elapsed} s in all. Generated by `bash benchmarks/gpu_check.sh`.", ""]
if not has_cuda:
    md += ["**No CUDA device**: the GPU steps (tests, benchmarks, training) were skipped.", ""]
md += ["| step | status | exit | seconds |", "|---|---|---|---|"]
md += [f"| {s['name']} | {s['status']} | {s['exit_code']} | {s['seconds']} |" for s in steps]
for file, groups in tables.items():
    providers = sorted({p for g in groups.values() for p in g})
    md += ["", f"## {file}", "", "| group | " + " | ".join(providers) + " | unit |", "|---|" + "---|" * (len(providers) + 1)]
    for group, vals in groups.items():
        unit = next(iter(vals.values()))[0]
        cells = [f"{vals[p][1]:.4g}" if p in vals and vals[p][1] is not None else "" for p in providers]
        md.append(f"| {group} | " + " | ".join(cells) + f" | {unit} |")
    fused = [(g, v) for g, v in groups.items() if "fused" in v]
    if fused and any(p != "fused" for p in providers):
        md += ["", "fused vs each provider (higher is better for fused):", ""]
        for g, v in fused:
            ratios = ", ".join(f"{p} {v['fused'][1] / v[p][1]:.2f}x" for p in providers
                               if p != "fused" and p in v and v[p][1] and v["fused"][1] and v[p][0] != "median s")
            md.append(f"- {g}: {ratios}")
for name, lines in train.items():
    md += ["", f"## training: {name}", "", "```", *lines, "```"]
failed = [s for s in steps if s["status"] in ("failed", "timeout")]
skipped = [s for s in steps if s["status"] == "skipped"]
if failed:
    md += ["", "## steps that did not pass", ""]
    for s in failed:
        md += [f"### {s['name']} ({s['status']}, exit {s['exit_code']})", "", "```", *s["log_tail"], "```", ""]
(dest / "gpu_check.md").write_text("\n".join(md) + "\n")
print(f"gpu_check: {len(steps) - len(failed) - len(skipped)} steps ok, {len(failed)} failed or timed out, "
      f"{len(skipped)} skipped; wrote {dest / 'gpu_check.md'}")
PYEOF
cp benchmarks/results/attention_*.md benchmarks/results/train_step_*.md "$LOGS/" 2>/dev/null || true
tar -czf "$DEST/gpu_check_logs.tar.gz" -C "$WORK" logs
echo "gpu_check: wrote $DEST/gpu_check.json, gpu_check.md, gpu_check_logs.tar.gz in $(elapsed)s" >&2
