"""A training run's state in a checkpoint: what a save writes, what a resume restores, what the loop has done.

A training checkpoint is :func:`lmfast.train.checkpoint.save_checkpoint`'s dict (``model``, ``optimizer``,
``step``) plus ``schedule``, ``data`` (the data-sampler state: one dict, or under torchrun every stream's, one per
rank in a fresh run, with ``world_size`` beside it), ``rng``, ``config``, ``progress`` and ``meta`` (the tokenizer, the
lmfast version). Under torchrun every rank calls :func:`save_run`, as it gathers the sampler states, and rank 0
alone writes. An fsdp run writes its training checkpoints as ``.dcp`` directories instead, every rank its shards
(:mod:`lmfast.train.sharded`), and ``best_model.pt`` / ``final_model.pt`` as plain files; any run resumes from either
kind. A resume continues the saved sampler streams whenever the global batch is unchanged, with any number of
ranks that divides or is a multiple of the number of streams (:mod:`lmfast.train.streams`); otherwise it warns and
reseeds each rank with ``[seed, rank, step]``. ``--resume auto`` takes the newest checkpoint in the run directory.
Every checkpoint is taken at a step boundary, after that step's validation, so resuming from any of them
continues exactly where the run was (the sampler has drawn nothing of the next step yet).
:class:`lmfast.train.Trainer` calls these, passing itself as ``run`` (a parameter, not an import: the trainer
imports this module); they log to the ``train`` logger, as it does. :func:`load_model` rebuilds the model and
tokenizer a training checkpoint names, for ``generate`` and ``export``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from lmfast import __version__
from lmfast.data import BatchSampler
from lmfast.model import TransformerLM
from lmfast.model.ops import resolve_backend
from lmfast.model.transformer import uninitialized
from lmfast.train.checkpoint import atomic_torch_save, checksummed, load_model_state, read_checkpoint, save_checkpoint
from lmfast.train.config import ConfigError, TrainConfig
from lmfast.train.run_setup import SetupError, load_run_tokenizer, resolve_device
from lmfast.train.sharded import (
    SHARDED_SUFFIX,
    gather_full,
    is_sharded,
    is_sharded_checkpoint,
    load_full,
    load_sharded,
    read_run_state,
    save_sharded,
)
from lmfast.train.streams import resume_sampler, saved_streams

__all__ = ["find_resume", "save_run", "save_interrupted", "load_run", "load_model"]

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
        """Count one optimizer step of ``tokens`` tokens and its train ``loss``; a non-finite loss stops the run.

        The trainer turns the FloatingPointError into advice that names a checkpoint only if one exists.
        """
        self.step += 1
        self.tokens_seen += tokens
        if not math.isfinite(loss):
            raise FloatingPointError(f"the training loss became {loss} at step {self.step}")
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
    if resume != "auto":  # checked here, before the tokenizer and the model are built
        path = Path(resume)
        if not (path.is_file() or is_sharded_checkpoint(path)):
            what = "is a directory; pass a .pt file in it" if path.is_dir() else "does not exist; pass a .pt file"
            raise FileNotFoundError(f"--resume {resume!r} {what} (or a .dcp directory) that a run wrote, or --resume "
                                    "auto to take the newest checkpoint in checkpoint_dir")
        return path
    candidates = [p for p in [*run_dir.glob("*.pt"), *run_dir.glob(f"*{SHARDED_SUFFIX}")]
                  if p.name.startswith(("checkpoint_", "final_model", "interrupted"))
                  and (p.suffix == ".pt" or is_sharded_checkpoint(p))]
    if not candidates:
        log.info("--resume auto: no checkpoint in %s, starting fresh", run_dir)
        return None
    return max(candidates, key=lambda p: p.stat().st_mtime_ns)


# -- saving ---------------------------------------------------------------------------------------------------


_PLAIN_UNDER_FSDP = ("best_model.pt", "final_model.pt")  # the files generate and export take


def save_run(run, path: Path) -> Path:
    """Write ``run``'s checkpoint to path (rank 0) and return where it went; under torchrun every rank calls it: it
    gathers the sampler states (and under fsdp the model and optimizer shards)."""
    data, extra = saved_streams(run.sampler, run.dist)
    rest = _run_extras(run, data, extra) if run.dist.is_main else None
    if run.cfg.distributed == "fsdp" and path.name not in _PLAIN_UNDER_FSDP:
        run_state = {"step": run.progress.step, **rest} if rest is not None else None
        return save_sharded(run.model, run.optimizer, path.with_suffix(SHARDED_SUFFIX), run_state, run.dist)
    if is_sharded(run.model):
        model_state, optim_state = gather_full(run.model, run.optimizer)
        if run.dist.is_main:
            atomic_torch_save(checksummed({"model": model_state, "optimizer": optim_state, "step": run.progress.step,
                                           **rest}), path)
        return path
    if run.dist.is_main:
        save_checkpoint(run.model, run.optimizer, run.progress.step, path, **rest)
    return path


def _run_extras(run, data, extra: dict) -> dict:
    """Every checkpoint key but model, optimizer and step."""
    rng = {"torch": torch.get_rng_state(),
           "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    return dict(schedule={"step": run.progress.step, "total_steps": run.total_steps}, data=data, rng=rng,
                config=run.cfg.to_dict(), progress=vars(run.progress).copy(),
                meta={"tokenizer": _tokenizer_spec(run), "lmfast_version": __version__,
                      "hf_config": getattr(run, "hf_config", None)},
                scaler=run.scaler.state_dict() if run.scaler.is_enabled() else None, **extra)


def save_interrupted(run, signal_name: str) -> Path:
    """Write ``interrupted.pt`` at a step boundary; under torchrun every rank calls it (they agreed on the step)."""
    path = run.save("interrupted.pt")
    # No rank leaves before rank 0 has written it: torchrun answers a worker's exit by stopping the others.
    run.dist.all_reduce_mean(torch.zeros((), device=run.dist.device))
    if run.dist.is_main:
        log.warning("%s: stopped after step %d of %d and saved %s. Continue with: python -m lmfast.train --config "
                    "... --resume auto", signal_name, run.progress.step, run.total_steps, path)
    return path


def _tokenizer_spec(run) -> str:
    if run.tokenizer is None:
        return "bytes"
    if run.cfg.tokenizer == "train":
        return "tokenizer"  # relative to the checkpoint's directory
    return run.cfg.tokenizer if run.cfg.tokenizer == "gpt2" else str(Path(run.cfg.tokenizer).resolve())


# -- resuming -------------------------------------------------------------------------------------------------


def load_run(run, path: Path) -> None:
    """Restore model, optimizer, progress, this rank's sampler and the RNG from path; warn on changed config keys.

    No collectives: under torchrun a failure here stops every rank through ``DistContext.agree``.
    """
    if is_sharded_checkpoint(path):
        state = read_run_state(path)
        load_sharded(run.model, run.optimizer, path)
    elif is_sharded(run.model):
        state = read_checkpoint(path)  # to CPU: each rank moves only its shards to the device
        load_full(run.model, run.optimizer, state["model"], state.get("optimizer"), path)
    else:
        state = read_checkpoint(path, map_location=run.device)
        load_model_state(run.model, state["model"], path)
        if state.get("optimizer") is not None:
            run.optimizer.load_state_dict(state["optimizer"])
    saved_cfg = state.get("config") or {}
    run.hf_config = (state.get("meta") or {}).get("hf_config") or getattr(run, "hf_config", None)
    if "progress" in state:
        run.progress = _Progress(**state["progress"])
    run.progress.step = int(state["step"])
    if "data" in state:
        _load_sampler(run, state["data"])
    if state.get("scaler") is not None and run.scaler.is_enabled():
        run.scaler.load_state_dict(state["scaler"])
    if "rng" in state:
        torch.set_rng_state(state["rng"]["torch"])
        if torch.cuda.is_available() and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    if run.dist.is_main:
        _warn_changed_config(saved_cfg, run.cfg)
    log.info("Resumed from %s at step %d", path, run.progress.step)


def _load_sampler(run, data: dict | list) -> None:
    """Continue the saved streams (:mod:`lmfast.train.streams`); when the batches cannot be continued, another world
    size reseeds every rank deterministically and the same one continues each rank's stream with its new batch size."""
    cfg, dist = run.cfg, run.dist
    sampler = resume_sampler(data, dist.rank, dist.world_size, cfg.batch_size,
                             lambda batch: BatchSampler(run.train_data, batch, cfg.context_length, run.device))
    if sampler is not None:
        run.sampler = sampler
        return
    states = [data] if isinstance(data, dict) else list(data)  # a one-process checkpoint holds one dict
    if len(states) == dist.world_size:  # BatchSampler warns that the batches differ
        run.sampler.load_state_dict(states[dist.rank])
        return
    if dist.is_main:
        batch = states[0].get("batch_size", "?")
        log.warning("The checkpoint holds the data-sampler state of %d stream(s) of batch %s but this run has %d "
                    "rank(s) of batch_size %d; each rank draws from a new stream seeded with [seed, rank, %d], so the "
                    "batches differ from the run that wrote it (to continue them, keep ranks x batch_size = %s with "
                    "a number of ranks that divides or is a multiple of %d)", len(states), batch, dist.world_size,
                    cfg.batch_size, run.progress.step, len(states) * batch if isinstance(batch, int) else "?",
                    len(states))
    run.sampler = run.train_sampler([cfg.seed, dist.rank, run.progress.step])


def _warn_changed_config(saved_cfg: dict, cfg: TrainConfig) -> None:
    changed = {k: (v, getattr(cfg, k)) for k, v in saved_cfg.items()
               if hasattr(cfg, k) and _norm(v) != _norm(getattr(cfg, k))}
    if changed:
        log.warning("Resuming with changed config keys: %s",
                    ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(changed.items())))


def _norm(v):
    return list(v) if isinstance(v, tuple) else v


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu", backend: str = "auto"
               ) -> tuple[TransformerLM, object, dict]:
    """Rebuild the model of a training checkpoint (its saved config) with its tokenizer; returns (model, tok, state).

    ``device`` takes ``auto`` (cuda, then mps, then cpu); ``backend`` as in training (``auto`` = the fused
    Triton ops on CUDA). A device or backend this machine lacks raises :class:`~lmfast.train.run_setup.SetupError`.
    """
    try:
        device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    except RuntimeError as e:  # torch's "Invalid device string"
        raise SetupError(f"--device {device}: {e}; use auto, cpu, cuda, cuda:N or mps") from None
    try:
        backend = resolve_backend(backend, device)
    except RuntimeError as e:  # backend 'fused' where it cannot run
        raise SetupError(str(e)) from None
    state = read_checkpoint(checkpoint, map_location=device)
    if not isinstance(state.get("config"), dict):
        raise ValueError(f"{checkpoint} holds no training config; it was not written by lmfast.train")
    try:
        cfg = TrainConfig(**state["config"])
    except (ConfigError, TypeError) as e:
        raise ValueError(f"{checkpoint} holds a config this lmfast cannot read: {e}") from None
    with uninitialized():  # the checkpoint holds every weight
        model = TransformerLM(**cfg.model_kwargs(), backend=backend, device=device)
    load_model_state(model, state["model"], checkpoint)
    model.eval()
    tokenizer = load_run_tokenizer(state.get("meta", {}).get("tokenizer"), Path(checkpoint).parent)
    return model, tokenizer, state
