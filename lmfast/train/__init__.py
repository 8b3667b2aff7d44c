"""The train room: the trainer and everything a run owns. ``python -m lmfast.train`` runs :func:`main`.

Owns the trainer's loop and command line (``trainer.py``), the YAML schema (``config.py``; its data sources and
rope_scaling values in ``config_values.py``), building a run: device, logging, tokenizer, paths, input checks
(``run_setup.py``), what a training checkpoint holds, resuming from one and rebuilding its model (``run_state.py``),
checkpoint files (``checkpoint.py``, also ``lmfast.checkpoint``), the run lock, stop signals and clean-up
(``lifecycle.py``), torchrun / DDP (``distributed.py``), FSDP2 and sharded checkpoints (``sharded.py``), sampler streams
across world sizes (``streams.py``), the will-it-fit estimate (``memory.py``), the optimizer and schedule (``optim.py``,
also ``lmfast.optim``), metrics sinks (``metrics.py``) and MFU (``mfu.py``).

May import the model, data and tokenizer rooms; nothing above it (the command lines) imports back into it. The
trainer's names below load on first use, so importing one light module of this room (``config``, ``optim``) does
not import the whole trainer.
"""

__all__ = ["main", "build", "Trainer", "TrainingDiverged"]


def __getattr__(name: str):
    if name in __all__:
        from lmfast.train import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'lmfast.train' has no attribute {name!r}")
