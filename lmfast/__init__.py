"""lmfast: train Llama-style language models from raw text, fast and correct.

Four rooms by job, and thin command lines on top; imports point down, never in a circle (tests/test_layout.py):

- ``lmfast.tokenizer``: byte-level BPE (``Tokenizer``, ``train_bpe``), the C++ engine and its pure-Python oracle,
  GPT-2 and Hugging Face tokenizer files;
- ``lmfast.data``: token files on disk, the text -> token cache, named corpora, ``get_batch`` / ``BatchSampler``;
- ``lmfast.model``: ``TransformerLM``, the reference of every op (``lmfast.functional``), reference/fused dispatch,
  Hugging Face Llama folders, generation; the Triton kernels are ``lmfast.kernels``;
- ``lmfast.train``: the trainer (``python -m lmfast.train``) and what a run owns: config, checkpoints
  (``lmfast.checkpoint``), resume, run lock and signals, torchrun/FSDP, AdamW and the schedule (``lmfast.optim``).
- command lines: ``python -m lmfast.generate | export | plot | tokenize | eval``, also installed as the console
  scripts ``lmfast-train``, ``lmfast-generate``, ``lmfast-export``, ``lmfast-plot``, ``lmfast-tokenize`` and
  ``lmfast-eval``.

This module imports nothing, so ``import lmfast`` is instant.
"""

__version__ = "0.1.0"


def command_name(module: str) -> str:
    """How the user ran the command line of ``lmfast.<module>``: its console script (``lmfast-train``) when started
    as one, else ``python -m lmfast.<module>``; for ``--help`` and hints that repeat the command."""
    import sys

    name = (sys.argv[0] if sys.argv else "").replace("\\", "/").rsplit("/", 1)[-1]
    return name if name == f"lmfast-{module}" else f"python -m lmfast.{module}"
