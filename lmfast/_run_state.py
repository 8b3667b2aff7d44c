"""A training run's state in a checkpoint: what a save writes, what a resume restores, what the loop has done.

A training checkpoint is :func:`lmfast.checkpoint.save_checkpoint`'s dict (``model``, ``optimizer``, ``step``) plus
``schedule``, ``data`` (the data-sampler state: one dict, or under torchrun every rank's in rank order with
``world_size`` beside it), ``rng``, ``config``, ``progress`` and ``meta`` (the tokenizer, the lmfast version).
Under torchrun every rank calls :func:`save_run`, as it gathers the sampler states, and rank 0 alone writes. A
resume with the same number of ranks continues each rank's stream; one with another number warns and reseeds
each rank with ``[seed, rank, step]``. ``--resume auto`` takes the newest checkpoint in the run directory.
:class:`lmfast.train.Trainer` calls these; they log to the ``train`` logger, as it does.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lmfast import __version__
from lmfast.checkpoint import load_model_state, read_checkpoint, save_checkpoint
from lmfast.config import TrainConfig

if TYPE_CHECKING:
    from lmfast.train import Trainer

__all__ = ["find_resume", "save_run", "save_interrupted", "load_run"]

log = logging.getLogger("train")


@dataclass
class _Progress:
    """What the loop has done; saved in checkpoints so a resumed run continues the same curve."""

    step: int = 0
    best_val_loss: float = math.inf
    epoch_loss_sum: float = 0.0
    epoch_loss_count: int = 0
    tokens_seen: int = 0

    def add_step(self, loss: float, tokens: int) -> None:
        """Count one optimizer step of ``tokens`` tokens and its train ``loss``; a non-finite loss stops the run."""
        self.step += 1
        self.tokens_seen += tokens
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss became {loss} at step {self.step}; lower max_learning_rate "
                                     "or grad_clip_norm, then resume from the last good checkpoint")
        self.epoch_loss_sum += loss
        self.epoch_loss_count += 1

    def end_epoch(self) -> float:
        """The epoch's mean train loss; starts the next epoch's sum."""
        train_loss = self.epoch_loss_sum / max(1, self.epoch_loss_count)
        self.epoch_loss_sum, self.epoch_loss_count = 0.0, 0
        return train_loss


def find_resume(resume: str | None, run_dir: Path) -> Path | None:
    """The checkpoint ``--resume`` names: a path as given, or for ``auto`` the newest run checkpoint in run_dir."""
    if resume is None:
        return None
    if resume != "auto":
        return Path(resume)
    candidates = [p for p in run_dir.glob("*.pt") if p.name.startswith(("checkpoint_", "final_model",
                                                                        "interrupted"))]
    if not candidates:
        log.info("--resume auto: no checkpoint in %s, starting fresh", run_dir)
        return None
    return max(candidates, key=lambda p: p.stat().st_mtime_ns)


# -- saving ---------------------------------------------------------------------------------------------------


def save_run(run: Trainer, path: Path) -> Path:
    """Write ``run``'s checkpoint to path (rank 0); under torchrun every rank calls it: it gathers sampler states."""
    data, extra = run.sampler.state_dict(), {}
    if run.dist.enabled:
        data, extra = run.dist.gather_object(data), {"world_size": run.dist.world_size}
    if not run.dist.is_main:
        return path
    rng = {"torch": torch.get_rng_state(),
           "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    save_checkpoint(run.model, run.optimizer, run.progress.step, path,
                    schedule={"step": run.progress.step, "total_steps": run.total_steps},
                    data=data, rng=rng, config=run.cfg.to_dict(),
                    progress=vars(run.progress).copy(),
                    meta={"tokenizer": _tokenizer_spec(run), "lmfast_version": __version__}, **extra)
    return path


def save_interrupted(run: Trainer) -> None:
    """On Ctrl-C write ``interrupted.pt`` for ``--resume auto``; under torchrun only say where to continue from."""
    if run.dist.enabled:  # the ranks stop at different points, so a checkpoint's gather could hang
        log.warning("Interrupted at step %d; under torchrun no checkpoint is written on interrupt. Continue "
                    "from the last saved one with --resume auto", run.progress.step)
        return
    path = run.save("interrupted.pt")
    log.warning("Interrupted at step %d; saved %s. Continue with --resume auto", run.progress.step, path)


def _tokenizer_spec(run: Trainer) -> str:
    if run.tokenizer is None:
        return "bytes"
    if run.cfg.tokenizer == "train":
        return "tokenizer"  # relative to the checkpoint's directory
    return run.cfg.tokenizer if run.cfg.tokenizer == "gpt2" else str(Path(run.cfg.tokenizer).resolve())


# -- resuming -------------------------------------------------------------------------------------------------


def load_run(run: Trainer, path: Path) -> None:
    """Restore model, optimizer, progress, this rank's sampler and the RNG from path; warn on changed config keys."""
    state = read_checkpoint(path, map_location=run.device)
    saved_cfg = state.get("config") or {}
    load_model_state(run.model, state["model"], path)
    if state.get("optimizer") is not None:
        run.optimizer.load_state_dict(state["optimizer"])
    if "progress" in state:
        run.progress = _Progress(**state["progress"])
    run.progress.step = int(state["step"])
    if "data" in state:
        _load_sampler(run, state["data"])
    if "rng" in state:
        torch.set_rng_state(state["rng"]["torch"])
        if torch.cuda.is_available() and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    _warn_changed_config(saved_cfg, run.cfg)
    log.info("Resumed from %s at step %d", path, run.progress.step)


def _load_sampler(run: Trainer, data: dict | list) -> None:
    """Each rank continues its own saved stream; another world size reseeds every rank deterministically."""
    states = [data] if isinstance(data, dict) else list(data)  # a one-process checkpoint holds one dict
    if len(states) == run.dist.world_size:
        run.sampler.load_state_dict(states[run.dist.rank])
        return
    if run.dist.is_main:
        log.warning("The checkpoint holds the data-sampler state of %d rank(s) but this run has %d; each rank "
                    "draws from a new stream seeded with [seed, rank, %d], so the batches differ from the run "
                    "that wrote it (resume with --nproc_per_node=%d to continue it exactly)", len(states),
                    run.dist.world_size, run.progress.step, len(states))
    run.sampler = run.train_sampler([run.cfg.seed, run.dist.rank, run.progress.step])


def _warn_changed_config(saved_cfg: dict, cfg: TrainConfig) -> None:
    changed = {k: (v, getattr(cfg, k)) for k, v in saved_cfg.items()
               if hasattr(cfg, k) and _norm(v) != _norm(getattr(cfg, k))}
    if changed:
        log.warning("Resuming with changed config keys: %s",
                    ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(changed.items())))


def _norm(v):
    return list(v) if isinstance(v, tuple) else v
