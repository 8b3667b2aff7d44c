"""Launch helpers shared by the Triton kernels: block sizes, warps, dtype maps, argument checks, AOT specs.

Every kernel module builds its launch choices from these helpers and lists each choice its launcher can
make in ``aot_specs()``, so ``benchmarks/aot_report.py`` can compile all of them ahead of time for real GPU
targets (sm_80, sm_90) on a machine without a GPU, and read their registers and spills.

Under ``TRITON_INTERPRET=1`` (the CPU test path) ``torch.library.wrap_triton`` hands back the interpreted
kernel itself, so ops registered with ``triton_op`` run eagerly on CPU tensors unchanged (checked with torch
2.13 + triton 3.9). Dynamo can trace them there too, given explicit fake kernels (each op registers one), so
``torch.compile(fullgraph=True, backend="eager")`` tests run on CPU (tests/kernels/test_kernel_tracing.py). What the
interpreter cannot do is AOT autograd: inductor and aot_eager feed functional tensors to the interpreted kernel,
so those backends are tested on a GPU only.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import triton

__all__ = [
    "AotSpec",
    "FLOAT_DTYPES",
    "TRITON_DTYPE",
    "pointer",
    "row_block",
    "row_warps",
    "interpreting",
    "check_dtype",
    "check_float_dtype",
    "check_same_device",
    "cdiv",
]

# The activation dtypes every kernel accepts; each is computed in fp32 inside the kernel.
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# torch dtype -> Triton type name used in kernel signatures.
TRITON_DTYPE = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.int32: "i32",
                torch.int64: "i64"}


class AotSpec(NamedTuple):
    """One kernel configuration to compile ahead of time: ``triton.compile(ASTSource(fn, signature, constexprs))``.

    ``signature`` maps every kernel argument name to a Triton type ("*bf16", "i32", "fp32", "constexpr");
    ``constexprs`` gives the value of each constexpr argument. ``name`` is a readable label, unique per
    module, e.g. ``"rmsnorm_fwd bf16 BLOCK_N=1024"``. ``targets``: the compute capabilities whose launches pick
    this configuration (a table tuned for one GPU generation is built for that one only).
    """

    name: str
    fn: object  # the @triton.jit function
    signature: dict[str, str]
    constexprs: dict[str, object]
    num_warps: int
    num_stages: int
    targets: tuple[int, ...] = (80, 90)
    divisible: tuple[str, ...] = ()  # integer arguments compiled as multiples of 16, as the runtime specializes them


def pointer(dtype: torch.dtype) -> str:
    """The Triton pointer type of a tensor of ``dtype``, e.g. ``torch.bfloat16`` -> ``"*bf16"``."""
    return "*" + TRITON_DTYPE[dtype]


def cdiv(a: int, b: int) -> int:
    """Ceiling division of non-negative ints."""
    return (a + b - 1) // b


def row_block(n: int, max_block: int) -> int:
    """The power-of-two block that holds a whole row of ``n`` elements (at least 16), at most ``max_block``."""
    block = max(16, triton.next_power_of_2(n))
    if block > max_block:
        raise ValueError(f"row of {n} elements is longer than the largest supported block of {max_block}")
    return block


def row_warps(block: int) -> int:
    """Warps for a one-row-per-program kernel over ``block`` elements: enough threads to keep a row in registers.

    Fewer warps on long rows spill (each thread then holds block / (32 * warps) fp32 values); these are the
    thresholds of the Triton layer-norm tutorial, checked against the AOT register report.
    """
    if block >= 8192:
        return 16
    if block >= 2048:
        return 8
    if block >= 1024:
        return 4
    return 2 if block >= 256 else 1


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_dtype(name: str, t: torch.Tensor, allowed: tuple[torch.dtype, ...]) -> None:
    """Raise ValueError naming ``name`` when ``t.dtype`` is not in ``allowed``."""
    if t.dtype not in allowed:
        names = ", ".join(str(d).removeprefix("torch.") for d in allowed)
        raise ValueError(f"{name} has dtype {t.dtype}; allowed: {names}. Cast it with .to(torch.bfloat16) or similar")


def check_float_dtype(name: str, t: torch.Tensor) -> None:
    """Raise ValueError naming ``name`` unless it is fp32, fp16 or bf16."""
    check_dtype(name, t, FLOAT_DTYPES)


def check_same_device(**tensors: torch.Tensor) -> None:
    """Raise ValueError when the named tensors are not all on one device (the kernel reads them all)."""
    devices = {n: t.device for n, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all tensors must be on one device, got {listed}; move them with .to(device)")
