"""Checkpoints: one dict under fixed keys, written atomically, loaded with ``weights_only=True``.

Keys: ``model`` (the un-compiled module's state_dict), ``optimizer``, ``step`` (= ``iteration``), and, from
the trainer, ``schedule``, ``data``, ``rng``, ``config`` and ``meta``. A path is written to a temporary file
beside it and moved into place with ``os.replace``, so a crash mid-write never leaves a truncated checkpoint.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Any, BinaryIO

import torch

__all__ = ["save_checkpoint", "load_checkpoint", "read_checkpoint", "load_model_state", "check_model_shapes",
           "unwrap_model", "atomic_torch_save"]

PathOrFile = str | os.PathLike | BinaryIO | IO[bytes]


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module under ``torch.compile`` / DDP wrappers, so saved keys carry no ``_orig_mod.``/``module.``."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def atomic_torch_save(obj: Any, out: PathOrFile) -> None:
    """``torch.save`` to a file object, or to a path through a temp file + ``os.replace``."""
    if not isinstance(out, (str, os.PathLike)):
        torch.save(obj, out)
        return
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, iteration: int,
                    out: PathOrFile, **extra: Any) -> None:
    """Save model, optimizer and ``iteration`` (plus any ``extra`` keys) to a path or binary file object."""
    state = {
        "model": unwrap_model(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "step": int(iteration),
        **extra,
    }
    atomic_torch_save(state, out)


def read_checkpoint(src: PathOrFile, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict safely (``weights_only=True``); errors name the file and what to do."""
    name = str(src) if isinstance(src, (str, os.PathLike)) else getattr(src, "name", "<file object>")
    if isinstance(src, (str, os.PathLike)) and (Path(src) / ".metadata").is_file():
        raise ValueError(f"{name!r} is a sharded checkpoint (a directory an fsdp run writes), which only training "
                         "resumes from; pass the run's final_model.pt or best_model.pt, single files")
    if isinstance(src, (str, os.PathLike)) and not Path(src).is_file():
        raise FileNotFoundError(f"checkpoint {name!r} does not exist; pass a .pt file written by lmfast "
                                "(or --resume auto to take the newest in checkpoint_dir)")
    try:
        state = torch.load(src, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle/zip errors differ across torch versions
        raise ValueError(f"checkpoint {name!r} cannot be read ({type(e).__name__}: {str(e)[:200]}); "
                         "it is truncated, corrupt, or not a torch checkpoint") from None
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise ValueError(f"checkpoint {name!r} is not an lmfast checkpoint: expected a dict with 'model' and 'step'")
    return state


def load_checkpoint(src: PathOrFile, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> int:
    """Restore ``model`` (and ``optimizer``) from a path or file object; returns the saved iteration."""
    state = read_checkpoint(src, map_location=_device_of(model))
    load_model_state(model, state["model"], src)
    if optimizer is not None and state.get("optimizer") is not None:
        optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])


def load_model_state(model: torch.nn.Module, model_state: dict[str, torch.Tensor], src: Any = "checkpoint") -> None:
    """``load_state_dict`` whose shape-mismatch error says which tensors differ and how to fix the config."""
    target = unwrap_model(model)
    check_model_shapes(target, {k: v.shape for k, v in model_state.items()}, src)
    target.load_state_dict(model_state)


def check_model_shapes(model: torch.nn.Module, saved: dict[str, torch.Size], src: Any = "checkpoint") -> None:
    """Raise a ValueError naming the tensors whose ``saved`` shapes differ from ``model``'s, and the config fix."""
    own = {k: v.shape for k, v in model.state_dict().items()}  # a sharded parameter's shape is the whole tensor's
    mismatched = [f"{k}: checkpoint {tuple(v)} vs model {tuple(own[k])}" for k, v in saved.items()
                  if k in own and own[k] != v]
    missing = sorted(set(own) - set(saved))
    unexpected = sorted(set(saved) - set(own))
    if mismatched or missing or unexpected:
        parts = mismatched[:4] + [f"missing {k}" for k in missing[:3]] + [f"unexpected {k}" for k in unexpected[:3]]
        name = str(src) if isinstance(src, (str, os.PathLike)) else "the checkpoint"
        raise ValueError(f"{name} was saved from a model of another shape ({'; '.join(parts)}). Use the model keys "
                         "(vocab_size, d_model, num_layers, num_heads, d_ff, context_length) of the run that wrote it")


def _device_of(model: torch.nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")

