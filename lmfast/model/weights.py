"""Loading weights into a model: shapes checked first, with an error that names the tensors and the config fix.

Shared by training checkpoints (:mod:`lmfast.train.checkpoint`) and Hugging Face folders (:mod:`lmfast.model.hf`).
"""

from __future__ import annotations

import os
from typing import Any

import torch

__all__ = ["unwrap_model", "load_model_state", "check_model_shapes", "device_of"]


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module under ``torch.compile`` / DDP wrappers, so saved keys carry no ``_orig_mod.``/``module.``."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


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


def device_of(model: torch.nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (cpu for a model without parameters)."""
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")
