"""Model FLOPs utilisation: achieved training FLOPs over the device's peak, from a table of common GPUs.

MFU = tokens/s x FLOPs per token / peak FLOPs, with FLOPs per token from the model's shape
(:meth:`lmfast.model.TransformerLM.flops_per_token`: 6·N plus the attention term) and the peak from the
vendor's dense (no sparsity) tensor-core figure for the dtype the matmuls run in. A device missing from the
table has no MFU: :func:`peak_flops` returns None and callers omit the number rather than guess it.

>>> peak_flops("NVIDIA H100 80GB HBM3", torch.bfloat16)
989000000000000.0
>>> mfu(tokens_per_s=100_000, flops_per_token=1e9, peak=989e12)  # doctest: +ELLIPSIS
0.101...
"""

from __future__ import annotations

import re

import torch

__all__ = ["GPU_PEAK_TFLOPS", "peak_flops", "device_peak_flops", "mfu"]

# Dense peak TFLOPS per GPU, from the vendors' data sheets: (bf16/fp16 tensor cores with fp32 accumulate,
# tf32 tensor cores, plain fp32). Ordered so that the first pattern that matches a device name is the most
# specific one ("H100 NVL" before "H100", "L40S" before "L40" before "L4", "A100" before "A10").
GPU_PEAK_TFLOPS: list[tuple[str, tuple[float, float, float]]] = [
    (r"B200", (2250.0, 1100.0, 80.0)),
    (r"H200 NVL", (835.0, 418.0, 60.0)),
    (r"H200", (989.0, 494.0, 67.0)),
    (r"H100 NVL", (835.0, 418.0, 60.0)),
    (r"H100 PCIe", (756.0, 378.0, 51.0)),
    (r"H100", (989.0, 494.0, 67.0)),  # SXM, the name of the HBM3 parts ("NVIDIA H100 80GB HBM3")
    (r"H800", (989.0, 494.0, 67.0)),
    (r"GH200", (989.0, 494.0, 67.0)),
    (r"A100", (312.0, 156.0, 19.5)),
    (r"A800", (312.0, 156.0, 19.5)),
    (r"L40S", (362.0, 183.0, 91.6)),
    (r"L40", (181.0, 90.5, 90.5)),
    (r"L4\b", (121.0, 60.0, 30.3)),
    (r"A10G", (70.0, 35.0, 31.2)),
    (r"A10\b", (125.0, 62.5, 31.2)),
    (r"RTX 6000 Ada", (364.0, 182.0, 91.1)),
    (r"RTX A6000", (154.8, 77.4, 38.7)),
    (r"RTX 5090", (209.5, 104.8, 104.8)),
    (r"RTX 4090", (165.2, 82.6, 82.6)),
    (r"RTX 3090", (71.0, 35.6, 35.6)),
    (r"V100", (125.0, 15.7, 15.7)),  # fp16 tensor cores only: no bf16, no tf32
    (r"MI300X", (1307.0, 653.7, 163.4)),
    (r"MI250X", (383.0, 95.7, 47.9)),
]


def peak_flops(device_name: str, dtype: torch.dtype, tf32: bool = False) -> float | None:
    """The dense peak FLOP/s of ``device_name`` (as ``torch.cuda.get_device_name`` gives it) for ``dtype``.

    bf16 and fp16 use the tensor-core figure; fp32 uses the tf32 tensor-core figure when ``tf32`` (matmuls
    allowed to round to tf32) and plain fp32 otherwise. Returns None for a device not in the table.
    """
    for pattern, (half, tf32_peak, fp32) in GPU_PEAK_TFLOPS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            if dtype in (torch.bfloat16, torch.float16):
                return half * 1e12
            return (tf32_peak if tf32 else fp32) * 1e12
    return None


def device_peak_flops(device: torch.device | str, dtype: torch.dtype | None) -> float | None:
    """:func:`peak_flops` for a torch device and the autocast dtype of a run (None = fp32); None off CUDA."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    return peak_flops(name, dtype or torch.float32, tf32=torch.backends.cuda.matmul.allow_tf32)


def mfu(tokens_per_s: float, flops_per_token: float, peak: float | None) -> float | None:
    """Achieved over peak FLOP/s as a fraction (0.45 = 45%), or None when the peak is unknown."""
    if peak is None or peak <= 0:
        return None
    return tokens_per_s * flops_per_token / peak
