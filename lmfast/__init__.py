"""lmfast: train Llama-style language models from raw text, fast and correct.

Modules, one job each: ``config``, ``tokenizer``, ``model``, ``functional`` (reference ops), ``ops``
(reference/fused dispatch), ``optim``, ``data``, ``corpus``, ``checkpoint``, ``train``, ``generate``.
"""

__version__ = "0.1.0"
