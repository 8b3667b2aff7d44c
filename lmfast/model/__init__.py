"""The model room: the Llama-style transformer and every op it runs, in reference and fused form.

Owns :class:`TransformerLM` and its layers (``transformer.py``), the plain-PyTorch reference of every op, the spec
each Triton kernel matches (``functional.py``, also importable as ``lmfast.functional``), the choice between
reference and fused ops, made once per model (``ops.py``), what ``dtype: auto`` means (``precision.py``), loading a
state dict with errors that name the tensors (``weights.py``), Hugging Face Llama folders <-> TransformerLM
(``hf.py``), and sampling with a KV cache (``generation.py``, ``text_stream.py``).

Imports nothing of lmfast outside this room but the Triton kernels, ``lmfast.kernels``, whose only import back is
this room's ``functional`` (the reference they are held to).
"""

from lmfast.model.transformer import (
    Embedding,
    KVCache,
    Linear,
    MultiHeadSelfAttention,
    RMSNorm,
    RotaryEmbedding,
    SwiGLU,
    TransformerBlock,
    TransformerLM,
    scaled_dot_product_attention,
)

__all__ = ["Linear", "Embedding", "RMSNorm", "SwiGLU", "RotaryEmbedding", "scaled_dot_product_attention",
           "MultiHeadSelfAttention", "TransformerBlock", "TransformerLM", "KVCache"]
