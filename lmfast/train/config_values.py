"""The structured values of a training config: data sources and ``rope_scaling``, normalised and checked.

Split from :mod:`lmfast.train.config` (which re-exports :class:`ConfigError`): the schema there names the keys, this
module reads the values that are more than a scalar. Errors name the key, what is allowed and an example.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["ConfigError", "data_sources", "rope_scaling", "DATA_KEYS"]


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says which key and how to fix it."""


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: a value may be a huge number or a long string."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _to_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError
    number = float(value) if isinstance(value, str) else value
    if int(number) != number:
        raise ValueError
    return int(number)


def _to_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError
    number = float(value)
    if not math.isfinite(number):
        raise ValueError
    return number


DATA_KEYS = ("train_data_path", "val_data_path")


def data_sources(name: str, value: Any) -> str | list[dict]:
    """A data path as given, or a list of sources normalised to ``[{"path": str, "weight": float}, ...]``."""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    example = f"{name}: [{{path: a.jsonl, weight: 3}}, {{path: b.parquet, weight: 1}}]"
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"{name}: cannot use {_short(value)}; expected a path or a non-empty list of sources, "
                          f"e.g. {example}")
    sources = []
    for i, item in enumerate(value):
        item = {"path": item} if isinstance(item, str) else item
        if not isinstance(item, dict) or set(item) - {"path", "weight"} or not isinstance(item.get("path"), str) \
                or not item["path"]:
            raise ConfigError(f"{name}[{i}]: cannot use {_short(item)}; each source is a path or {{path: ..., "
                              f"weight: ...}}, e.g. {example}")
        weight = item.get("weight")
        try:
            weight = None if weight is None else _to_float(weight)
        except (TypeError, ValueError, OverflowError):
            weight = -1.0
        if weight is not None and weight < 0:
            raise ConfigError(f"{name}[{i}] ({item['path']}): weight {_short(item.get('weight'))} must be a finite "
                              "number >= 0 (the share of batches drawn from it, relative to the others)")
        sources.append({"path": item["path"], "weight": weight})
    given = [s["weight"] for s in sources if s["weight"] is not None]
    if given and len(given) != len(sources):
        raise ConfigError(f"{name}: give every source a weight, or none (then each is drawn in proportion to its "
                          f"tokens), e.g. {example}")
    if given and sum(given) <= 0:
        raise ConfigError(f"{name}: the mixing weights sum to {sum(given)}; they must sum to a positive number: give "
                          "at least one source a weight > 0")
    return sources


_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def rope_scaling(value: Any) -> dict | None:
    """``rope_scaling`` normalised to ``{"rope_type": "llama3", factor, low_freq_factor, high_freq_factor,
    original_max_position_embeddings}`` (transformers' ``type`` is read as ``rope_type``)."""
    if value is None:
        return None
    allowed = f"rope_scaling: {{type: llama3, {', '.join(f'{k}: ...' for k in _LLAMA3_KEYS)}}} or null"
    if not isinstance(value, dict):
        raise ConfigError(f"rope_scaling: cannot use {_short(value)}; expected {allowed}")
    kind = value.get("rope_type", value.get("type"))
    if kind != "llama3":
        raise ConfigError(f"rope_scaling: type {_short(kind)} is not implemented; lmfast implements llama3 "
                          f"(Llama-3.1's frequency scaling): {allowed}")
    rest = {k: v for k, v in value.items() if k not in ("rope_type", "type")}
    missing, unknown = [k for k in _LLAMA3_KEYS if k not in rest], sorted(set(rest) - set(_LLAMA3_KEYS), key=str)
    if missing or unknown:
        what = "; ".join(p for p in (f"missing {', '.join(missing)}" if missing else "",
                                     f"unknown {', '.join(map(str, unknown))}" if unknown else "") if p)
        raise ConfigError(f"rope_scaling of type llama3: {what}; write {allowed}")
    try:
        out = {"rope_type": "llama3", **{k: _to_float(rest[k]) for k in _LLAMA3_KEYS[:3]},
               "original_max_position_embeddings": _to_int(rest["original_max_position_embeddings"])}
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"rope_scaling: the llama3 values must be numbers, got {_short(rest)}") from None
    if out["factor"] < 1 or out["original_max_position_embeddings"] < 1 or \
            not 0 < out["low_freq_factor"] < out["high_freq_factor"]:
        raise ConfigError(f"rope_scaling: need factor >= 1, 0 < low_freq_factor < high_freq_factor and "
                          f"original_max_position_embeddings >= 1, got {_short(rest)}")
    return out
