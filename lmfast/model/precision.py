"""Which autocast dtype a device trains fastest in: what ``dtype: auto`` means.

bf16 autocast pays where the hardware multiplies bf16 natively: CUDA GPUs with bf16 (Ampere and later) and
CPUs with AMX tiles (Intel Xeon since Sapphire Rapids), where a d_model-512 train step ran 2.35x faster in bf16
than in fp32 (benchmarks/results/train_step_cpu.md). Without AMX (AVX-512 or AVX2 only: AMD EPYC, most laptops)
bf16 matmuls gain little or nothing over fp32 while every cast costs a pass over memory, so auto stays fp32.
The decision reads what torch reports about the CPU (no timing probe, so it is the same on every run).
"""

from __future__ import annotations

import functools

import torch

__all__ = ["auto_autocast_dtype", "cpu_bf16_native"]


@functools.cache
def cpu_bf16_native() -> tuple[bool, str]:
    """Whether this CPU multiplies bf16 natively (AMX bf16 tiles the OS lets torch use), and why, in words."""
    has_tiles = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    if not has_tiles or not caps.get("amx_bf16", has_tiles):
        return False, "torch reports no AMX bf16 tiles on this CPU, so bf16 matmuls would gain little over fp32"
    init_amx = getattr(torch.cpu, "_init_amx", None)
    if init_amx is not None and not init_amx():  # Linux must grant each process the AMX tile state
        return False, "the CPU has AMX tiles but the OS did not enable them for this process"
    return True, "torch reports AMX bf16 tiles on this CPU: bf16 matmuls run natively"


def auto_autocast_dtype(device: torch.device | str) -> tuple[torch.dtype | None, str]:
    """``dtype: auto`` on ``device``: the autocast dtype (None = plain fp32) and the reason, for the log."""
    device = torch.device(device)
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "this CUDA GPU supports bf16"
        return None, "this CUDA GPU has no bf16 support"
    if device.type == "cpu":
        native, why = cpu_bf16_native()
        return (torch.bfloat16 if native else None), why
    return None, f"bf16 autocast is not chosen automatically on {device.type}"
