"""``distributed: fsdp``: FSDP2 over the ranks of a torchrun run, and the checkpoints of a sharded run.

Sharding follows torchtitan: each transformer block is compiled on its own (when ``compile`` is on; in place, with
``Module.compile``, so the state-dict keys stay those of the plain model) and then ``fully_shard``-ed, then the root
(embedding, final norm and LM head). Mixed precision is FSDP's ``MixedPrecisionPolicy`` instead of autocast: the
parameters are all-gathered in the run's ``dtype`` for compute (bf16 on CUDA by default) and gradients are
reduce-scattered in fp32, while the sharded fp32 parameters stay the master weights the optimizer updates. During
forward and backward the gathered parameters are plain tensors, so the fused Triton ops run inside as they do
without FSDP; the optimizer and the gradient clip get the sharded ``DTensor`` s (see :mod:`lmfast.train.optim`).

A training checkpoint of an fsdp run (``checkpoint_step_{s}``, ``checkpoint_epoch_{e}``, ``interrupted``) is a
directory ``NAME.dcp`` written with ``torch.distributed.checkpoint``: every rank writes its shards of the model and
optimizer (from ``get_state_dict``, keyed by parameter name, so a run of any world size reads them back), then rank
0 adds ``run_state.pt`` with the rest of the run (step, schedule, sampler streams, RNG, config, progress, meta, all
as a plain checkpoint holds them, with lmfast's checksums, and the size and CRC-32 of every file of the directory). It
is written under a temporary name and renamed into place, so a directory with ``run_state.pt`` is complete. Loading
first checks the files against those sums and reads them without running code from them
(:mod:`lmfast.train.dcp_files`), then reads only this rank's pieces and needs no collective. ``best_model.pt`` and
``final_model.pt`` stay plain files: the full state dicts gathered to rank 0's CPU, in the layout one process
saves, so generate and export take them and any run resumes from them. A checkpoint directory must be on storage
every rank can reach (a shared filesystem across nodes).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from lmfast.train.checkpoint import atomic_torch_save, check_model_shapes, checksummed, load_checked, unwrap_model
from lmfast.train.dcp_files import FILES_KEY, file_sums, safe_planner, safe_reader, verify_files
from lmfast.train.distributed import DistContext

__all__ = ["SHARDED_SUFFIX", "shard_model", "is_sharded", "accumulating", "gather_full", "load_full",
           "is_sharded_checkpoint", "save_sharded", "read_run_state", "read_sharded", "load_sharded",
           "load_sharded_model"]

SHARDED_SUFFIX = ".dcp"
_RUN_STATE = "run_state.pt"
log = logging.getLogger("train")


# -- the sharded model ----------------------------------------------------------------------------------------


def shard_model(model: torch.nn.Module, mesh, param_dtype: torch.dtype | None, compile_backend: str | None) -> None:
    """Compile (when ``compile_backend`` is given) and ``fully_shard`` each block in ``model.layers``, then the root.

    ``param_dtype``: the dtype parameters are gathered in for compute (None = as stored, fp32).
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in model.layers:
        if compile_backend is not None:
            block.compile(backend=compile_backend)
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)  # the root keeps its parameters gathered from forward to backward


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether ``fully_shard`` was applied to ``model``."""
    # nothing was sharded unless torch.distributed.fsdp is imported; looking it up spares importing it (~1 s)
    fsdp = sys.modules.get("torch.distributed.fsdp")
    return fsdp is not None and isinstance(model, fsdp.FSDPModule)


@contextlib.contextmanager
def accumulating(model):
    """A micro-batch before the last of a step: no reduce-scatter of its gradients, which stay unsharded on each
    rank and add up, and no resharding of the parameters after its backward, so the next forward needs no
    all-gather. Costs the memory of the whole model's gradients and parameters between micro-batches."""
    model.set_requires_gradient_sync(False)
    model.set_reshard_after_backward(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)
        model.set_reshard_after_backward(True)


# -- plain files: the whole state on rank 0 -------------------------------------------------------------------


def gather_full(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict | None, dict | None]:
    """The full model and optimizer state dicts on rank 0's CPU, as one process's ``state_dict()`` s are laid out
    (optimizer state keyed by parameter index); (None, None) on the other ranks. Every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state, optim_state = get_state_dict(model, optimizer, options=options)
    if torch.distributed.get_rank() != 0:
        return None, None
    index: dict[str, int] = {}
    groups = [{**g, "params": [index.setdefault(name, len(index)) for name in g["params"]]}
              for g in optim_state["param_groups"]]
    return model_state, {"state": {index[name]: s for name, s in optim_state["state"].items()}, "param_groups": groups}


def load_full(model: torch.nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optim_state: dict | None,
              src: Any) -> None:
    """A plain checkpoint's full state dicts into a sharded model and its optimizer: each rank cuts out its own
    shards (no communication)."""
    check_model_shapes(model, {k: v.shape for k, v in model_state.items()}, src)
    own = model.state_dict()
    model.load_state_dict({k: _shard_like(v, own[k]) for k, v in model_state.items()})
    if optim_state is None:
        return
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {i: {k: _shard_like(v, params[int(i)]) for k, v in s.items()} for i, s in optim_state["state"].items()}
    optimizer.load_state_dict({**optim_state, "state": state})


def _shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``full`` placed as ``like`` is, when ``like`` is a DTensor of its shape; this rank keeps only its shard."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(like, DTensor) or full.shape != like.shape:
        return full  # e.g. a parameter's 0-d AdamW step count
    return distribute_tensor(full.to(like.device), like.device_mesh, like.placements, src_data_rank=None)


# -- sharded checkpoint directories ---------------------------------------------------------------------------


def is_sharded_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a complete sharded checkpoint directory."""
    path = Path(path)
    return (path / ".metadata").is_file() and (path / _RUN_STATE).is_file()


def save_sharded(model: torch.nn.Module, optimizer: torch.optim.Optimizer, path: Path, run_state: dict | None,
                 dist: DistContext) -> Path:
    """Write ``path`` (a ``.dcp`` directory): every rank its shards, rank 0 ``run_state`` too. Every rank calls it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    tmp = path.with_name(f".{path.name}.tmp")
    if dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a save that crashed
    dist.barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    with _single_process_is_meant():
        dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=tmp, no_dist=not dist.enabled)
    # dcp.save returns once every rank's shards and the metadata are written; each rank sums its own shards
    sums = dist.gather_object(file_sums(tmp, sorted(p.name for p in tmp.glob(f"__{dist.rank}_*"))))
    if dist.is_main:
        files = {name: sum_ for rank_sums in sums for name, sum_ in rank_sums.items()}
        rest = sorted(p.name for p in tmp.iterdir() if p.name not in files and p.name != _RUN_STATE)
        files |= file_sums(tmp, rest)  # .metadata, and any file no rank claimed
        atomic_torch_save(checksummed({**run_state, FILES_KEY: files}), tmp / _RUN_STATE)
        _replace_dir(tmp, path)
    return path


def _replace_dir(tmp: Path, path: Path) -> None:
    old = path.with_name(f".{path.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def read_run_state(path: Path) -> dict:
    """The run state (everything but model and optimizer) of a sharded checkpoint, its checksums verified; it still
    holds the file sums under ``files``."""
    state = load_checked(path / _RUN_STATE, what=f"sharded checkpoint {str(path)!r}: {_RUN_STATE}")
    if "step" not in state:
        raise ValueError(f"sharded checkpoint {str(path)!r}: {_RUN_STATE} is not an lmfast run state (it has no "
                         "step); resume from another checkpoint")
    return state


def read_sharded(path: Path, rank: int = 0, world_size: int = 1) -> tuple[dict, set[str] | None]:
    """A sharded checkpoint's run state, after checking its files by content (this rank's share of the shards);
    returns (run state, the names of the checked files: None for a checkpoint from before file checksums)."""
    state = read_run_state(path)
    if FILES_KEY not in state:
        log.warning("%s was written by an older lmfast and holds no file checksums: its shards are read without "
                    "being verified", path)
        return state, None
    return state, verify_files(path, state.pop(FILES_KEY), rank, world_size)


def load_sharded(model: torch.nn.Module, optimizer: torch.optim.Optimizer, path: Path,
                 checked: set[str] | None) -> None:
    """A sharded checkpoint (checked by :func:`read_sharded`) into ``model`` and ``optimizer``, sharded over any
    number of ranks or not at all.

    Each rank reads only the pieces of its own shards (``no_dist``), so no rank waits on another.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    reader = safe_reader(path, checked)
    model = unwrap_model(model)  # a DDP run may resume from an fsdp one
    check_model_shapes(model, _saved_model_shapes(reader), path)
    model_state, optim_state = get_state_dict(model, optimizer)
    with _single_process_is_meant():
        dcp.load({"model": model_state, "optimizer": optim_state}, storage_reader=reader, planner=safe_planner(),
                 no_dist=True)
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state)


def load_sharded_model(model: torch.nn.Module, path: Path, checked: set[str] | None) -> None:
    """Only the model of a sharded checkpoint (checked by :func:`read_sharded`), into a plain model: what
    ``generate`` and ``export`` need."""
    import torch.distributed.checkpoint as dcp

    reader = safe_reader(path, checked)
    check_model_shapes(model, _saved_model_shapes(reader), path)
    state = model.state_dict()
    with _single_process_is_meant():
        dcp.load({"model": state}, storage_reader=reader, planner=safe_planner(), no_dist=True)
    model.load_state_dict(state)


def _saved_model_shapes(reader) -> dict:
    shapes = {k.removeprefix("model."): getattr(m, "size", None) for k, m in
              reader.read_metadata().state_dict_metadata.items() if k.startswith("model.")}
    bad = [k for k, size in shapes.items() if not isinstance(size, torch.Size)]
    if bad:
        raise ValueError(f"sharded checkpoint {str(reader.path)!r}: its .metadata records {bad[0]} as something other "
                         "than a tensor; resume from another checkpoint")
    return shapes


@contextlib.contextmanager
def _single_process_is_meant():
    # no_dist=True says so already; DCP still warns "assuming the intent is to save/load in a single process"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*in a single process", category=UserWarning)
        yield
