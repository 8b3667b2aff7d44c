"""Launch configurations of the attention kernels: block sizes, warps and stages per GPU generation and head dim.

The kernels hold a head dim padded to a power of two (``padded_head_dim``: 16, 32, 64, 128 or 256) and mask the
padding, so five tables per generation cover every head dim from 1 to 256; 64 and 128, the common ones, are exact
and load without masks.

The tables start from the Triton tutorial's tuned ranges and are cut down until the ahead-of-time build
(``benchmarks/aot_report.py``, with the installed Triton and the GPU image's 3.6) shows for every entry: no spills,
dynamic shared memory within the smallest target of the generation (sm_80 tables also run on sm_86/sm_89, which
have 99 KiB a block), and on sm_90 at most 168 registers a thread, the budget that leaves room for two blocks of
eight warps a multiprocessor. Each pass's constraint is noted at its field.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["Config", "Configs", "GENERATION_TARGET", "GPU_CONFIGS", "INTERPRETER_CONFIGS", "PADDED_HEAD_DIMS",
           "TUNING_CANDIDATES", "configs_for", "padded_head_dim"]

PADDED_HEAD_DIMS = (16, 32, 64, 128, 256)


class Config(NamedTuple):
    """One pass's launch choice: the query / key block sizes, warps and pipeline stages."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


class Configs(NamedTuple):
    fwd: Config  # BLOCK_N divides BLOCK_M: the diagonal stage walks whole key blocks
    dkdv: Config  # BLOCK_M divides BLOCK_N (query steps under one key block)
    dq: Config  # BLOCK_N divides BLOCK_M
    preprocess: Config  # block_n unused


_PRE = Config(64, 0, 4, 1)
# "sm80": Ampere and Ada (sized for the 99 KiB of shared memory of sm_86/sm_89 too). 4-warp tiles of 128 query
# rows spill on sm_80 at head dim 64 (mma.sync keeps both operands in registers), hence 8 warps there.
_SM80 = {
    16: Configs(Config(128, 64, 4, 3), Config(32, 128, 8, 3), Config(128, 32, 4, 3), _PRE),
    32: Configs(Config(128, 64, 4, 3), Config(32, 128, 8, 3), Config(128, 32, 4, 3), _PRE),
    64: Configs(Config(128, 64, 8, 3), Config(32, 128, 8, 3), Config(128, 32, 8, 3), _PRE),
    128: Configs(Config(128, 64, 8, 2), Config(32, 64, 8, 2), Config(64, 32, 4, 2), _PRE),
    # 256: the fp32 accumulators alone are BLOCK x 256 x 4 bytes, so the tiles halve again and take 8 warps.
    256: Configs(Config(64, 32, 8, 2), Config(16, 32, 8, 2), Config(32, 16, 8, 2), _PRE),
}
GPU_CONFIGS: dict[str, dict[int, Configs]] = {
    "sm80": _SM80,
    "sm90": {  # 228 KiB of shared memory, but registers bind first: every entry is at most 168 with Triton 3.6
        16: _SM80[16],
        32: _SM80[32],
        # dK/dV: 32 x 128 tiles took 199 registers with Triton 3.6, 32 query rows under 64 keys take 141; a
        # forward of 128 x 128 took 172.
        64: _SM80[64]._replace(dkdv=Config(32, 64, 8, 3)),
        # Forward: 128 x 64 tiles took 184 registers, 128 x 32 take 128. dK/dV: 32 x 64 took 192, 16 x 64 take 160.
        128: Configs(Config(128, 32, 8, 3), Config(16, 64, 8, 2), Config(64, 32, 4, 3), _PRE),
        # Forward: 64 x 32 took 176, 64 x 16 take 158. dK/dV: 16 x 32 took 172, 16 x 16 take 152. dQ: a third
        # stage spilled 16 bytes.
        256: Configs(Config(64, 16, 8, 2), Config(16, 16, 8, 2), Config(32, 16, 8, 2), _PRE),
    },
}
# What a GPU lease times against the shipped entries (benchmarks/attention_configs.py, stage d of
# benchmarks/gpu_check.sh), per generation, head dim and pass: configurations the ahead-of-time report allows (no
# spills, shared memory within the target, <= 168 registers on sm_90 with Triton 3.6 and 3.9; attention's
# aot_specs() builds them, so tests/test_kernels_aot.py keeps them allowed), picked from a grid of 252 (block sizes
# 16-128, 4 or 8 warps, 2-4 stages; 138 allowed with Triton 3.6) to vary one choice at a time around the shipped entry.
# (dQ at 128 x 64 tiles, 8 warps, took 186 registers at head dim 64 and 175 at 128 with Triton 3.9: left out.)
TUNING_CANDIDATES: dict[str, dict[int, dict[str, tuple[Config, ...]]]] = {
    "sm90": {
        64: {
            "fwd": (Config(128, 64, 8, 4), Config(128, 32, 8, 3), Config(64, 64, 4, 3), Config(64, 64, 8, 3),
                    Config(64, 32, 4, 3)),
            "dkdv": (Config(32, 64, 8, 2), Config(16, 64, 8, 3), Config(16, 128, 8, 3), Config(16, 32, 4, 3),
                     Config(32, 64, 4, 2)),
            "dq": (Config(64, 32, 4, 3), Config(64, 64, 8, 3), Config(64, 32, 8, 3), Config(64, 16, 4, 3),
                   Config(128, 32, 8, 4)),
        },
        128: {
            "fwd": (Config(128, 32, 8, 2), Config(64, 32, 4, 3), Config(64, 64, 8, 2), Config(128, 16, 8, 3),
                    Config(64, 32, 8, 3)),
            "dkdv": (Config(16, 32, 8, 2), Config(16, 32, 8, 3), Config(16, 16, 4, 3), Config(16, 16, 8, 3)),
            "dq": (Config(64, 32, 8, 3), Config(64, 16, 8, 3), Config(32, 16, 4, 3), Config(128, 32, 8, 2),
                   Config(64, 32, 8, 2)),
        },
    },
}
# The compute capability each table is built for ahead of time (sm_86/sm_89 run the sm_80 build).
GENERATION_TARGET = {"sm80": 80, "sm90": 90}
# Under TRITON_INTERPRET=1: small blocks, so that short test sequences still cover several blocks, the
# unmasked off-diagonal stage, a diagonal stage of several steps, and a ragged tail.
INTERPRETER_CONFIGS = Configs(Config(32, 16, 4, 1), Config(16, 32, 4, 1), Config(32, 16, 4, 1), Config(32, 0, 4, 1))


def padded_head_dim(head_dim: int) -> int:
    """The power of two (at least 16, the smallest ``tl.dot`` reduction) a kernel holds ``head_dim`` in."""
    return max(16, 1 << max(0, head_dim - 1).bit_length())


def generation(device: torch.device) -> str:
    """The config table a CUDA device uses: "sm90" (Hopper and newer) or "sm80" (Ampere, Ada)."""
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        raise RuntimeError(f"attention kernel needs an sm_80+ GPU (Ampere or newer); {device} is sm_{major}{minor}; "
                           "use the reference backend (lmfast.model.functional.causal_attention) there")
    return "sm90" if major >= 9 else "sm80"


def configs_for(device: torch.device, head_dim: int) -> Configs:
    """The launch configurations for ``head_dim`` on ``device`` (the interpreter's small blocks off CUDA)."""
    if device.type != "cuda":
        return INTERPRETER_CONFIGS
    return GPU_CONFIGS[generation(device)][padded_head_dim(head_dim)]
