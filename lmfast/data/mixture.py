"""Several token arrays drawn from by weight: a training or validation set made of sources, one window at a time.

A :class:`TokenMixture` holds each source's 1-D token array and its probability. A batch draws each row's source
with those probabilities, then a window uniformly inside that source (never across two sources), so a source of
weight 3 gives three times the rows of one of weight 1 whatever their sizes. Without weights the probabilities are
the sources' token counts: the same windows as one concatenated array, less the ones across a seam.
"""

from __future__ import annotations

import numpy as np

__all__ = ["TokenMixture"]


class TokenMixture:
    """Token arrays with sampling probabilities; ``len()`` is the total token count (what an epoch is measured by)."""

    ndim = 1

    def __init__(self, arrays: list, weights: list[float] | None = None, names: list[str] | None = None):
        if not arrays:
            raise ValueError("a mixture needs at least one token array")
        weights = [float(len(a)) for a in arrays] if weights is None else [float(w) for w in weights]
        if len(weights) != len(arrays) or not all(np.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"mixture weights must be finite numbers >= 0, one per source, summing to > 0: {weights}")
        self.arrays = list(arrays)
        self.probs = np.asarray(weights, dtype=np.float64) / sum(weights)
        self.names = names or [f"source {i}" for i in range(len(arrays))]
        self.dtype = np.result_type(*[a.dtype for a in arrays])

    def __len__(self) -> int:
        return int(sum(len(a) for a in self.arrays))

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    def check_length(self, context_length: int, check) -> None:
        """Every source with a share of the batches holds at least one window plus its target."""
        for array, p, name in zip(self.arrays, self.probs, self.names, strict=True):
            if p > 0:
                check(array, context_length, name)

    def windows(self, rng: np.random.Generator, batch_size: int, context_length: int) -> np.ndarray:
        """(batch_size, context_length + 1) token windows: a source per row by probability, a start inside it."""
        sources = rng.choice(len(self.arrays), size=batch_size, p=self.probs)
        out = np.empty((batch_size, context_length + 1), dtype=np.int64)
        span = np.arange(context_length + 1, dtype=np.int64)
        for s in np.unique(sources):
            rows = np.flatnonzero(sources == s)
            starts = rng.integers(0, len(self.arrays[s]) - context_length, size=len(rows), dtype=np.int64)
            out[rows] = self.arrays[s][starts[:, None] + span]
        return out
