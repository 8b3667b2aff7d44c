"""lmfast: train Llama-style language models from raw text, fast and correct.

Modules, one job each: ``config``, ``tokenizer`` (+ ``tokenize`` CLI), ``model``, ``functional`` (reference ops),
``ops`` (reference/fused dispatch), ``optim``, ``data``, ``corpus``, ``checkpoint``, ``metrics``, ``mfu`` (peak
FLOPs table), ``distributed`` (torchrun/DDP), ``train``, ``generate``, ``plot``, ``hf`` (Hugging Face Llama
folders to and from TransformerLM), ``export`` (checkpoint -> such a folder). Underscored modules are their
private parts.
"""

__version__ = "0.1.0"
