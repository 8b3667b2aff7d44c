"""A pytest plugin for the rehearsal: the distinct Triton compiles a GPU would pay for the kernel launches of a run.

    TRITON_INTERPRET=1 LMFAST_LAUNCH_KEYS=keys.json python -m pytest -p _launch_keys tests/kernels ...

Under the interpreter nothing compiles, but every launch goes through ``InterpretedFunction.run``. On a GPU each
distinct key below is one compile: the kernel, its constexpr values, ``num_warps``/``num_stages``, each tensor's
dtype and 16-byte alignment, and each integer's specialization (1, divisible by 16, other), as Triton's JIT keys its
cache. Written at the end of the session as ``{kernel: count}`` to ``$LMFAST_LAUNCH_KEYS``. A lower bound for a GPU
run: tests that need CUDA are skipped here and launch nothing.
"""

from __future__ import annotations

import inspect
import json
import os

_keys: set[tuple] = set()


def _arg_key(value, constexpr: bool):
    if constexpr:
        return repr(value)
    if hasattr(value, "dtype") and hasattr(value, "data_ptr"):
        return (str(value.dtype), value.data_ptr() % 16 == 0)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int):
        return "1" if value == 1 else "d16" if value % 16 == 0 else "int"
    return type(value).__name__


def pytest_configure(config):
    from triton.runtime.interpreter import InterpretedFunction

    run = InterpretedFunction.run

    def counting_run(self, *args, grid, warmup, **kwargs):
        params = inspect.signature(self.fn).parameters
        bound = dict(zip(self.arg_names, args, strict=False)) | kwargs  # positional first
        key = [self.fn.__name__, kwargs.get("num_warps"), kwargs.get("num_stages")]
        for name, value in bound.items():
            if name in ("num_warps", "num_stages", "num_ctas"):
                continue
            p = params.get(name)
            key.append((name, _arg_key(value, p is not None and "constexpr" in str(p.annotation))))
        _keys.add(tuple(key))
        return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = counting_run


def pytest_unconfigure(config):
    path = os.environ.get("LMFAST_LAUNCH_KEYS")
    if not path:
        return
    counts: dict[str, int] = {}
    for key in _keys:
        counts[key[0]] = counts.get(key[0], 0) + 1
    with open(path, "w") as f:
        json.dump(dict(sorted(counts.items())), f, indent=1)
