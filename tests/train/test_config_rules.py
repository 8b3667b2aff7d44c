"""Each bound in the config schema holds at its edge: ``min`` and ``max`` accept the edge value, ``gt`` rejects it,
and values just past an edge are rejected with a message naming the key."""

from __future__ import annotations

import dataclasses

import pytest

from lmfast.train.config import ConfigError, TrainConfig

BOUNDS = [(f.name, rule, f.metadata[rule], str(f.type)) for f in dataclasses.fields(TrainConfig)
          for rule in ("min", "gt", "max") if rule in f.metadata]
# Fields whose edge value another rule forbids (a cross-field check, not the bound itself), set alongside.
COMPANIONS = {"max_learning_rate": dict(min_learning_rate=0.0), "min_learning_rate": dict(max_learning_rate=1.0),
              "warmup_iters": dict(cosine_cycle_iters=10**6), "cosine_cycle_iters": dict(warmup_iters=0),
              "vocab_size": dict(train_data_path="train.npy"),
              "d_model": dict(num_heads=1), "num_heads": dict(d_model=512)}


def _step(kind: str) -> float:
    return 1 if kind.startswith("int") else 1e-9


def test_the_schema_has_bounds_of_every_kind():
    assert {rule for _, rule, _, _ in BOUNDS} == {"min", "gt", "max"} and len(BOUNDS) > 20


@pytest.mark.parametrize("name, rule, edge, kind", BOUNDS, ids=[f"{n}-{r}" for n, r, _, _ in BOUNDS])
def test_each_bound_accepts_or_rejects_its_edge_as_written_and_rejects_just_past_it(name, rule, edge, kind):
    extra = COMPANIONS.get(name, {})
    past = edge - _step(kind) if rule in ("min", "gt") else edge + _step(kind)
    with pytest.raises(ConfigError, match=name):
        TrainConfig(**{name: past}, **extra)
    if rule == "gt":
        with pytest.raises(ConfigError, match=f"{name}: .* must be > "):
            TrainConfig(**{name: edge}, **extra)
    else:
        assert getattr(TrainConfig(**{name: edge}, **extra), name) == edge


@pytest.mark.parametrize("betas", [(0.9, 1.0), (1.0, 0.95), (-0.1, 0.95)])
def test_betas_outside_0_to_1_exclusive_are_rejected(betas):
    with pytest.raises(ConfigError, match="betas"):
        TrainConfig(betas=betas)


def test_betas_at_zero_and_just_below_one_are_accepted():
    assert TrainConfig(betas=(0.0, 0.999999)).betas == (0.0, 0.999999)
