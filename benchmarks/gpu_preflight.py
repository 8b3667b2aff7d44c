"""The first seconds of a GPU check: versions, the device, and each fused op run once against its reference.

    python benchmarks/gpu_preflight.py --out DIR     # writes DIR/preflight.json

Every kernel module is imported (without CUDA too). Each op (RMSNorm, RoPE, attention forward and backward at head
dims 64 and 128, the AdamW step) runs once in bf16 on a small input and is compared with its reference, so a kernel
that does not compile or launch on this GPU shows within seconds, before the longer stages. Without CUDA it records
why and exits 0 (1 if a module failed to import): the caller skips the GPU stages.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback
from pathlib import Path

import torch
from _machine import commit, run, version


def machine() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "triton": version("triton"),
            "transformers": version("transformers"), "cuda": str(torch.version.cuda),
            "cuda_available": torch.cuda.is_available(), "commit": commit()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, capability=f"sm_{props.major}{props.minor}", sms=props.multi_processor_count,
                    memory_gib=round(props.total_memory / 2**30, 1),
                    driver=(run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]).splitlines()
                            or ["unknown"])[0])
    return info


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def _rmsnorm() -> str:
    from lmfast.kernels.rmsnorm import rmsnorm

    from lmfast import functional

    x = torch.randn(64, 768, device="cuda", dtype=torch.bfloat16)
    w = torch.rand(768, device="cuda") + 0.5
    return f"max |err| {_max_err(rmsnorm(x, w), functional.rmsnorm(x, w)):.3g}"


def _rope() -> str:
    from lmfast.kernels.rope import rope

    from lmfast import functional

    q, k = (torch.randn(2, 4, 128, 64, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    cos, sin = functional.rope_cos_sin(10000.0, 64, torch.arange(128, device="cuda"))
    pairs = zip(rope(q, k, cos, sin), functional.rope(q, k, cos, sin), strict=True)
    return f"max |err| {max(_max_err(a, b) for a, b in pairs):.3g}"


def _attention() -> str:
    from lmfast.kernels.attention import attention

    from lmfast import functional

    errs = []
    for head_dim in (64, 128):  # gpt2_124m's and the bigger common one; stage a covers the padded ones
        q, k, v = (torch.randn(2, 4, 300, head_dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))
        grad = torch.randn_like(q)
        ours = (attention(q, k, v), *torch.autograd.grad(attention(q, k, v), (q, k, v), grad))
        ref = (functional.causal_attention(q, k, v),
               *torch.autograd.grad(functional.causal_attention(q, k, v), (q, k, v), grad))
        errs.append(f"d={head_dim} " + "/".join(f"{_max_err(a, b):.2g}" for a, b in zip(ours, ref, strict=True)))
    return "max |err| out/dq/dk/dv: " + ", ".join(errs)


def _adamw() -> str:
    from lmfast.kernels.adamw import adamw_step

    from lmfast.optim import adamw_step_reference

    hyper = dict(step=1, lr=1e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)
    p, g = torch.randn(4099, device="cuda"), torch.randn(4099, device="cuda")
    ref = p.clone()
    adamw_step([p], [g], [torch.zeros_like(p)], [torch.zeros_like(p)], **hyper)
    adamw_step_reference([ref], [g], [torch.zeros_like(p)], [torch.zeros_like(p)], **hyper)
    return f"max |err| {_max_err(p, ref):.3g}"


CHECKS = {"rmsnorm": _rmsnorm, "rope": _rope, "attention fwd+bwd (d=64, 128)": _attention, "adamw": _adamw}
KERNEL_MODULES = ("rmsnorm", "rope", "attention", "adamw", "linear_cross_entropy")


def _kernel_imports() -> str:
    """Import every kernel module as the later stages do: a broken import shows here, without CUDA too."""
    import importlib

    files = {importlib.import_module(f"lmfast.kernels.{name}").__file__ for name in KERNEL_MODULES}
    return f"{len(KERNEL_MODULES)} modules import from {Path(min(files)).parent}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine(), "checks": {}}
    try:
        import lmfast

        result["checks"]["lmfast"] = f"imports from {Path(lmfast.__file__).parent}"
    except Exception as e:
        result["checks"]["lmfast"] = f"FAILED to import: {e}"
    try:
        result["checks"]["lmfast.kernels"] = _kernel_imports()
    except Exception as e:
        result["checks"]["lmfast.kernels"] = f"FAILED to import: {type(e).__name__}: {e}"[:400]
    if not torch.cuda.is_available():
        result["checks"]["cuda"] = "not available: every GPU stage is skipped"
    else:
        for name, fn in CHECKS.items():
            t0 = time.perf_counter()
            try:
                result["checks"][name] = f"{fn()} ({time.perf_counter() - t0:.1f} s, cold compile included)"
            except Exception as e:
                result["checks"][name] = f"FAILED: {type(e).__name__}: {e}"[:400]
                traceback.print_exc()
    (args.out / "preflight.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 1 if any(str(v).startswith("FAILED") for v in result["checks"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
