"""Launch configurations of the attention kernels: block sizes, warps and stages per GPU generation, head dim and RoPE.

The kernels hold a head dim padded to a power of two (``padded_head_dim``: 32, 64, 128 or 256; each half of it at
least 16, the smallest ``tl.dot`` reduction) and mask the padding, so four entries per generation and RoPE flag
cover every head dim from 1 to 256; 64 and 128, the common ones, are exact and load without masks. RoPE rotates
the q and k tiles in registers as they are loaded, which holds their angles too: its entries are separate.

Each entry is checked by the ahead-of-time build (``benchmarks/aot_report.py``, with the installed Triton and the
GPU image's 3.6): no spills, dynamic shared memory within the smallest target of the generation (sm_80 tables also
run on sm_86/sm_89, which have 99 KiB a block), and on sm_90 at most 168 registers a thread, the budget that leaves
room for two blocks of eight warps a multiprocessor. The tables are the largest tiles that pass, the wgmma-friendly
shapes first (128 query rows over two warpgroups on sm_90); which of them is fastest waits for a GPU lease
(``TUNING_CANDIDATES`` are built ahead of time beside them for that lease to time).

Block rules the kernels assume: forward and dQ walk keys in BLOCK_N steps under a BLOCK_M query block, so BLOCK_N
divides BLOCK_M; dK/dV walks queries in BLOCK_M steps under a BLOCK_N key block, so BLOCK_M divides BLOCK_N.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["Config", "Configs", "GENERATION_TARGET", "GPU_CONFIGS", "INTERPRETER_CONFIGS", "PADDED_HEAD_DIMS",
           "TUNING_CANDIDATES", "configs_for", "padded_head_dim"]

PADDED_HEAD_DIMS = (32, 64, 128, 256)


class Config(NamedTuple):
    """One pass's launch choice: the query / key block sizes, warps and pipeline stages."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


class Configs(NamedTuple):
    fwd: Config  # BLOCK_N divides BLOCK_M
    dkdv: Config  # BLOCK_M divides BLOCK_N
    dq: Config  # BLOCK_N divides BLOCK_M


# Keyed by (padded head dim, RoPE inside).
_SM80: dict[tuple[int, bool], Configs] = {
    (32, False): Configs(Config(128, 64, 4, 3), Config(32, 128, 8, 3), Config(128, 32, 4, 3)),
    (64, False): Configs(Config(128, 64, 8, 3), Config(32, 128, 8, 3), Config(128, 32, 8, 3)),
    (128, False): Configs(Config(128, 64, 8, 2), Config(32, 64, 8, 2), Config(64, 32, 4, 2)),
    (256, False): Configs(Config(64, 32, 8, 2), Config(16, 32, 8, 2), Config(32, 16, 8, 2)),
    (32, True): Configs(Config(128, 64, 4, 3), Config(32, 128, 8, 3), Config(128, 32, 4, 3)),
    (64, True): Configs(Config(128, 64, 8, 3), Config(32, 128, 8, 3), Config(128, 32, 8, 3)),
    (128, True): Configs(Config(128, 64, 8, 2), Config(32, 64, 8, 2), Config(64, 32, 4, 2)),
    (256, True): Configs(Config(64, 32, 8, 2), Config(16, 32, 8, 2), Config(32, 16, 8, 2)),
}
_SM90: dict[tuple[int, bool], Configs] = dict(_SM80)
GPU_CONFIGS: dict[str, dict[tuple[int, bool], Configs]] = {"sm80": _SM80, "sm90": _SM90}
# What a GPU lease times against the shipped entries, per generation and (head dim, RoPE): each is built ahead of
# time (attention's aot_specs()) so the report keeps it within the target.
TUNING_CANDIDATES: dict[str, dict[tuple[int, bool], dict[str, tuple[Config, ...]]]] = {"sm90": {}}
# The compute capability each table is built for ahead of time (sm_86/sm_89 run the sm_80 build).
GENERATION_TARGET = {"sm80": 80, "sm90": 90}
# Under TRITON_INTERPRET=1: small blocks, so that short test sequences still cover several blocks, the
# unmasked off-diagonal stage, a diagonal stage of several steps, and a ragged tail.
INTERPRETER_CONFIGS = Configs(Config(32, 16, 4, 1), Config(16, 32, 4, 1), Config(32, 16, 4, 1))


def padded_head_dim(head_dim: int) -> int:
    """The power of two (at least 32: two halves of at least 16, ``tl.dot``'s smallest reduction) a kernel holds
    ``head_dim`` in."""
    return max(32, 1 << max(0, head_dim - 1).bit_length())


def generation(device: torch.device) -> str:
    """The config table a CUDA device uses: "sm90" (Hopper and newer) or "sm80" (Ampere, Ada)."""
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        raise RuntimeError(f"attention kernel needs an sm_80+ GPU (Ampere or newer); {device} is sm_{major}{minor}; "
                           "use the reference backend (lmfast.model.functional.causal_attention) there")
    return "sm90" if major >= 9 else "sm80"


def configs_for(device: torch.device, head_dim: int, rope: bool) -> Configs:
    """The launch configurations for ``head_dim`` (with RoPE inside or not) on ``device`` (the interpreter's small
    blocks off CUDA)."""
    if device.type != "cuda":
        return INTERPRETER_CONFIGS
    return GPU_CONFIGS[generation(device)][(padded_head_dim(head_dim), rope)]
