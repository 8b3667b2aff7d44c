"""What the GPU-check stages share: token files to train on without a network, and the real trainer built on them.

The GPU machine has no network, so the corpora of the bundled configs cannot be fetched. ``markov_tokens`` writes a
learnable stand-in: a first-order Markov chain in which each token has four possible successors (probabilities
1/2, 1/4, 1/8, 1/8), so a model's loss falls from ln(vocab) towards the chain's entropy (1.21 nats) and two
implementations can be told apart by their curves, where uniform random tokens leave every curve flat at
ln(vocab). ``build_trainer`` builds :class:`lmfast.train.Trainer` from a bundled config with the given overrides,
exactly as ``python -m lmfast.train --config ... --set ...`` does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SUCCESSOR_PROBS = (0.5, 0.25, 0.125, 0.125)


def markov_entropy() -> float:
    """The entropy (nats per token) of the chain: the loss a perfect model reaches."""
    p = np.array(SUCCESSOR_PROBS)
    return float(-(p * np.log(p)).sum())


def markov_tokens(path: Path, vocab_size: int, n_tokens: int, seed: int = 0) -> Path:
    """Write ``n_tokens`` of the Markov chain over ``vocab_size`` tokens to ``path`` (.npy, uint16 or int32)."""
    rng = np.random.default_rng(seed)
    successors = rng.integers(0, vocab_size, (vocab_size, len(SUCCESSOR_PROBS)))
    picks = rng.choice(len(SUCCESSOR_PROBS), size=n_tokens, p=SUCCESSOR_PROBS)
    tokens = np.empty(n_tokens, dtype=np.int64)
    tokens[0] = 0
    for i in range(1, n_tokens):  # sequential by nature; ~1 s per million tokens
        tokens[i] = successors[tokens[i - 1], picks[i]]
    np.save(path, tokens.astype(np.uint16 if vocab_size <= 65535 else np.int32))
    return path


def trainer_args(config: str, tokens: Path, run_dir: Path, device: str = "cuda", **overrides) -> list[str]:
    """``python -m lmfast.train`` arguments: a bundled config on ``tokens``, quiet, no checkpoints or samples."""
    settings = dict(train_data_path=tokens, val_data_path=tokens, tokenizer="null", sample_prompt="null",
                    checkpoint_dir=run_dir, log_file=run_dir / "training.log", checkpoint_steps=0,
                    checkpoint_interval=0, eval_interval=0, progress="false", gradient_accumulation_steps=1)
    settings.update(overrides)
    args = ["--config", str(ROOT / "configs" / f"{config}.yaml"), "--device", device]
    for key, value in settings.items():
        args += ["--set", f"{key}={value}"]
    return args


def build_trainer(config: str, tokens: Path, run_dir: Path, device: str = "cuda", **overrides):
    """The trainer ``python -m lmfast.train`` would build for these settings (see :func:`trainer_args`)."""
    from lmfast.train import build

    return build(trainer_args(config, tokens, run_dir, device, **overrides))


def config_keys() -> set[str]:
    """The keys the installed lmfast's config accepts (stages measure optional keys such as fused_loss if present)."""
    import dataclasses

    from lmfast.train.config import TrainConfig

    return {f.name for f in dataclasses.fields(TrainConfig)}


DRY_RUN_MODULES = ("lmfast.train.trainer", "lmfast.train.config", "lmfast.model", "lmfast.train.mfu",
                   "lmfast.kernels.rmsnorm", "lmfast.kernels.rope", "lmfast.kernels.attention", "lmfast.kernels.adamw",
                   "lmfast.kernels.linear_cross_entropy")


def dry_run(script: str, *extra: str) -> int:
    """``--dry-run`` of a stage script (``GPU_CHECK_DRY_RUN=1``): import what its run would, run nothing; 0 if all
    import. The stage's lmfast imports happen inside functions, so without this a CPU could not see them break."""
    import importlib

    for name in (*DRY_RUN_MODULES, *extra):
        importlib.import_module(name)
    print(f"{script}: dry run: {len(DRY_RUN_MODULES) + len(extra)} modules import; nothing run")
    return 0
