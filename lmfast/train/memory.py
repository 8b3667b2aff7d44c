"""How much memory a training run needs, and how much the device has: a run that cannot fit is refused up front.

Without this check a config with ``num_layers: 100000000`` builds layers until the kernel kills the process, and a
huge ``batch_size`` fails on its first step with an allocator dump. The estimate counts, in bytes:

- parameters ``P`` of the model (embedding, blocks, final norm, LM head), each kept in fp32 with its gradient and
  AdamW's two moments: ``16 P``, plus a 2-byte copy of each weight under bf16/fp16 autocast;
- activations autograd keeps for the backward pass, per token of a micro-batch
  ``num_layers * (11 d_model + 4.5 d_ff) + 3 d_model`` values (2 bytes each under autocast, else 4); of each layer's
  11 d_model, 3 go with the query/attention width (heads · head_dim) and 3 with the key/value width (kv_heads ·
  head_dim), so grouped-query attention keeps less. A block under activation checkpointing keeps only its input
  (d_model values) and recomputes the rest in backward, where one block's activations exist at a time;
- ``document_masking``: the boolean (batch, 1, seq, seq) mask of each attention call, one byte an element;
- the loss: unfused, ``3 vocab_size`` fp32 values per token for the logits, their log-softmax and their gradient;
  fused (``fused_loss: true``, the default), at most three fp32 buffers of one chunk of logits
  (:func:`lmfast.model.functional.lce_chunk_rows` tokens by ``vocab_size``) plus the gradients of the hidden states and
  the LM head it makes in the forward, so a bigger batch adds no logits;
- the batch itself: int64 inputs, targets and gather indices.

The per-token coefficients were read off autograd's saved tensors for the reference model on CPU (``torch.autograd.
graph.saved_tensors_hooks``: 10.6 d_model + 4.4 d_ff per layer, 1.1 vocab_size for the saved logits). Against the
peak RSS of a real step (model, AdamW, forward, backward, optimizer step) it reads 1.1-1.5x high on the shapes
tried (d_model 128-512, 2-8 layers, vocab 256-32768, 256-8192 tokens per batch); ``tests/train/test_bad_input.py``
holds it within a factor of two. Attention adds no ``context_length ** 2`` term: the model calls PyTorch's fused
SDPA, which never stores the score matrix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from lmfast.model.functional import lce_chunk_rows

__all__ = ["MemoryEstimate", "estimate_training_memory", "available_memory", "format_bytes"]

_GIB = 1 << 30


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a training run needs, by part."""

    parameters: int  # parameter count, not bytes
    weights_and_optimizer: int
    activations: int
    batch: int

    @property
    def total(self) -> int:
        return self.weights_and_optimizer + self.activations + self.batch


def count_parameters(vocab_size: int, d_model: int, num_layers: int, d_ff: int, num_heads: int | None = None,
                     num_kv_heads: int | None = None, head_dim: int | None = None, tie_embeddings: bool = False,
                     attention_bias: bool = False) -> int:
    """Parameters of :class:`lmfast.model.TransformerLM`: embedding and head (one matrix when tied), the q/k/v/output
    matrices (k and v of ``num_kv_heads`` heads; biases on q/k/v when asked), 3 SwiGLU matrices and 2 RMSNorm gains
    per block, one final gain."""
    q_width, kv_width = _widths(d_model, num_heads, num_kv_heads, head_dim)
    attention = 2 * d_model * q_width + 2 * d_model * kv_width + ((q_width + 2 * kv_width) if attention_bias else 0)
    per_layer = attention + 3 * d_model * d_ff + 2 * d_model
    return (1 if tie_embeddings else 2) * vocab_size * d_model + num_layers * per_layer + d_model


def _widths(d_model: int, num_heads: int | None, num_kv_heads: int | None, head_dim: int | None) -> tuple[int, int]:
    """(heads · head_dim, kv_heads · head_dim): d_model each for plain multi-head attention."""
    if num_heads is None:
        return d_model, d_model
    width = head_dim or d_model // num_heads
    return num_heads * width, (num_kv_heads or num_heads) * width


def _checkpointed(cfg) -> int:
    """How many blocks activation checkpointing recomputes."""
    mode = getattr(cfg, "activation_checkpointing", "none")
    every = {"none": 0, "full": 1, "selective": getattr(cfg, "activation_checkpointing_every", 1)}[mode]
    return len(range(0, cfg.num_layers, every)) if every else 0


def estimate_training_memory(cfg, autocast: bool = False, shards: int = 1) -> MemoryEstimate:
    """Bytes one process needs to train ``cfg`` (a :class:`lmfast.train.config.TrainConfig`); exact Python ints, so
    absurd sizes give absurd numbers, never an overflow. ``autocast``: bf16/fp16 activations. ``shards``: the ranks FSDP
    splits weights, gradients and optimizer state over (1 without it)."""
    heads = dict(num_heads=cfg.num_heads, num_kv_heads=getattr(cfg, "num_kv_heads", None),
                 head_dim=getattr(cfg, "head_dim", None))
    p = count_parameters(cfg.vocab_size, cfg.d_model, cfg.num_layers, cfg.d_ff, **heads,
                         tie_embeddings=getattr(cfg, "tie_embeddings", False),
                         attention_bias=getattr(cfg, "attention_bias", False))
    weights = (16 * p + (2 * p if autocast else 0)) // max(1, shards)
    tokens = cfg.batch_size * cfg.context_length
    act_bytes = 2 if autocast else 4
    q_width, kv_width = _widths(cfg.d_model, **heads)
    layer = 5 * cfg.d_model + 3 * q_width + 3 * kv_width + 9 * cfg.d_ff // 2
    kept = _checkpointed(cfg)
    # a checkpointed block keeps its input; backward recomputes one block at a time
    per_token = act_bytes * ((cfg.num_layers - kept) * layer + kept * cfg.d_model + (layer if kept else 0) +
                             3 * cfg.d_model)
    mask = cfg.batch_size * cfg.context_length ** 2 if getattr(cfg, "document_masking", False) else 0
    batch = 3 * 8 * cfg.batch_size * (cfg.context_length + 1)
    return MemoryEstimate(parameters=p, weights_and_optimizer=weights,
                          activations=tokens * per_token + _loss_bytes(cfg, tokens) + mask, batch=batch)


def _loss_bytes(cfg, tokens: int) -> int:
    """fp32 bytes the loss holds at its peak for ``tokens`` tokens of one micro-batch (see the module docstring)."""
    if not cfg.fused_loss:
        return 4 * 3 * cfg.vocab_size * tokens
    return 4 * (3 * lce_chunk_rows(tokens, cfg.vocab_size) * cfg.vocab_size + (tokens + cfg.vocab_size) * cfg.d_model)


def available_memory(device: torch.device) -> int | None:
    """Bytes free for this process on ``device``, or None when it cannot be told.

    CUDA: ``torch.cuda.mem_get_info``. CPU and Apple MPS (unified memory): the smaller of the kernel's
    ``MemAvailable`` and what the cgroup (a container's memory limit) still allows.
    """
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    found = [n for n in (_meminfo_available(), _cgroup_headroom()) if n is not None]
    return min(found) if found else None


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # macOS and other Unixes: free pages (an underestimate of what could be had, so only a fallback)
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_headroom() -> int | None:
    """Limit minus usage of this process's cgroup (v2, else v1); None when there is no limit."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or not limit.isdigit() or int(limit) >= 1 << 60:  # v1 writes "no limit" as ~2**63
            return None
        return max(0, int(limit) - usage)
    return None


def format_bytes(n: int) -> str:
    """``n`` bytes in GiB or MiB, readable at any size (``1.2e+21 GiB`` for an absurd config)."""
    if n >= 1 << 50:
        return f"{n / _GIB:.3g} GiB"
    if n >= _GIB:
        return f"{n / _GIB:.1f} GiB"
    return f"{n / (1 << 20):.0f} MiB"
