"""lmfast: train Llama-style language models from raw text, fast and correct.

Four rooms by job, and thin command lines on top; imports point down, never in a circle (tests/test_layout.py):

- ``lmfast.tokenizer``: byte-level BPE (``Tokenizer``, ``train_bpe``), the C++ engine and its pure-Python oracle,
  GPT-2 and Hugging Face tokenizer files;
- ``lmfast.data``: token files on disk, the text -> token cache, named corpora, ``get_batch`` / ``BatchSampler``;
- ``lmfast.model``: ``TransformerLM``, the reference of every op (``lmfast.functional``), reference/fused dispatch,
  Hugging Face Llama folders, generation; the Triton kernels are ``lmfast.kernels``;
- ``lmfast.train``: the trainer (``python -m lmfast.train``) and what a run owns: config, checkpoints
  (``lmfast.checkpoint``), resume, run lock and signals, torchrun/FSDP, AdamW and the schedule (``lmfast.optim``).
- command lines: ``python -m lmfast.generate | export | plot | tokenize | eval``.

This module imports nothing, so ``import lmfast`` is instant.
"""

__version__ = "0.1.0"
