"""Train a Transformer LM from a YAML config: ``python -m lmfast.train --config configs/quickstart.yaml``.

    python -m lmfast.train --config X.yaml [--device auto|cpu|cuda|mps] [--resume PATH|auto] [--init-from DIR]
        [--set key=value ...]

``main()`` parses and builds (everything that can be wrong with the input fails here, before anything is
written); :class:`Trainer` runs the loop in small named steps. Logs follow the CS336 training script's
format, plus tokens/s and, on a GPU of :mod:`lmfast.train.mfu`'s table, MFU; ``metrics.jsonl`` in ``checkpoint_dir``
has one JSON object per log/eval line. ``--init-from`` starts from a Hugging Face Llama folder (:mod:`lmfast.model.hf`).

Data-parallel training on several GPUs or nodes runs the same script under ``torchrun`` (DDP; helpers in
:mod:`lmfast.train.distributed`): ``torchrun --nproc_per_node=N -m lmfast.train --config X.yaml`` gives each rank
``cuda:LOCAL_RANK`` with NCCL (gloo on CPU), wraps the compiled model in ``DistributedDataParallel`` (the order
the torch docs recommend) and samples each rank's batches from its own stream, ``seed=[seed, rank]``, so an
optimizer step sees ``batch_size x gradient_accumulation_steps x N`` sequences and an epoch has N times fewer
steps. The logged loss is the mean over ranks and tokens/s counts all of them. Only rank 0 logs (the others
at WARNING), writes metrics, checkpoints (with every rank's sampler state: :mod:`lmfast.train.run_state`), the
trained tokenizer and the sample. Validation splits the ``eval_iters`` batches a single process would draw:
rank r evaluates batches ``r*k .. r*k+k-1`` of that fixed stream (``k = max(1, eval_iters // N)``) and the mean
is all-reduced, so with ``eval_iters`` a multiple of N the validation loss is that of one process.

``distributed: fsdp`` shards the model instead of replicating it (FSDP2, :mod:`lmfast.train.sharded`): parameters,
gradients and optimizer state are split over the ranks, and training checkpoints are ``.dcp`` directories that any
world size resumes from. Everything above holds for it as well.

A run holds an exclusive lock on its ``checkpoint_dir`` (a second run there is refused, naming the holder's PID)
and stops on SIGINT or SIGTERM at the next step boundary, saving ``interrupted.pt`` (:mod:`lmfast.train.lifecycle`).
Exit codes: 0 trained (or nothing left to do), 1 the loss diverged, 2 bad input, 130 / 143 stopped by SIGINT /
SIGTERM with ``interrupted.pt`` saved (continue with ``--resume auto``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import logging
import math
import signal
import sys
import time
from pathlib import Path

import torch

from lmfast import command_name
from lmfast.data import BatchSampler, load_data, tokenizer_fingerprint
from lmfast.data.registry import DownloadError
from lmfast.model import TransformerLM
from lmfast.model.functional import document_ids
from lmfast.model.generation import generate_text
from lmfast.model.hf import init_from_hf, read_llama_config
from lmfast.model.precision import auto_autocast_dtype
from lmfast.model.transformer import uninitialized
from lmfast.model.weights import load_model_state
from lmfast.train.checkpoint import read_checkpoint
from lmfast.train.config import ConfigError, TrainConfig, load_config, parse_overrides
from lmfast.train.distributed import DistContext, PeerFailedError, from_env, shutdown
from lmfast.train.lifecycle import (
    Interrupted,
    RunLock,
    StopSignals,
    agree_on_stop,
    claim_run_dir,
    divergence_advice,
    prune_step_checkpoints,
)
from lmfast.train.metrics import MetricsLogger, MissingPackageError
from lmfast.train.mfu import device_peak_flops, mfu
from lmfast.train.optim import AdamW, clip_grad_norm_, cosine_lr
from lmfast.train.run_setup import (
    ByteTokenizer,
    SetupError,
    _archive_earlier_run,
    _resolve_paths,
    build_tokenizer,
    check_run_inputs,
    config_notes,
    config_yaml,
    load_run_tokenizer,
    log_failure,
    log_file_path,
    resolve_device,
    resolve_eot,
    setup_logging,
    write_run_config,
)
from lmfast.train.run_state import _Progress, find_resume, load_run, read_resume, save_interrupted, save_run
from lmfast.train.sharded import accumulating, shard_model

__all__ = ["main", "build", "Trainer", "SetupError", "TrainingDiverged", "ByteTokenizer", "build_tokenizer",
           "load_run_tokenizer", "resolve_device", "setup_logging"]

log = logging.getLogger("train")


# ---------------------------------------------------------------------------------------------------------------
# The trainer


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the last checkpoint (if any) and what to change."""


class _NoMetrics:
    """The metrics sink of ranks other than 0: only rank 0 writes metrics."""

    def log(self, **record) -> None:
        pass

    def close(self) -> None:
        pass


class Trainer:
    """One training run: built from a validated config, then :meth:`fit`.

    ``dist`` places the run in a torchrun process group (see :mod:`lmfast.train.distributed`); None = one process.
    """

    def __init__(self, cfg: TrainConfig, device: torch.device, resume: str | None = None,
                 dist: DistContext | None = None, init_from: str | None = None):
        self.cfg, self.device, self.init_from = cfg, device, init_from
        self.dist = dist or DistContext()
        self.run_dir = Path(cfg.checkpoint_dir)
        # FSDP over a world of one has nothing to shard: the model stays whole, checkpoints are still .dcp
        self.sharded = cfg.distributed == "fsdp" and self.dist.enabled
        self.mesh = self.dist.device_mesh() if self.sharded else None  # on every rank, before anything can fail
        self.run_lock: RunLock | None = None  # build() takes it; a Trainer made directly holds none
        torch.manual_seed(cfg.seed)
        self.resume_from = find_resume(resume, self.run_dir)
        # Rank 0 fetches a named corpus and trains/saves the BPE first; the other ranks then load what it wrote.
        self.tokenizer, train_path, val_path = self.dist.main_first(self._build_tokenizer)
        # Every rank builds its own data, model and optimizer; a failure on any rank stops all of them here,
        # before DDP's first collective.
        self.dist.agree(self._build_run, train_path, val_path)
        self.step_model = self._wrap_model()

    # -- building --------------------------------------------------------------------------------------------

    def _build_tokenizer(self):
        train_path, val_path = _resolve_paths(self.cfg)
        tokenizer = build_tokenizer(self.cfg, train_path, self.run_dir, resuming=self.resume_from is not None)
        return tokenizer, train_path, val_path

    def _build_run(self, train_path: Path, val_path: Path | None) -> None:
        cfg, device = self.cfg, self.device
        self._check_tokenizer_fits()
        self.eot_id = resolve_eot(cfg, self.tokenizer)
        self.hf_config = read_llama_config(self.init_from).source if self.init_from else None
        self.tokenizer_fingerprint = tokenizer_fingerprint(self.tokenizer)
        # The checkpoint is read and checked (checksums, field types, its tokenizer's content) before any text is
        # tokenized with this run's tokenizer; a plain one to CPU when sharded: each rank moves only its shards.
        resumed = None if self.resume_from is None else read_resume(
            self.resume_from, "cpu" if self.sharded else device, self.tokenizer_fingerprint, self.dist)
        common = dict(tokenizer=self.tokenizer, vocab_size=cfg.vocab_size, cache_dir=cfg.cache_dir,
                      context_length=cfg.context_length, text_field=cfg.text_field, eot_id=self.eot_id)
        if cfg.val_split_fraction > 0:
            self.train_data, self.val_data = load_data(train_path, key="train_data_path", **common,
                                                       val_split=(cfg.val_split_fraction, cfg.seed))
        else:
            self.train_data = load_data(train_path, key="train_data_path", **common)
            self.val_data = load_data(val_path, key="val_data_path", **common) if val_path else None
        loading = self.init_from is not None or self.resume_from is not None
        self.model = self.new_model(initialize=not loading)  # loaded weights need no random draw first
        if self.init_from is not None and self.resume_from is None:  # a resume continues its own weights
            init_from_hf(self.model, self.init_from)  # before sharding: the folder's tensors are whole
            log.info("Initialised the model's weights from %s", self.init_from)
        self.autocast_dtype = self._autocast_dtype()
        if self.sharded:  # before the optimizer: fully_shard replaces the parameters with sharded ones
            compile_blocks = self._compile_enabled()
            log.info("Sharding the model over %d ranks with FSDP2%s", self.dist.world_size,
                     ", each block compiled with torch.compile" if compile_blocks else "")
            shard_model(self.model, self.mesh, self.autocast_dtype, "inductor" if compile_blocks else None)
        self.optimizer = self._build_optimizer()
        self.sampler = self.train_sampler([cfg.seed, self.dist.rank] if self.dist.enabled else cfg.seed)
        self.steps_per_epoch = max(1, len(self.train_data) // self.tokens_per_step)
        self.total_steps = cfg.max_steps or max(1, math.ceil(cfg.num_epochs * self.steps_per_epoch))
        self.num_epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        self.progress = _Progress()
        # build() adds TensorBoard / W&B once the run dir is settled
        self.metrics = MetricsLogger(self.run_dir) if self.dist.is_main else _NoMetrics()
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.autocast_dtype == torch.float16)
        self.last_saved: tuple[Path, int] | None = None  # (checkpoint, step): where a diverged run can go back to
        if resumed is not None:
            load_run(self, resumed)
            del resumed  # its tensors are in the model and optimizer now
            self.last_saved = (self.resume_from, self.progress.step)
            if self.dist.is_main and (dropped := self.metrics.drop_after(self.progress.step)):
                log.info("Dropped %d metrics.jsonl records past step %d (this run repeats those steps)", dropped,
                         self.progress.step)

    def new_model(self, initialize: bool = True) -> TransformerLM:
        """A freshly initialised model of this run's shape, on its device (``initialize=False``: weights left
        uninitialised, for weights about to be loaded)."""
        c = self.cfg
        with contextlib.nullcontext() if initialize else uninitialized():
            model = TransformerLM(**c.model_kwargs(), backend=c.backend, device=self.device,
                                  document_masking=c.document_masking)
        model.set_activation_checkpointing(c.activation_checkpointing, c.activation_checkpointing_every)
        return model

    @property
    def tokens_per_step(self) -> int:
        """Tokens one optimizer step trains on, all ranks together."""
        c = self.cfg
        return c.batch_size * c.context_length * c.gradient_accumulation_steps * self.dist.world_size

    def train_sampler(self, seed) -> BatchSampler:
        """A sampler of training batches for this rank, seeded with ``seed``."""
        return BatchSampler(self.train_data, self.cfg.batch_size, self.cfg.context_length, self.device, seed=seed)

    def _check_tokenizer_fits(self) -> None:
        if self.tokenizer is not None and self.tokenizer.vocab_size > self.cfg.vocab_size:
            raise SetupError(f"the tokenizer has {self.tokenizer.vocab_size} tokens but vocab_size is "
                             f"{self.cfg.vocab_size}; set vocab_size: {self.tokenizer.vocab_size} (or larger)")

    def _build_optimizer(self) -> AdamW:
        # Decay matrices (embeddings, projections), not gains: the nanoGPT / Llama convention.
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        lr = self.cfg.max_learning_rate if self.cfg.use_lr_schedule else self.cfg.learning_rate
        # The optimizer follows the model's resolved backend: `reference` means no Triton anywhere.
        return AdamW(groups, lr=lr, betas=self.cfg.betas, eps=self.cfg.eps, fused=self.model.ops.optimizer == "fused")

    def _autocast_dtype(self) -> torch.dtype | None:
        name = self.cfg.dtype
        if name == "auto":
            dtype, why = auto_autocast_dtype(self.device)
            log.info("dtype auto: %s on %s (%s)", "bfloat16 autocast" if dtype else "float32", self.device.type, why)
            return dtype
        if name == "float32":
            return None
        if self.device.type == "cpu" and name == "float16":
            raise SetupError("dtype: float16 autocast is not supported on CPU; use bfloat16 or float32")
        return getattr(torch, name)

    def _compile_enabled(self) -> bool:
        return self.cfg.compile == "true" or (self.cfg.compile == "auto" and self.device.type == "cuda")

    def _maybe_compile(self) -> torch.nn.Module:
        if not self._compile_enabled():
            return self.model
        log.info("Compiling the model with torch.compile (the first steps are slower)")
        return torch.compile(self.model)

    def _wrap_model(self) -> torch.nn.Module:
        if self.sharded:  # fully_shard wrapped it in place, each block compiled first (torchtitan's order)
            return self.model
        model = self._maybe_compile()
        if not self.dist.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        # Compile, then wrap: torch's "Where to apply torch.compile?" advises compiling the module DDP wraps.
        # No buffer sync before each forward: the only buffers are the RoPE tables, equal on every rank.
        ids = [self.device.index] if self.device.type == "cuda" else None
        params = inspect.signature(DistributedDataParallel).parameters
        no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
        return DistributedDataParallel(model, device_ids=ids, **no_sync)

    def save(self, name: str) -> Path:
        """Write a checkpoint (rank 0); under torchrun every rank must call it, as it gathers the sampler states."""
        path = save_run(self, self.run_dir / name)
        self.last_saved = (path, self.progress.step)
        return path

    # -- the loop ------------------------------------------------------------------------------------------

    def lr_at(self, step: int) -> float:
        c = self.cfg
        if not c.use_lr_schedule:
            return c.learning_rate
        return cosine_lr(step, c.max_learning_rate, c.min_learning_rate, c.warmup_iters, c.cosine_cycle_iters)

    def _autocast(self):
        if self.autocast_dtype is None or self.sharded:  # FSDP's mixed-precision policy casts the parameters
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def train_step(self, step: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        """One optimizer step; returns (mean micro-batch loss, grad norm before clipping, lr)."""
        # 1. learning rate for this step
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # 2. forward/backward over the micro-batches, averaging the loss
        accum = self.cfg.gradient_accumulation_steps
        total = torch.zeros((), device=self.device)
        for i in range(accum):
            x, y = self.sampler()
            with self._no_sync(last=i == accum - 1):  # DDP: all-reduce the gradients once, after the last one
                with self._autocast():
                    loss = self._loss(x, y) / accum
                self.scaler.scale(loss).backward()
            total += loss.detach()
        # 3. clip the global gradient norm
        # With clipping off (0) the norm is still measured, so the logged grad_norm is true (a scale by 1 is exact)
        max_norm = self.cfg.grad_clip_norm if self.cfg.grad_clip_norm > 0 else math.inf
        if self.model.ops.fold_clip and not self.scaler.is_enabled() and not self.sharded:
            # 3+4. the clip folded into the fused AdamW step (one norm pass; no pass scaling the gradients)
            norm = self.optimizer.clip_grad_norm_and_step(max_norm, fold=True)
        else:
            self.scaler.unscale_(self.optimizer)
            params = [p for p in self.model.parameters() if p.grad is not None]
            norm = clip_grad_norm_(params, max_norm)
            # 4. step
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return self.dist.all_reduce_mean(total), norm, lr

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the model on (x, y), taken inside the model's forward (one path for one process,
        DDP and FSDP). ``fused_loss``: from the final hidden states and the LM head weight, a chunk of tokens at a
        time (never the full logits, which at GPT-2's vocabulary are the peak of a step's memory); else full
        logits, then cross-entropy."""
        doc_ids = document_ids(x, self.eot_id) if self.cfg.document_masking else None
        return self.step_model(x, targets=y, fused_loss=self.cfg.fused_loss, doc_ids=doc_ids)

    def _no_sync(self, last: bool):
        if last or not self.dist.enabled:
            return contextlib.nullcontext()
        return accumulating(self.model) if self.sharded else self.step_model.no_sync()

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over ``eval_iters`` validation batches, the same batches at every evaluation.

        Under torchrun rank r takes batches ``r*k .. r*k+k-1`` of the same stream, ``k = max(1, eval_iters //
        world_size)``, and the ranks' means are averaged.
        """
        self.model.eval()
        sampler = BatchSampler(self.val_data, self.cfg.batch_size, self.cfg.context_length, self.device,
                               seed=[self.cfg.seed, 1])
        count = max(1, self.cfg.eval_iters // self.dist.world_size)
        for _ in range(self.dist.rank * count):  # skip the lower ranks' share
            sampler()
        losses = []
        for _ in range(count):
            x, y = sampler()
            with self._autocast():
                losses.append(self._loss(x, y).float())
        self.model.train()
        return self.dist.all_reduce_mean(torch.stack(losses).mean()).item()

    def _validate(self, epoch: int) -> float | None:
        if self.val_data is None:
            return None
        val_loss = self.evaluate()
        self.metrics.log(step=self.progress.step, epoch=epoch, val_loss=val_loss, val_ppl=_perplexity(val_loss))
        if val_loss < self.progress.best_val_loss:
            self.progress.best_val_loss = val_loss
            log.info("New best model saved: %s", self.save("best_model.pt"))
        return val_loss

    def _log_step(self, epoch: int, loss: float, norm: float, lr: float, elapsed: float, tps: float) -> None:
        s = self.progress.step
        in_epoch = (s - 1) % self.steps_per_epoch
        util = self.mfu_at(tps)
        log.info("Epoch %d, Step %d/%d, Loss: %.4f, LR: %.6f, Time: %.2fs, Tokens/s: %s%s", epoch, in_epoch,
                 self.steps_per_epoch, loss, lr, elapsed, f"{tps:,.0f}", "" if util is None else f", MFU: {util:.1%}")
        self.metrics.log(step=s, epoch=epoch, loss=loss, lr=lr, grad_norm=norm, tokens_per_s=tps,
                         tokens_seen=self.progress.tokens_seen, time=elapsed, **({} if util is None else {"mfu": util}))

    def mfu_at(self, tokens_per_s: float) -> float | None:
        """Model FLOPs utilisation of each device at ``tokens_per_s`` (all ranks together); None off a known GPU."""
        peak = device_peak_flops(self.device, self.autocast_dtype)
        return mfu(tokens_per_s / self.dist.world_size, self.model.flops_per_token(), peak)

    def _end_epoch(self, epoch: int) -> None:
        train_loss = self.progress.end_epoch()
        val_loss = self._validate(epoch)
        if val_loss is None:
            log.info("Epoch %d - Train Loss: %.4f", epoch, train_loss)
        else:
            log.info("Epoch %d - Train Loss: %.4f, Val Loss: %.4f, Val PPL: %.2f", epoch, train_loss, val_loss,
                     _perplexity(val_loss))

    def _at_epoch_end(self) -> bool:
        """Whether the step just taken ends an epoch (the last step ends the last, possibly partial, one)."""
        return self.progress.step % self.steps_per_epoch == 0 or self.progress.step == self.total_steps

    def _after_step(self, epoch: int) -> None:
        """Validation, then checkpoints: every checkpoint holds the state after all of this step's work, so a run
        resumed from it repeats nothing and skips nothing."""
        cfg, p = self.cfg, self.progress
        if self._at_epoch_end():
            self._end_epoch(epoch)
        elif cfg.eval_interval and p.step % cfg.eval_interval == 0:
            val = self._validate(epoch)
            if val is not None:
                log.info("Step %d - Val Loss: %.4f, Val PPL: %.2f", p.step, val, _perplexity(val))
        self._save_checkpoints(epoch)

    def _save_checkpoints(self, epoch: int, only_missing: bool = False) -> None:
        """The step and epoch checkpoints due after step ``progress.step``; ``only_missing`` on a resume writes those
        a kill left unwritten (the state is the same, so they equal what the run would have written)."""
        cfg, p = self.cfg, self.progress
        due = [f"checkpoint_step_{p.step}.pt"] if cfg.checkpoint_steps and p.step % cfg.checkpoint_steps == 0 else []
        if self._at_epoch_end() and cfg.checkpoint_interval and epoch % cfg.checkpoint_interval == 0:
            due.append(f"checkpoint_epoch_{epoch}.pt")
        for name in due:
            if only_missing and any((self.run_dir / name).with_suffix(s).exists() for s in (".pt", ".dcp")):
                continue
            log.info("Checkpoint saved: %s", self.save(name))
            if name.startswith("checkpoint_step_") and self.dist.is_main:
                prune_step_checkpoints(self.run_dir, cfg.keep_last, p.step)

    def _finished(self) -> bool:
        """Whether this run's final model is written (else a resume at the last step still has it to write)."""
        return self.resume_from is not None and (self.resume_from.name.startswith("final_model") or
                                                 (self.run_dir / "final_model.pt").is_file())

    def fit(self, signals: StopSignals | None = None) -> dict:
        """Train to ``total_steps``; returns a summary: ``step``, ``train_loss``, ``best_val_loss``, ``final`` (the
        final checkpoint, None if the run had already finished) and ``stopped_by`` (the signal that stopped it at a
        step boundary, with ``interrupted.pt`` saved, else None). A non-finite loss raises :class:`TrainingDiverged`.

        ``signals`` (from :func:`main`) is where SIGINT/SIGTERM are caught; without it fit installs its own.
        """
        own = signals is None
        signals = signals or StopSignals(announce=self.dist.is_main)
        with signals if own else contextlib.nullcontext(), signals.deferred():
            try:
                return self._fit(signals)
            except FloatingPointError as e:
                raise TrainingDiverged(divergence_advice(e, self.cfg, self.last_saved)) from None
            finally:
                self.metrics.close()

    def _fit(self, signals: StopSignals) -> dict:
        cfg, p = self.cfg, self.progress
        summary = {"step": p.step, "train_loss": math.nan, "best_val_loss": p.best_val_loss, "final": None,
                   "stopped_by": None}
        if p.step >= self.total_steps and self._finished():
            log.info("Nothing left to do: this run already finished at step %d of %d (%s). Raise max_steps or "
                     "num_epochs to train it further", p.step, self.total_steps, self.resume_from)
            return summary
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.resume_from is not None and p.step > 0:
            self._save_checkpoints((p.step - 1) // self.steps_per_epoch + 1, only_missing=True)
        log.info("Starting training...")
        log.info("Model created with %s total parameters", f"{self.model.num_parameters():,}")
        log.info("Training for %d steps (%d per epoch of %s tokens), batch %d x %d tokens x %d accumulation%s",
                 self.total_steps, self.steps_per_epoch, f"{len(self.train_data):,}", cfg.batch_size,
                 cfg.context_length, cfg.gradient_accumulation_steps,
                 f" x {self.dist.world_size} ranks" if self.dist.enabled else "")
        tokens_per_step = self.tokens_per_step
        bar = _progress_bar(self.total_steps, p.step, cfg.progress and self.dist.is_main)
        epoch_start = window_start = time.perf_counter()
        window_tokens = 0
        with bar:
            while p.step < self.total_steps:
                epoch = p.step // self.steps_per_epoch + 1
                if p.step % self.steps_per_epoch == 0:
                    log.info("Epoch %d/%d", epoch, self.num_epochs)
                    epoch_start = time.perf_counter()
                loss, norm, lr = self.train_step(p.step)
                summary["train_loss"] = loss.item()
                p.add_step(summary["train_loss"], tokens_per_step)
                window_tokens += tokens_per_step
                bar.update(1)
                bar.set_postfix(loss=f"{summary['train_loss']:.3f}", refresh=False)
                if (p.step - 1) % cfg.log_interval == 0:  # step indices 0, log_interval, ... as the seed logs
                    now = time.perf_counter()
                    self._log_step(epoch, summary["train_loss"], float(norm), lr, now - epoch_start,
                                   window_tokens / max(now - window_start, 1e-9))
                    window_start, window_tokens = now, 0
                self._after_step(epoch)
                if (failed := log_failure()) is not None:  # a full disk under log_file: stop, do not log blind
                    raise failed
                stop = agree_on_stop(signals.signum, self.dist)  # every rank stops after the same step
                if stop is not None and p.step < self.total_steps:
                    save_interrupted(self, signal.Signals(stop).name)
                    return {**summary, "step": p.step, "best_val_loss": p.best_val_loss, "stopped_by": stop}
        final = self.save("final_model.pt")
        log.info("Training finished at step %d; final model saved: %s", p.step, final)
        return {**summary, "step": p.step, "best_val_loss": p.best_val_loss, "final": str(final)}


def _perplexity(loss: float) -> float:
    return math.exp(min(loss, 700.0))  # exp overflows float64 past ~709 nats


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True,
                disable=None if enabled else True, leave=False)


# ---------------------------------------------------------------------------------------------------------------
# Entry point


_KEYS = [f.name for f in dataclasses.fields(TrainConfig)]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line naming the problem, no usage dump; _run turns it into exit code 2
        raise ConfigError(f"{message} (see `{self.prog} --help`)")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(
        prog=command_name("train"), description="Train a Llama-style LM.",
        epilog="SIGINT (Ctrl-C) or SIGTERM finishes the current step, saves interrupted.pt in checkpoint_dir and "
               "exits; continue with --resume auto. Exit codes: 0 trained (or nothing left to do), 1 the loss "
               "became NaN or infinite, 2 bad input (one line says what and how to fix it; also: checkpoint_dir in "
               "use by another run), 130 stopped by SIGINT, 143 stopped by SIGTERM. Config keys (--print-config "
               f"shows their values; the README's config reference explains them): {', '.join(_KEYS)}.")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML (the file "
                        "and --set applied, every default filled in) and exit; a run writes the same to "
                        "checkpoint_dir/config.yaml")
    parser.add_argument("--config", help="YAML config (see configs/); omitted = all defaults")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (overrides the config's device)")
    parser.add_argument("--resume", help="a checkpoint .pt to continue from, or 'auto' for the newest in "
                                         "checkpoint_dir")
    parser.add_argument("--init-from", metavar="DIR", help="start a fresh run from the weights of a Hugging Face "
                                                           "Llama folder (e.g. one written by lmfast.export)")
    parser.add_argument("--set", dest="overrides", action="append", nargs="+", metavar="KEY=VALUE", default=[],
                        help="override config keys, e.g. --set max_steps=100 seed=1 (repeatable)")
    args = parser.parse_args(argv)
    args.overrides = [pair for group in args.overrides for pair in group]  # --set a=1 b=2 --set c=3
    return args


def _config(args: argparse.Namespace) -> TrainConfig:
    """The resolved config: the file, ``--set`` and ``--device``, and the model keys ``--init-from``'s folder fixes."""
    overrides = parse_overrides(args.overrides)
    if args.device:
        overrides["device"] = args.device
    source = read_llama_config(args.init_from) if args.init_from else None
    return load_config(args.config, overrides, fixed=source.train_keys() if source else None,
                       fixed_by=f"--init-from {args.init_from}")


def build(argv: list[str] | None = None) -> Trainer:
    """Parse arguments and build the trainer; raises ConfigError / SetupError / ValueError on bad input.

    Under torchrun this also joins the process group; input every rank shares is checked before that.
    """
    args = _parse_args(argv)
    ctx = from_env()
    cfg = _config(args)
    device = ctx.resolve_device(resolve_device(cfg.device))
    check_run_inputs(cfg, device)  # before the log file, which lives in checkpoint_dir
    if ctx.is_main:
        setup_logging(cfg.log_level, log_file_path(cfg))
        for note in config_notes(cfg):
            log.warning(note)
    else:
        setup_logging("WARNING")
    ctx.init(device)
    # Rank 0 locks the run directory for every rank (they share it) before anything is written there.
    lock = ctx.agree(claim_run_dir if ctx.is_main else lambda _: None, Path(cfg.checkpoint_dir))
    try:
        trainer = Trainer(cfg, device, resume=args.resume, dist=ctx, init_from=args.init_from)

        def settle_run_dir() -> None:  # rank 0 only: the other ranks never write to the run directory
            if trainer.resume_from is None:
                _archive_earlier_run(trainer.run_dir)
            write_run_config(cfg, trainer.run_dir)
            if cfg.tensorboard or cfg.wandb_project:
                trainer.metrics = MetricsLogger(trainer.run_dir, cfg.to_dict(), cfg.tensorboard, cfg.wandb_project)

        ctx.agree(settle_run_dir if ctx.is_main else lambda: None)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    trainer.run_lock = lock
    return trainer


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit code (see ``--help``)."""
    signals = StopSignals()
    signals.ignore_after = argv is None  # the console script or python -m: this process ends with main
    with signals:  # until the process group is shut down: a repeated Ctrl-C there is acknowledged, not a traceback
        try:
            return _run(argv, signals)
        except Interrupted as e:  # outside the training loop: while building, or while sampling after it
            print(f"{e}: stopped outside the training loop; nothing was lost that had been saved", file=sys.stderr)
            return e.exit_code
        finally:
            shutdown()  # the torchrun process group, on success and on error alike


# Bad input and a hostile environment (a read-only or full disk, a directory where a file belongs) end in one line
# on stderr and exit code 2. Anything else is a bug in lmfast and keeps its traceback.
_BAD_INPUT = (ConfigError, SetupError, MissingPackageError, DownloadError, ValueError, OSError, MemoryError,
              torch.OutOfMemoryError)


def _fail(e: BaseException) -> int:
    print(f"error: {' '.join(str(e).split()) or type(e).__name__}", file=sys.stderr)
    return 2


def _allocation_failed(e: RuntimeError) -> MemoryError | None:
    """torch's CPU allocator reports a failed allocation (RAM, ``ulimit -v``) as a plain RuntimeError."""
    text = str(e)
    if "DefaultCPUAllocator" not in text and "can't allocate memory" not in text:
        return None
    why = text[text.find("DefaultCPUAllocator"):].split(". ")[0] if "DefaultCPUAllocator" in text else text[:200]
    return MemoryError(f"out of memory ({why}); lower batch_size, context_length or the model size, or raise the "
                       "memory limit (ulimit -v, the container's)")


def _print_config(argv: list[str] | None) -> int:
    """``--print-config``: the resolved config as YAML on stdout, its notes on stderr; nothing is built."""
    try:
        cfg = _config(_parse_args(argv))
    except _BAD_INPUT as e:
        return _fail(e)
    print(config_yaml(cfg), end="")
    for note in config_notes(cfg):
        print(f"warning: {note}", file=sys.stderr)
    return 0


def _run(argv: list[str] | None, signals: StopSignals) -> int:
    if "--print-config" in (sys.argv[1:] if argv is None else argv):
        return _print_config(argv)
    try:
        trainer = build(argv)
    except PeerFailedError:
        return 2  # the rank that failed printed the error
    except _BAD_INPUT as e:
        return _fail(e)
    except RuntimeError as e:
        if (oom := _allocation_failed(e)) is None:
            raise
        return _fail(oom)
    signals.announce = trainer.dist.is_main
    try:
        summary = trainer.fit(signals)
    except TrainingDiverged as e:
        if trainer.dist.is_main:
            print(f"error: {e}", file=sys.stderr)
        return 1
    except (OSError, torch.OutOfMemoryError) as e:  # e.g. the disk filled up while a checkpoint was written
        return _fail(e)
    except RuntimeError as e:
        if (oom := _allocation_failed(e)) is None:
            raise
        return _fail(oom)
    finally:
        if trainer.run_lock is not None:
            trainer.run_lock.release()
    if (failed := log_failure()) is not None:
        return _fail(failed)
    if summary["stopped_by"] is not None:
        return 128 + summary["stopped_by"]
    if not trainer.dist.is_main or summary["final"] is None:
        return 0
    shutdown()  # rank 0 samples alone; the process group is no longer needed
    if trainer.cfg.sample_prompt is not None and signals.signum is None:
        tok = trainer.tokenizer if trainer.tokenizer is not None else ByteTokenizer()
        model = trainer.model
        if trainer.sharded:  # the shards went with the process group: sample from the gathered final model
            model = trainer.new_model()
            load_model_state(model, read_checkpoint(summary["final"])["model"], summary["final"])
        model.eval()
        try:  # the run's own ops and autocast dtype (bf16 and the fused kernels on CUDA), as training used
            text = generate_text(model, tok, trainer.cfg.sample_prompt, trainer.cfg.sample_tokens,
                                 trainer.cfg.sample_temperature, trainer.cfg.sample_top_p, seed=trainer.cfg.seed,
                                 autocast_dtype=trainer.autocast_dtype)
            log.info("Sample:\n%s", trainer.cfg.sample_prompt + text)
        except ValueError as e:  # an empty prompt, or NaN logits from a diverged run
            log.warning("No sample: %s", e)
    log.info("Sample more with: python -m lmfast.generate --checkpoint %s --prompt \"...\"", summary["final"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
