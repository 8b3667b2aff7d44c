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

__all__ = ["Config", "Configs", "GENERATION_TARGET", "GPU_CONFIGS", "INTERPRETER_CONFIGS", "OVER_REGISTER_BUDGET",
           "PADDED_HEAD_DIMS", "TUNING_CANDIDATES", "configs_for", "padded_head_dim"]

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


# Keyed by (padded head dim, RoPE inside). "sm80": Ampere and Ada (sized for the 99 KiB of shared memory of
# sm_86/sm_89 too; registers up to 255 a thread where nothing spills). The notes give Triton 3.9's registers for bf16
# with documents on (benchmarks/results/aot_registers_triton-*.md has every build).
_C = Config
_SM80: dict[tuple[int, bool], Configs] = {
    (32, False): Configs(_C(128, 64, 4, 3), _C(32, 128, 8, 3), _C(128, 32, 4, 3)),
    # 64: 189 / 197 / 186 registers; dK/dV 64 x 128 spilled 56-72 bytes with Triton 3.6 (none with 3.9).
    (64, False): Configs(_C(128, 64, 8, 3), _C(32, 128, 8, 2), _C(128, 64, 8, 3)),
    # 128: dQ 128 x 64 took all 255 registers and spilled at two stages; 128 x 32 takes 238.
    (128, False): Configs(_C(128, 64, 8, 3), _C(32, 128, 8, 3), _C(128, 32, 8, 3)),
    (256, False): Configs(_C(64, 32, 8, 2), _C(16, 32, 8, 2), _C(16, 16, 8, 2)),  # dQ 32 x 16: 8 bytes at 192 (3.6)
    # RoPE holds each tile's angles and rotates it in fp32: smaller tiles, eight warps. 64: dK/dV 64 x 128 spilled
    # 112 bytes, dQ 128 x 32 spilled 48 and 64 x 32 8 (64 x 16 takes 182). 128: the forward at 128 x 32 spilled 256
    # bytes (64 x 32 takes all 255 registers: 64 x 16, for the masked head dims), dK/dV 16 x 64 24 (16 x 32 takes
    # 174), dQ 64 x 16 56 (32 x 16 takes 255).
    (32, True): Configs(_C(128, 64, 8, 3), _C(16, 32, 8, 2), _C(128, 32, 8, 3)),  # dK/dV 16 x 64 spilled (3.6)
    (64, True): Configs(_C(128, 64, 8, 2), _C(32, 128, 8, 3), _C(64, 16, 8, 2)),
    (128, True): Configs(_C(64, 16, 8, 2), _C(16, 32, 8, 2), _C(32, 16, 8, 2)),
    (256, True): Configs(_C(16, 16, 8, 2), _C(16, 16, 8, 2), _C(16, 16, 8, 2)),  # forward 32 x 16 spilled (3.6)
}
# "sm90": 228 KiB of shared memory, but registers bind first: at most 168 a thread (two blocks of eight warps a
# multiprocessor) unless OVER_REGISTER_BUDGET says why not.
_SM90: dict[tuple[int, bool], Configs] = {
    (32, False): Configs(_C(128, 64, 8, 3), _C(32, 64, 8, 2), _C(128, 32, 8, 3)),
    # 64: forward 128 x 64 took 179 registers at three stages, 158 at two; dK/dV 32 x 128 took 188, 32 x 64 126;
    # dQ 128 x 64 took 203, 128 x 32 126.
    # dK/dV at three stages took 170 with Triton 3.6 (126 with 3.9), 125 at two.
    (64, False): Configs(_C(128, 64, 8, 2), _C(32, 64, 8, 2), _C(128, 32, 8, 3)),
    # 128: forward 128 x 64 took 216, 128 x 32 164; dK/dV 32 x 64 took 211, 16 x 64 176; dQ 128 x 32 took 174,
    # 64 x 32 on eight warps 140.
    (128, False): Configs(_C(128, 32, 8, 2), _C(16, 64, 8, 2), _C(64, 32, 8, 3)),
    (256, False): Configs(_C(64, 16, 8, 2), _C(16, 16, 8, 2), _C(32, 16, 8, 2)),
    # RoPE: 64: forward 128 x 64 took 237, 128 x 32 140; dK/dV 32 x 64 168; dQ 64 x 32 191, 64 x 16 143.
    # 128: forward 64 x 32 took 220, 64 x 16 168; dQ 64 x 32 254, 64 x 16 226 (no smaller tile took fewer).
    (32, True): Configs(_C(128, 32, 8, 3), _C(32, 64, 8, 2), _C(64, 32, 8, 2)),
    (64, True): Configs(_C(128, 32, 8, 3), _C(32, 64, 8, 2), _C(64, 16, 8, 2)),
    (128, True): Configs(_C(64, 16, 8, 2), _C(16, 16, 8, 2), _C(64, 16, 8, 2)),
    (256, True): Configs(_C(64, 16, 8, 2), _C(16, 16, 8, 2), _C(16, 16, 8, 2)),
}
GPU_CONFIGS: dict[str, dict[tuple[int, bool], Configs]] = {"sm80": _SM80, "sm90": _SM90}
# What a GPU lease times against the shipped entries, per generation and (head dim, RoPE): each is built ahead of
# time (attention's aot_specs()) so the report keeps it within the target.
# The sm_90 candidates are the larger tiles of the search that built without spills (Triton 3.9 registers noted), over
# the 168 budget: whether running one block a multiprocessor with bigger wgmma tiles pays is what the lease tells.
TUNING_CANDIDATES: dict[str, dict[tuple[int, bool], dict[str, tuple[Config, ...]]]] = {
    "sm90": {
        (64, False): {"fwd": (_C(128, 64, 8, 3),), "dkdv": (_C(32, 128, 8, 3),),  # 179; 188
                      "dq": (_C(128, 64, 8, 2),)},  # 205
        (128, False): {"fwd": (_C(128, 64, 8, 2), _C(128, 32, 8, 3)), "dkdv": (_C(32, 64, 8, 2),),  # 216, 170; 211
                       "dq": (_C(128, 32, 8, 2),)},  # 174
        (64, True): {"fwd": (_C(128, 64, 8, 2),), "dkdv": (), "dq": (_C(64, 32, 8, 2),)},  # 237; 191
        (128, True): {"fwd": (_C(64, 32, 8, 2),), "dkdv": (_C(16, 64, 8, 2),), "dq": ()},  # 220; 212
    },
}
# sm_90 entries (generation, (padded head dim, RoPE), pass) taking more than 168 registers a thread, and why: each
# runs one block of eight warps a multiprocessor instead of two. attention's AOT_REGISTERS_ALLOWED names their builds.
_ONE_BLOCK = "one block of eight warps a multiprocessor; "
OVER_REGISTER_BUDGET: dict[tuple[str, tuple[int, bool], str], str] = {
    ("sm90", (128, False), "dkdv"): _ONE_BLOCK + "16 x 64 takes 168-180 (documents, masked head dims), and only "
                                    "16 x 16 fits 168 everywhere, too thin a tile for wgmma",
    ("sm90", (256, False), "dkdv"): _ONE_BLOCK + "at head dim 192 only (172); 16 x 16 is the smallest tile",
    ("sm90", (128, True), "fwd"): _ONE_BLOCK + "RoPE at the masked head dims 80 and 96 (168 at 128): 64 x 16 is the "
                                   "smallest forward tile that keeps two warpgroups",
    ("sm90", (128, True), "dkdv"): _ONE_BLOCK + "RoPE at head dim 128: 16 x 16 takes 170, no smaller tile exists",
    ("sm90", (128, True), "dq"): _ONE_BLOCK + "RoPE at head dim 128: every dQ tile from 64 x 32 to 32 x 16 took "
                                  "226-255 (the key tile is rotated each step and feeds two dots)",
    ("sm90", (256, True), "fwd"): _ONE_BLOCK + "RoPE at head dim 256: 64 x 16 takes 225, smaller tiles spill",
    ("sm90", (256, True), "dkdv"): _ONE_BLOCK + "RoPE at head dim 256: 16 x 16, the smallest tile, takes about 182",
    ("sm90", (256, True), "dq"): _ONE_BLOCK + "RoPE at head dim 256: 16 x 16, the smallest tile",
    ("sm90", (64, True), "fwd"): _ONE_BLOCK + "at head dim 48 only (176, the padding's masks)",
    ("sm90", (32, False), "fwd"): _ONE_BLOCK + "at head dim 24 only (169, the padding's masks)",
    ("sm90", (32, False), "dkdv"): _ONE_BLOCK + "at head dim 24 only with Triton 3.6 (171 at three stages)",
    ("sm90", (32, True), "dkdv"): _ONE_BLOCK + "at head dim 24 only with Triton 3.6",
    ("sm90", (64, True), "dkdv"): _ONE_BLOCK + "at head dim 48 only (171, the padding's masks)",
}
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
