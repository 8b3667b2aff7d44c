"""Token data → training batches: CS336's ``get_batch`` and a checkpointable :class:`BatchSampler`.

Batches follow CS336's ``get_batch``: starts drawn uniformly from ``[0, len - context_length)``, ``x`` the
window and ``y`` the same window shifted by one, both int64 ``(batch_size, context_length)``.
:class:`BatchSampler` owns its RNG so the position in the random stream goes into checkpoints.

Getting the tokens is the job of two private modules whose public names are re-exported here:
``_token_files`` memory-maps and checks ``.npy`` / ``.npz`` / ``.bin`` token files (``open_tokens``), and
``_text_tokens`` tokenizes a ``.txt`` once into a cached token file (``prepare_tokens``, ``load_dataset``).
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import torch

from lmfast.data.mixture import TokenMixture
from lmfast.data.text_tokens import load_dataset, prepare_tokens, tokenizer_fingerprint
from lmfast.data.token_files import TEXT_SUFFIXES, TOKEN_SUFFIXES, check_length, check_vocab, open_tokens

__all__ = [
    "TOKEN_SUFFIXES",
    "TEXT_SUFFIXES",
    "BatchSampler",
    "get_batch",
    "open_tokens",
    "check_length",
    "check_vocab",
    "prepare_tokens",
    "tokenizer_fingerprint",
    "load_dataset",
]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------------
# Sampling


def _check_batch_args(dataset, batch_size: int, context_length: int) -> None:
    if isinstance(dataset, TokenMixture):
        if batch_size < 1 or context_length < 1:
            raise ValueError(f"batch_size and context_length must be >= 1, got {batch_size} and {context_length}")
        dataset.check_length(context_length, check_length)
        return
    if getattr(dataset, "ndim", None) != 1:
        raise ValueError(
            f"dataset must be a 1-D array of token ids, got {type(dataset).__name__} with shape "
            f"{getattr(dataset, 'shape', None)}; open token files with lmfast.data.open_tokens"
        )
    if batch_size < 1 or context_length < 1:
        raise ValueError(f"batch_size and context_length must be >= 1, got {batch_size} and {context_length}")
    check_length(dataset, context_length, "dataset")


def _sample_starts(n: int, context_length: int, batch_size: int, generator) -> np.ndarray:
    """``batch_size`` window starts, uniform over ``[0, n - context_length)``, as int64."""
    high = n - context_length
    if generator is None:
        return np.random.randint(0, high, size=batch_size).astype(np.int64)
    if isinstance(generator, np.random.Generator):
        return generator.integers(0, high, size=batch_size, dtype=np.int64)
    if isinstance(generator, torch.Generator):
        return torch.randint(0, high, (batch_size,), generator=generator, dtype=torch.int64).numpy()
    raise TypeError(f"generator must be a numpy Generator, a torch.Generator or None, got {type(generator).__name__}")


def _gather(
    dataset, starts: np.ndarray, context_length: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """One fancy-index read of every window, one host → device copy, then x / y as contiguous slices."""
    idx = starts[:, None] + np.arange(context_length + 1, dtype=np.int64)
    return _to_device(dataset[idx], device)


def _to_device(windows: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if device.type == "cuda":
        # Pinned staging lets the copy run asynchronously; numpy writes the gathered ids straight into it.
        host = torch.empty(windows.shape, dtype=torch.int64, pin_memory=True)
        host.numpy()[...] = windows
        both = host.to(device, non_blocking=True)
    else:
        both = torch.from_numpy(np.asarray(windows, dtype=np.int64)).to(device)
    return both[:, :-1].contiguous(), both[:, 1:].contiguous()


def get_batch(
    dataset,
    batch_size: int,
    context_length: int,
    device: str | torch.device,
    generator: np.random.Generator | torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``batch_size`` random windows from a 1-D token array (CS336's ``get_batch``).

    Returns ``x, y``: int64 tensors ``(batch_size, context_length)`` on ``device`` with ``y[:, i] = x[:, i+1]``
    in the underlying data. ``generator`` makes the draw reproducible; ``None`` uses numpy's global RNG
    (``np.random.seed`` controls it), as the CS336 reference does.

    >>> x, y = get_batch(np.arange(100), 4, 8, "cpu")
    >>> bool((x[:, 1:] == y[:, :-1]).all())
    True
    """
    _check_batch_args(dataset, batch_size, context_length)
    if isinstance(dataset, TokenMixture):
        rng = generator if isinstance(generator, np.random.Generator) else np.random.default_rng(
            None if generator is None else int(torch.randint(0, 2**62, (1,), generator=generator)))
        return _to_device(dataset.windows(rng, batch_size, context_length), torch.device(device))
    starts = _sample_starts(len(dataset), context_length, batch_size, generator)
    return _gather(dataset, starts, context_length, torch.device(device))


class BatchSampler:
    """Random training batches from one token array, with an RNG whose state is saved in checkpoints.

    ``seed`` is anything ``np.random.default_rng`` takes; give each data-parallel rank its own stream with
    ``seed=[base_seed, rank]``. Call the sampler (or ``next()`` it) for an ``(x, y)`` pair. Restoring
    ``state_dict()`` into a sampler over the same data continues with exactly the batches the saved one
    would have drawn next. The state holds only ints, strings and dicts, so ``torch.load(weights_only=True)``
    reads it back.
    """

    def __init__(self, dataset, batch_size: int, context_length: int, device: str | torch.device = "cpu", seed=None):
        _check_batch_args(dataset, batch_size, context_length)
        self.dataset = dataset
        self.batch_size = batch_size
        self.context_length = context_length
        self.device = torch.device(device)
        self.rng = np.random.default_rng(seed)
        self.batches_drawn = 0

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.batches_drawn += 1
        if isinstance(self.dataset, TokenMixture):
            return _to_device(self.dataset.windows(self.rng, self.batch_size, self.context_length), self.device)
        starts = _sample_starts(len(self.dataset), self.context_length, self.batch_size, self.rng)
        return _gather(self.dataset, starts, self.context_length, self.device)

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self()

    def state_dict(self) -> dict:
        """The RNG state and the number of batches drawn so far (plus the shape, for a warning on mismatch)."""
        return {
            "rng": copy.deepcopy(self.rng.bit_generator.state),
            "batches_drawn": self.batches_drawn,
            "batch_size": self.batch_size,
            "context_length": self.context_length,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (from :meth:`state_dict`)."""
        missing = {"rng", "batches_drawn"} - set(state)
        if missing:
            raise ValueError(f"sampler state lacks {sorted(missing)}; pass the dict BatchSampler.state_dict() returned")
        rng_state = state["rng"]
        name = rng_state.get("bit_generator") if isinstance(rng_state, dict) else None
        bit_generator_cls = getattr(np.random, name, None) if isinstance(name, str) else None
        if not (isinstance(bit_generator_cls, type) and issubclass(bit_generator_cls, np.random.BitGenerator)):
            raise ValueError(
                f"sampler state names an unknown numpy bit generator {name!r}; it must come from state_dict()"
            )
        if (state.get("batch_size"), state.get("context_length")) != (self.batch_size, self.context_length):
            logger.warning(
                "resuming the data sampler with batch_size=%s, context_length=%s (saved: %s, %s); the random stream "
                "continues but the batches differ from the uninterrupted run",
                self.batch_size,
                self.context_length,
                state.get("batch_size"),
                state.get("context_length"),
            )
        bit_generator = bit_generator_cls()
        bit_generator.state = copy.deepcopy(rng_state)
        self.rng = np.random.Generator(bit_generator)
        self.batches_drawn = int(state["batches_drawn"])

