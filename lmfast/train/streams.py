"""Which saved data-sampler streams each rank draws its training batches from, when the world size changes.

A run's training batches come from *streams*, :class:`lmfast.data.BatchSampler` s: one per rank in a fresh run
(seeded ``[seed, rank]``; ``seed`` for one process). A micro-step trains on the batches of all streams side by
side, in stream order: the *global batch*. A checkpoint keeps every stream's state, in that order.

Resuming keeps the streams, so the batches are exactly those the run that wrote the checkpoint would have drawn,
whenever the global batch is unchanged (``ranks x batch_size == streams x saved batch_size``) and one count divides
the other:

- as many ranks as streams: rank r continues stream r (the usual resume);
- fewer ranks: rank r draws from streams ``r*k .. r*k+k-1`` (``k = streams / ranks``) and puts their batches
  side by side (2 ranks of batch 8 -> 1 process of batch 16);
- more ranks: ``k = ranks / streams`` ranks share stream ``r // k``; each draws that stream's whole batch and keeps
  its own ``batch_size`` rows of it (1 process of batch 16 -> 2 ranks of batch 8).

Otherwise the earlier batches cannot be continued, and :func:`resume_sampler` returns None: the caller
(:func:`lmfast.train.run_state.load_run`) warns and reseeds every rank.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lmfast.data import BatchSampler
from lmfast.train.distributed import DistContext

__all__ = ["RankStreams", "resume_sampler", "saved_streams"]


class RankStreams:
    """One rank's batches from saved streams: several side by side, or its ``rows`` of one it shares with others.

    ``owner``: whether this rank saves the streams (of the ranks sharing one, only the first does).
    """

    def __init__(self, samplers: list[BatchSampler], rows: slice | None = None, owner: bool = True):
        self.samplers, self.rows, self.owner = samplers, rows, owner

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = zip(*(s() for s in self.samplers), strict=True)
        x, y = torch.cat(xs), torch.cat(ys)
        return (x, y) if self.rows is None else (x[self.rows], y[self.rows])

    def stream_states(self) -> list[dict]:
        return [s.state_dict() for s in self.samplers] if self.owner else []


def _stream_states(sampler) -> list[dict]:
    return sampler.stream_states() if isinstance(sampler, RankStreams) else [sampler.state_dict()]


def saved_streams(sampler, dist: DistContext) -> tuple[dict | list[dict] | None, dict]:
    """What a checkpoint stores as ``data`` (every stream's state, in order) and its extra keys; None off rank 0.

    One process with one stream stores its dict as it always did; under torchrun this gathers (every rank calls it).
    """
    mine = _stream_states(sampler)
    if not dist.enabled:
        return (mine[0] if len(mine) == 1 else mine), {}
    gathered = dist.gather_object(mine)
    if gathered is None:
        return None, {}
    return [state for rank_states in gathered for state in rank_states], {"world_size": dist.world_size}


def resume_sampler(data: dict | list[dict], rank: int, world_size: int, batch_size: int,
                   new_sampler: Callable[[int], BatchSampler]) -> BatchSampler | RankStreams | None:
    """This rank's sampler continuing the saved streams (see the module docstring), or None when it cannot.

    ``new_sampler(batch)`` makes a sampler of ``batch`` sequences over the training data; its state is then loaded.
    """
    states = [data] if isinstance(data, dict) else list(data)
    saved_batches = {state.get("batch_size") for state in states}
    if not states or len(saved_batches) != 1 or None in saved_batches:
        return None
    saved_batch, count = saved_batches.pop(), len(states)
    if world_size * batch_size != count * saved_batch:
        return None

    def restore(state: dict) -> BatchSampler:
        sampler = new_sampler(saved_batch)
        sampler.load_state_dict(state)
        return sampler

    if count % world_size == 0:
        k = count // world_size
        samplers = [restore(state) for state in states[rank * k:(rank + 1) * k]]
        return samplers[0] if k == 1 else RankStreams(samplers)
    if world_size % count == 0:
        part = rank % (world_size // count)
        rows = slice(part * batch_size, (part + 1) * batch_size)
        return RankStreams([restore(states[rank // (world_size // count)])], rows, owner=part == 0)
    return None
