"""The Llama-style Transformer LM of CS336: pre-norm blocks of RMSNorm, causal RoPE attention and SwiGLU.

State-dict names follow the CS336 layout (``layers.{i}.attn.q_proj.weight``, ``layers.{i}.ffn.w1.weight``,
``ln_final.weight``, ``lm_head.weight`` ...) so weights from that ecosystem load as they are. Ops that have a
fused Triton twin (RMSNorm, RoPE, attention) go through ``self.ops``, resolved once at construction
(see :mod:`lmfast.model.ops`).
"""

from __future__ import annotations

import contextlib
import math
import threading
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from lmfast.model import functional, hf
from lmfast.model.functional import scaled_dot_product_attention
from lmfast.model.ops import REFERENCE, Ops, fused_feature_gaps, get_ops

__all__ = [
    "uninitialized",
    "Linear",
    "Embedding",
    "RMSNorm",
    "SwiGLU",
    "RotaryEmbedding",
    "scaled_dot_product_attention",
    "MultiHeadSelfAttention",
    "TransformerBlock",
    "TransformerLM",
    "KVCache",
]


_skip_init = threading.local()


@contextlib.contextmanager
def uninitialized():
    """Build layers without drawing their random initial weights (``torch.empty``), for weights about to be loaded:
    a Hugging Face folder or a checkpoint. trunc_normal_ over a 135M-parameter model takes tens of seconds on CPU."""
    before = getattr(_skip_init, "on", False)
    _skip_init.on = True
    try:
        yield
    finally:
        _skip_init.on = before


def _init_on() -> bool:
    return not getattr(_skip_init, "on", False)


class Linear(nn.Module):
    """``y = x W^T`` (+ b with ``bias=True``); W: (out_features, in_features), truncated normal, σ² = 2 / (d_in +
    d_out), ±3σ; b zeros. Without a bias the state_dict holds ``weight`` alone."""

    def __init__(self, in_features: int, out_features: int, device=None, dtype=None, bias: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        std = math.sqrt(2.0 / (in_features + out_features))
        if _init_on():
            nn.init.trunc_normal_(self.weight, mean=0.0, std=std, a=-3 * std, b=3 * std)
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Embedding(nn.Module):
    """Lookup table (num_embeddings, embedding_dim), truncated normal N(0, 1) clipped at ±3."""

    def __init__(self, num_embeddings: int, embedding_dim: int, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim, device=device, dtype=dtype))
        if _init_on():
            nn.init.trunc_normal_(self.weight, mean=0.0, std=1.0, a=-3.0, b=3.0)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(token_ids, self.weight)


class RMSNorm(nn.Module):
    """RMSNorm over the last dim with a learned gain (init 1), computed in fp32, returned in the input dtype."""

    def __init__(self, d_model: int, eps: float = 1e-5, device=None, dtype=None, ops: Ops = REFERENCE):
        super().__init__()
        self.eps, self.ops = eps, ops
        self.weight = nn.Parameter(torch.ones(d_model, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ops.rmsnorm(x, self.weight, self.eps)
        if y.dtype == torch.float32 and torch.is_autocast_enabled(y.device.type):
            # Every linear reading y would cast it to the autocast dtype on its own (q, k and v: three times, w1 and
            # w3 twice, forward and backward); one cast here instead, the same values.
            return y.to(torch.get_autocast_dtype(y.device.type))
        return y

    def add_norm(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(h, self(h))`` for ``h = residual + x``: the residual add and this norm as one op (``ops.add_rmsnorm``,
        one pass on the fused backend), y already in the autocast dtype its linears take."""
        device = x.device.type
        h_dtype = torch.promote_types(x.dtype, residual.dtype)
        out_dtype = torch.get_autocast_dtype(device) if h_dtype == torch.float32 and torch.is_autocast_enabled(
            device) else None
        return self.ops.add_rmsnorm(x, residual, self.weight, self.eps, out_dtype)


class SwiGLU(nn.Module):
    """``w2(silu(w1 x) * w3 x)``: w1, w3: d_model → d_ff, w2: d_ff → d_model."""

    def __init__(self, d_model: int, d_ff: int, device=None, dtype=None):
        super().__init__()
        self.w1 = Linear(d_model, d_ff, device=device, dtype=dtype)
        self.w2 = Linear(d_ff, d_model, device=device, dtype=dtype)
        self.w3 = Linear(d_model, d_ff, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class RotaryEmbedding(nn.Module):
    """RoPE over adjacent pairs of the last dim; cos/sin tables precomputed for ``max_seq_len`` positions.

    ``forward(x, token_positions)``: x (..., seq, d_k), token_positions (..., seq) integer → rotated x.
    The tables are non-persistent buffers: they never appear in the state_dict.
    """

    def __init__(self, theta: float, d_k: int, max_seq_len: int, device=None, scaling: dict | None = None):
        super().__init__()
        if d_k % 2 != 0:
            raise ValueError(f"RoPE needs an even head dim (d_model / num_heads), got d_k={d_k}")
        self.theta, self.d_k, self.max_seq_len, self.scaling = theta, d_k, max_seq_len, scaling
        cos, sin = functional.rope_cos_sin(theta, d_k, torch.arange(max_seq_len, device=device), scaling)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def cos_sin(self, token_positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The (…, seq, d_k // 2) fp32 tables at ``token_positions``."""
        return self.cos[token_positions], self.sin[token_positions]

    def forward(self, x: torch.Tensor, token_positions: torch.Tensor) -> torch.Tensor:
        cos, sin = self.cos_sin(token_positions)
        return functional.apply_rope(x, cos, sin)


@dataclass
class KVCache:
    """Keys and values of past positions for one attention layer: (batch, kv_heads, max_len, d_k) each."""

    k: torch.Tensor
    v: torch.Tensor
    length: int = 0

    @classmethod
    def empty(cls, batch: int, heads: int, max_len: int, d_k: int, device=None, dtype=None) -> KVCache:
        shape = (batch, heads, max_len, d_k)
        return cls(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + k.shape[-2]
        if end > self.k.shape[-2]:
            raise ValueError(f"KV cache holds {self.k.shape[-2]} positions; appending reaches {end}")
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def reset(self) -> None:
        """Forget every position (the memory is kept): the next append is a prefill from position 0."""
        self.length = 0


class MultiHeadSelfAttention(nn.Module):
    """Causal multi-head self-attention; RoPE on queries and keys when ``theta`` is given.

    ``forward(x, token_positions=None, cache=None, doc_ids=None)``: x (batch, seq, d_model) → (batch, seq, d_model).
    Positions default to ``0..seq-1``. ``num_kv_heads`` below ``num_heads`` is grouped-query attention (1:
    multi-query): k_proj and v_proj make ``num_kv_heads`` heads, each read by ``num_heads / num_kv_heads`` query
    heads, and a :class:`KVCache` stores only those. ``head_dim`` defaults to ``d_model / num_heads``; ``bias`` puts
    biases on q/k/v (Qwen2). ``doc_ids`` (batch, seq) keeps attention inside documents (see
    :func:`lmfast.model.functional.causal_attention`). With a cache, new queries attend to all cached keys plus
    the causal part of the new ones.
    """

    def __init__(self, d_model: int, num_heads: int, max_seq_len: int | None = None, theta: float | None = None,
                 device=None, dtype=None, ops: Ops = REFERENCE, *, num_kv_heads: int | None = None,
                 head_dim: int | None = None, bias: bool = False, rope_scaling: dict | None = None):
        super().__init__()
        num_kv_heads = num_kv_heads or num_heads
        if head_dim is None and d_model % num_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be divisible by num_kv_heads ({num_kv_heads})")
        self.d_model, self.num_heads, self.num_kv_heads, self.ops = d_model, num_heads, num_kv_heads, ops
        self.d_k = head_dim or d_model // num_heads
        kw = dict(device=device, dtype=dtype)
        self.q_proj = Linear(d_model, num_heads * self.d_k, bias=bias, **kw)
        self.k_proj = Linear(d_model, num_kv_heads * self.d_k, bias=bias, **kw)
        self.v_proj = Linear(d_model, num_kv_heads * self.d_k, bias=bias, **kw)
        self.output_proj = Linear(num_heads * self.d_k, d_model, **kw)
        self.rope = None
        if theta is not None:
            if max_seq_len is None:
                raise ValueError("MultiHeadSelfAttention with RoPE (theta given) needs max_seq_len")
            self.rope = RotaryEmbedding(theta, self.d_k, max_seq_len, device=device, scaling=rope_scaling)

    def _heads(self, t: torch.Tensor, heads: int) -> torch.Tensor:
        b, s, _ = t.shape
        return t.view(b, s, heads, self.d_k).transpose(1, 2)

    def _cos_sin(self, token_positions: torch.Tensor | None, start: int, s: int):
        if token_positions is not None:
            return self.rope.cos_sin(token_positions)
        if start + s > self.rope.max_seq_len:  # consecutive positions: a slice of the tables, no gather
            raise ValueError(f"positions up to {start + s} exceed the RoPE tables' max_seq_len="
                             f"{self.rope.max_seq_len}; build the layer with a larger max_seq_len")
        return self.rope.cos[start:start + s], self.rope.sin[start:start + s]

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor | None,
               sin: torch.Tensor | None, doc_ids: torch.Tensor | None) -> torch.Tensor:
        """RoPE, then causal attention (within documents when ``doc_ids`` is given), through ``self.ops``: one
        ``ops.rope_attention`` (RoPE inside the attention kernel on the fused backend). q (batch, heads, seq, d_k);
        k, v (batch, kv_heads, seq, d_k); cos/sin None when the layer has no RoPE."""
        if cos is None:
            return self.ops.attention(q, k, v, None, doc_ids=doc_ids)
        # RoPE inside attention: one kernel on the fused backend (q, k read once, no rotated copy written)
        return self.ops.rope_attention(q, k, v, cos, sin, None, doc_ids=doc_ids)

    def forward(self, x: torch.Tensor, token_positions: torch.Tensor | None = None,
                cache: KVCache | None = None, doc_ids: torch.Tensor | None = None) -> torch.Tensor:
        b, s, _ = x.shape
        q = self._heads(self.q_proj(x), self.num_heads)
        k, v = self._heads(self.k_proj(x), self.num_kv_heads), self._heads(self.v_proj(x), self.num_kv_heads)
        cos, sin = (None, None) if self.rope is None else \
            self._cos_sin(token_positions, cache.length if cache is not None else 0, s)
        if cache is None:
            out = self.attend(q, k, v, cos, sin, doc_ids)
        else:
            out = self._attend_cached(q, k, v, cos, sin, cache)
        return self.output_proj(out.transpose(1, 2).reshape(b, s, self.num_heads * self.d_k))

    def _attend_cached(self, q, k, v, cos, sin, cache: KVCache) -> torch.Tensor:
        s = q.shape[-2]
        if cache.length == 0 and s > 0:  # prefill from an empty cache: plain causal attention, the fused kernel on CUDA
            if cos is not None:
                q, k = self.ops.rope(q, k, cos, sin)
            cache.append(k, v)
            return self.ops.attention(q, k, v, None)
        if cos is not None:
            q, k = self.ops.rope(q, k, cos, sin)
        gqa = {"enable_gqa": True} if self.num_kv_heads != self.num_heads else {}
        past = cache.length
        k, v = cache.append(k, v)
        if s == 1:
            # one new query sees every cached key, so no mask is needed; SDPA without attn_mask can take its
            # flash / memory-efficient kernels, which an explicit mask rules out
            return F.scaled_dot_product_attention(q, k, v, **gqa)
        # query i (absolute position past + i) sees keys 0 .. past + i
        mask = torch.ones(s, past + s, dtype=torch.bool, device=q.device).tril(diagonal=past)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **gqa)


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + attn(ln1(x))``, then ``h + ffn(ln2(h))``. ``attn_kw`` go to
    :class:`MultiHeadSelfAttention` (num_kv_heads, head_dim, bias, rope_scaling); ``eps`` to both norms."""

    def __init__(self, d_model: int, num_heads: int, d_ff: int, max_seq_len: int, theta: float,
                 device=None, dtype=None, ops: Ops = REFERENCE, eps: float = 1e-5, **attn_kw):
        super().__init__()
        self.ln1 = RMSNorm(d_model, eps, device=device, dtype=dtype, ops=ops)
        self.attn = MultiHeadSelfAttention(d_model, num_heads, max_seq_len, theta, device=device, dtype=dtype, ops=ops,
                                           **attn_kw)
        self.ln2 = RMSNorm(d_model, eps, device=device, dtype=dtype, ops=ops)
        self.ffn = SwiGLU(d_model, d_ff, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, token_positions: torch.Tensor | None = None,
                cache: KVCache | None = None, doc_ids: torch.Tensor | None = None) -> torch.Tensor:
        h, y = self.ln2.add_norm(self.attn(self.ln1(x), token_positions, cache, doc_ids), x)  # h = x + attn(ln1(x))
        return h + self.ffn(y)


class TransformerLM(nn.Module):
    """Token embedding → ``num_layers`` pre-norm blocks → final RMSNorm → LM head.

    ``forward(in_indices)``: (batch, seq) int64 token ids, seq ≤ context_length → logits (batch, seq, vocab);
    ``forward(in_indices, targets=...)`` → the mean cross-entropy, the training loss; ``doc_ids`` (batch, seq) keeps
    attention inside documents and restarts RoPE positions at each (:func:`lmfast.model.functional.document_ids`).
    ``backend`` picks the ops (``auto`` | ``reference`` | ``fused``; see :mod:`lmfast.model.ops`).
    Beyond CS336's arguments, each default keeping CS336's model: ``num_kv_heads`` (grouped-query attention),
    ``head_dim`` (default d_model / num_heads), ``tie_embeddings`` (the head is the embedding matrix, one tensor under
    both names), ``rms_norm_eps``, ``rope_scaling`` (Llama-3.1's ``llama3``), ``attention_bias`` (q/k/v biases, as
    Qwen2); ``document_masking`` only tells the ops' log line that training will pass ``doc_ids``.

    >>> model = TransformerLM(vocab_size=256, context_length=32, d_model=64, num_layers=2, num_heads=4,
    ...                       d_ff=172, rope_theta=10000.0, backend="reference")
    >>> model(torch.zeros(1, 8, dtype=torch.long)).shape
    torch.Size([1, 8, 256])
    """

    def __init__(self, vocab_size: int, context_length: int, d_model: int, num_layers: int, num_heads: int,
                 d_ff: int, rope_theta: float, backend: str = "auto", device=None, dtype=None, *,
                 num_kv_heads: int | None = None, head_dim: int | None = None, tie_embeddings: bool = False,
                 rms_norm_eps: float = 1e-5, rope_scaling: dict | None = None, attention_bias: bool = False,
                 document_masking: bool = False):
        super().__init__()
        _check_heads(d_model, num_heads, num_kv_heads, head_dim)
        self.vocab_size, self.context_length = vocab_size, context_length
        self.tie_embeddings = tie_embeddings
        head_dim = head_dim or d_model // num_heads
        gaps = fused_feature_gaps(num_heads, num_kv_heads or num_heads, document_masking)
        self.ops = get_ops(backend, device if device is not None else "cpu", d_model, head_dim, gaps)
        kw = dict(device=device, dtype=dtype)
        self.token_embeddings = Embedding(vocab_size, d_model, **kw)
        attn_kw = dict(num_kv_heads=num_kv_heads, head_dim=head_dim, bias=attention_bias, rope_scaling=rope_scaling)
        self.layers = nn.ModuleList(
            TransformerBlock(d_model, num_heads, d_ff, context_length, rope_theta, ops=self.ops, eps=rms_norm_eps,
                             **attn_kw, **kw)
            for _ in range(num_layers)
        )
        self.ln_final = RMSNorm(d_model, rms_norm_eps, ops=self.ops, **kw)
        self.lm_head = Linear(d_model, vocab_size, **kw)
        if tie_embeddings:
            # One matrix, initialised as the head: the embedding's N(0, 1) would start the logits at σ ≈ √d_model.
            self.token_embeddings.weight = self.lm_head.weight
        self.checkpointed_layers: frozenset[int] = frozenset()

    def set_activation_checkpointing(self, mode: str = "none", every: int = 2) -> None:
        """Recompute blocks' activations in backward instead of keeping them: ``none``, ``full`` (every block) or
        ``selective`` (blocks 0, every, 2·every, ...). Only a training forward with gradients checkpoints."""
        if mode not in ("none", "full", "selective") or every < 1:
            raise ValueError(f"activation_checkpointing must be none, full or selective (every >= 1), got {mode!r}, "
                             f"every={every}")
        step = {"none": 0, "full": 1, "selective": every}[mode]
        self.checkpointed_layers = frozenset(range(0, len(self.layers), step)) if step else frozenset()

    def forward(self, in_indices: torch.Tensor, token_positions: torch.Tensor | None = None,
                caches: list[KVCache] | None = None, targets: torch.Tensor | None = None,
                fused_loss: bool = True, last_only: bool = False, doc_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (batch, seq, vocab), or with ``last_only`` those of the last position only (batch, 1, vocab: what
        generation samples from, without a (seq, vocab) matrix per row); given ``targets`` (batch, seq) the mean
        cross-entropy against them instead (a 0-d tensor). With ``fused_loss`` that loss comes from the final hidden
        states and ``lm_head.weight`` a chunk of tokens at a time (``ops.linear_cross_entropy``, never the full
        logits); else from full logits. ``doc_ids``: positions restart at each document unless ``token_positions``
        are given.
        The loss is taken here, inside forward, because only here is ``lm_head.weight`` whole under FSDP (outside,
        it is this rank's shard) and seen by DDP's and FSDP's gradient hooks."""
        seq = in_indices.shape[-1]
        start = caches[0].length if caches else 0
        if start + seq > self.context_length:
            raise ValueError(f"sequence of {start + seq} tokens exceeds context_length={self.context_length}")
        if doc_ids is not None and token_positions is None:
            token_positions = functional.document_positions(doc_ids)
        x = self.token_embeddings(in_indices)
        recompute = self.training and torch.is_grad_enabled() and not caches
        for i, layer in enumerate(self.layers):
            if recompute and i in self.checkpointed_layers:
                x = checkpoint(layer, x, token_positions, None, doc_ids, use_reentrant=False)
            else:
                x = layer(x, token_positions, caches[i] if caches else None, doc_ids)
        x = self.ln_final(x)
        if targets is None:
            return self.lm_head(x[:, -1:] if last_only else x)
        if fused_loss:
            return self.ops.linear_cross_entropy(x, self.lm_head.weight, targets)
        return functional.cross_entropy(self.lm_head(x), targets)

    @classmethod
    def from_hf(cls, directory, backend: str = "auto", device=None, dtype=None) -> TransformerLM:
        """A model with the shape and weights of a Hugging Face Llama folder (config.json + model.safetensors).

        Unsupported folders (grouped-query attention, biases, RoPE scaling ...) raise an error naming the field;
        see :mod:`lmfast.model.hf`. ``python -m lmfast.export`` writes such folders.
        """
        shape = hf.read_llama_config(directory)
        with uninitialized():  # every weight comes from the folder
            model = cls(**shape.model_kwargs(), backend=backend, device=device, dtype=dtype)
        hf.load_weights(model, directory, shape)
        return model

    def new_kv_caches(self, batch: int, max_len: int | None = None, dtype: torch.dtype | None = None
                      ) -> list[KVCache]:
        """Empty KV caches (one per layer) for incremental decoding of up to ``max_len`` positions.

        ``dtype`` defaults to what the projections produce where the caches are made: the autocast dtype when
        autocast is on for the model's device (bf16 keys under bf16 autocast), else the weights' dtype.
        """
        attn = self.layers[0].attn
        p = self.lm_head.weight
        if dtype is None:
            on = torch.is_autocast_enabled(p.device.type)
            dtype = torch.get_autocast_dtype(p.device.type) if on else p.dtype
        return [KVCache.empty(batch, attn.num_kv_heads, max_len or self.context_length, attn.d_k, p.device, dtype)
                for _ in self.layers]

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Parameter count, a tied matrix once; ``exclude_embeddings`` drops the input embedding table (the usual
        FLOPs count), and for tied embeddings that is the head's matrix too."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.token_embeddings.weight.numel() if exclude_embeddings else n

    def flops_per_token(self) -> float:
        """Training FLOPs per token (forward + backward): 6·N (the params a token multiplies: all but the embedding
        lookup, a tied head included) + 12·L·(heads·head_dim)·T attention."""
        attn = self.layers[0].attn
        matmul_params = self.num_parameters(exclude_embeddings=True)
        if self.tie_embeddings:
            matmul_params += self.lm_head.weight.numel()
        return 6 * matmul_params + 12 * len(self.layers) * attn.num_heads * attn.d_k * self.context_length


def _check_heads(d_model: int, num_heads: int, num_kv_heads: int | None, head_dim: int | None) -> None:
    if num_kv_heads is not None and (num_kv_heads < 1 or num_heads % num_kv_heads):
        raise ValueError(f"num_heads ({num_heads}) must be divisible by num_kv_heads ({num_kv_heads})")
    if head_dim is not None:
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head dim, got head_dim={head_dim}")
        return
    if d_model % num_heads != 0:
        raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads}); "
                         f"e.g. num_heads={_divisor_near(d_model, num_heads)}")
    if (d_model // num_heads) % 2 != 0:
        raise ValueError(f"RoPE needs an even head dim, but d_model / num_heads = {d_model // num_heads}; "
                         "change d_model or num_heads")


def _divisor_near(n: int, k: int) -> int:
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: (abs(d - k), d))
