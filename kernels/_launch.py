"""Launch helpers shared by the Triton kernels: block sizes, warps, dtype maps, argument checks, AOT specs.

Every kernel module builds its launch choices from these helpers and lists each choice its launcher can
make in ``aot_specs()``, so ``benchmarks/aot_report.py`` can compile all of them ahead of time for real GPU
targets (sm_80, sm_90) on a machine without a GPU, and read their registers and spills.

Under ``TRITON_INTERPRET=1`` (the CPU test path) :func:`wrap_triton` hands back the interpreted kernel itself,
so ops registered with ``triton_op`` run eagerly on CPU tensors unchanged: torch 2.13's
``torch.library.wrap_triton`` does the same, torch 2.11's refuses an ``InterpretedFunction`` (checked with torch
2.13 + triton 3.9, and with the GPU image's torch 2.11 + triton 3.6 by scripts/rehearse_gpu_check.sh). Dynamo can
trace the ops there too, given explicit fake kernels (each op registers one), so
``torch.compile(fullgraph=True, backend="eager")`` tests run on CPU (tests/kernels/test_kernel_tracing.py). What the
interpreter cannot do is AOT autograd: inductor and aot_eager feed functional tensors to the interpreted kernel,
so those backends are tested on a GPU only.

Triton 3.6's interpreter (the GPU image's) cannot take a loop bound that is a tensor (``range(lo, hi, BLOCK)``
with ``lo`` from ``tl.program_id`` or a load, as every kernel here has) under numpy >= 2.4; see
:func:`_let_the_interpreter_take_tensor_loop_bounds`, applied on import under the interpreter only.
"""

from __future__ import annotations

import inspect
import os
from typing import NamedTuple

import torch
import triton
from triton.runtime.interpreter import InterpretedFunction

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
    "wrap_triton",
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


def wrap_triton(kernel):
    """``torch.library.wrap_triton(kernel)`` for a compiled kernel; under the interpreter the kernel itself.

    On a GPU this is torch's wrapper, unchanged. ``TRITON_INTERPRET=1`` makes ``@triton.jit`` return an
    ``InterpretedFunction``, which torch 2.13 passes through and torch 2.11 rejects ("wrap_triton only works on
    functions annotated with triton.jit"); passing it through here gives every torch the 2.13 behaviour.
    """
    if isinstance(kernel, InterpretedFunction):
        return kernel
    return torch.library.wrap_triton(kernel)


def _let_the_interpreter_take_tensor_loop_bounds() -> None:
    """Make an older Triton interpreter convert a tensor loop bound as Triton 3.9's does (``data.squeeze()``).

    The interpreter runs ``for i in range(lo, hi, BLOCK)`` as Python code, so ``range`` asks each tensor bound for
    ``__index__``. Every scalar there is a one-element 1-d numpy array; Triton 3.6 converts it with
    ``int(handle.data)``, which numpy 2.4 refuses ("only 0-dimensional arrays can be converted to Python scalars"),
    and every kernel test then fails although the kernels are right. Triton 3.9 squeezes the array first. Rewriting
    the loops instead would change the code compiled for GPUs; this touches the interpreter only, and only a version
    whose source still has the unsqueezed conversion.
    """
    from triton.runtime import interpreter

    patch = getattr(interpreter, "_patch_lang_tensor", None)
    try:
        if patch is None or "int(self.handle.data)" not in inspect.getsource(patch):
            return
    except (OSError, TypeError):  # no source to read: leave the interpreter as it is
        return

    def patch_with_squeezed_index(tensor, scope):
        patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))  # restored with the rest

    interpreter._patch_lang_tensor = patch_with_squeezed_index


if interpreting():
    _let_the_interpreter_take_tensor_loop_bounds()


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
