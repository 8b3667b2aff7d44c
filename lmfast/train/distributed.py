"""Data-parallel runs under ``torchrun``: which process this is, the process group (and the device mesh FSDP shards
over), the collectives the trainer needs.

``torchrun --nproc_per_node=N -m lmfast.train ...`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in each
process; :func:`from_env` reads them. Without them (plain ``python -m lmfast.train``), or with a world of one,
:class:`DistContext` is a world of one and every method here is a no-op that returns its input, so a single
process runs exactly the code it always did.

Setup errors must not leave the other ranks waiting in a collective forever: :meth:`DistContext.agree` runs
one phase of setup on every rank and all-reduces a failure flag, so when any rank fails, every rank stops at
the same point. Only the rank whose error it is raises it (rank 0's when several failed, which for an input
every rank shares means one message); the others raise :class:`PeerFailedError`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
import torch.distributed as dist

__all__ = ["DistContext", "PeerFailedError", "from_env", "shutdown"]

T = TypeVar("T")


class PeerFailedError(RuntimeError):
    """Another rank failed during setup; its own error is reported by that rank."""


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer; it is set by torchrun, so "
                         "launch with torchrun --nproc_per_node=N -m lmfast.train, or unset it") from None


def from_env(environ: Mapping[str, str] | None = None) -> DistContext:
    """The rank, world size and local rank torchrun set (a world of one when ``WORLD_SIZE`` is unset)."""
    environ = os.environ if environ is None else environ
    world_size = _env_int(environ, "WORLD_SIZE")
    rank, local_rank = _env_int(environ, "RANK"), _env_int(environ, "LOCAL_RANK")
    if world_size is None or (world_size == 1 and rank in (None, 0)):
        return DistContext()
    if world_size < 1 or rank is None or not 0 <= rank < world_size:
        raise ValueError(f"WORLD_SIZE={world_size} needs RANK in [0, {world_size}), got RANK={rank}; these are set "
                         "by torchrun, so launch with torchrun --nproc_per_node=N -m lmfast.train")
    local_rank = rank if local_rank is None else local_rank
    if local_rank < 0:
        raise ValueError(f"LOCAL_RANK={local_rank} must be >= 0; launch with torchrun, which sets it")
    return DistContext(rank, world_size, local_rank)


def shutdown() -> None:
    """Destroy the default process group if one is up (safe to call any number of times)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class DistContext:
    """This process's place in a data-parallel run, and the collectives the trainer uses."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0):
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.device = torch.device("cpu")  # where collective tensors live; cuda:LOCAL_RANK under NCCL
        self._mesh = None

    @property
    def enabled(self) -> bool:
        """True when there is more than one rank."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs, writes metrics, checkpoints and the tokenizer."""
        return self.rank == 0

    def __repr__(self) -> str:
        return f"DistContext(rank={self.rank}, world_size={self.world_size}, local_rank={self.local_rank})"

    # -- setup ------------------------------------------------------------------------------------------------

    def resolve_device(self, device: torch.device) -> torch.device:
        """The device this rank trains on: ``cuda:LOCAL_RANK`` for CUDA, the device as is for a world of one."""
        if not self.enabled:
            return device
        if device.type == "mps":
            raise ValueError("data-parallel training on Apple MPS is not supported; use --device cpu under torchrun")
        if device.type != "cuda":
            return device
        if device.index is not None and device.index != self.local_rank:
            raise ValueError(f"--device {device} under torchrun: each process uses cuda:LOCAL_RANK (here "
                             f"cuda:{self.local_rank}); set device to cuda or auto")
        if self.local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={self.local_rank} but this machine has {torch.cuda.device_count()} CUDA "
                             "device(s); lower --nproc_per_node to the number of GPUs")
        return torch.device("cuda", self.local_rank)

    def init(self, device: torch.device) -> None:
        """Join the process group: NCCL when training on CUDA (one GPU per rank), gloo on CPU."""
        if not self.enabled or dist.is_initialized():
            return
        if not dist.is_available():
            raise RuntimeError("this torch build has no torch.distributed; install a build with it to use torchrun")
        if device.type == "cuda":
            torch.cuda.set_device(device)
            self.device = device
            dist.init_process_group("nccl", rank=self.rank, world_size=self.world_size, device_id=device)
        else:
            dist.init_process_group("gloo", rank=self.rank, world_size=self.world_size)

    def device_mesh(self):
        """The one-dimensional ``DeviceMesh`` of all ranks that FSDP shards over (made once, on first call).

        Call it on every rank at the same point: on a machine with CUDA, a mesh over a gloo group makes a new group.
        """
        if self._mesh is None:
            from torch.distributed.device_mesh import init_device_mesh

            self._mesh = init_device_mesh(self.device.type, (self.world_size,))
        return self._mesh

    # -- collectives ------------------------------------------------------------------------------------------

    def barrier(self) -> None:
        """Wait for every rank (nothing to wait for in a world of one)."""
        if self.enabled:
            dist.barrier()

    def agree(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on this rank, then stop every rank if any rank raised (see the module docstring)."""
        if not self.enabled:
            return fn(*args)
        error: Exception | None = None
        try:
            result = fn(*args)
        except Exception as e:  # noqa: BLE001 - re-raised below, after the other ranks have heard of it
            error = e
        failed = torch.zeros(self.world_size, device=self.device)
        failed[self.rank] = float(error is not None)
        dist.all_reduce(failed)
        ranks = [r for r, f in enumerate(failed.tolist()) if f]
        if error is not None and (self.is_main or 0 not in ranks):
            raise error
        if ranks:
            raise PeerFailedError(f"rank(s) {ranks} failed during setup; rank {ranks[0]} reports why")
        return result

    def main_first(self, fn: Callable[[], T]) -> T:
        """``fn()`` on rank 0, then on the other ranks: rank 0 does one-time work (fetch, train a tokenizer)
        that the others then find done."""
        if not self.enabled:
            return fn()
        first = self.agree(fn if self.is_main else _nothing)
        later = self.agree(_nothing if self.is_main else fn)
        return first if self.is_main else later

    def all_reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of ``value`` over ranks (a new tensor); ``value`` itself for a world of one."""
        if not self.enabled:
            return value
        out = value.detach().to(self.device, torch.float32, copy=True)
        dist.all_reduce(out)  # SUM: gloo has no AVG
        return (out / self.world_size).to(value.device)

    def gather_object(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj``, in rank order, on rank 0 (None on the others); ``[obj]`` for a world of one."""
        if not self.enabled:
            return [obj]
        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out


def _nothing() -> None:
    return None
