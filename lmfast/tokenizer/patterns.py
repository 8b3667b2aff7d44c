"""The pre-tokenizer patterns lmfast runs, by name, and the regex strings that name them in the wild.

Each name is one hand-written splitter in the C++ engine (``csrc/pretokenize.h``) and one regex for the pure-Python
reference and the tests, which hold the two equal:

- ``gpt2``: GPT-2's pattern (GPT-2, GPT-J, CS336, and lmfast's default).
- ``cl100k``: tiktoken's ``cl100k_base`` (GPT-4, GPT-3.5), as tiktoken writes it today.
- ``llama3``: the same family as Llama-3's ``tokenizer.json`` writes it (and tiktoken's older cl100k string); it
  differs from ``cl100k`` only at the very end of a text that ends in whitespace holding a newline.
- ``qwen2``: Llama-3's with single digits (Qwen2, Qwen2.5).
- ``o200k``: tiktoken's ``o200k_base`` (GPT-4o): letter runs split where case changes, contractions attached.

``REGEX[name]`` is the pattern for the ``regex`` module with tiktoken's meaning: tiktoken's Rust engine reads ``$`` as
the end of the text, Python's ``$`` also matches before a final newline, so ``\\Z`` stands in for it.
"""

from __future__ import annotations

import regex

__all__ = ["PATTERNS", "REGEX", "SOURCE", "HF_SOURCE", "pattern_of_regex", "check_pattern", "safe_cut_regex"]

_CONTRACTIONS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
_O200K_PARTS = [
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+" + _CONTRACTIONS + "?",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*" + _CONTRACTIONS + "?",
    r"\p{N}{1,3}",
    r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
    r"\s*[\r\n]+",
    r"\s+(?!\S)",
    r"\s+",
]

# The patterns as their sources write them: tiktoken's encodings and the Split regex of Hugging Face tokenizer.json.
SOURCE: dict[str, str] = {
    "gpt2": r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
    "cl100k": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|"""
              r"""\s*[\r\n]|\s+(?!\S)|\s""",
    "llama3": _CONTRACTIONS + r"""|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"""
              r"""\s+(?!\S)|\s+""",
    "qwen2": _CONTRACTIONS + r"""|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
    "o200k": "|".join(_O200K_PARTS),
}
PATTERNS = tuple(SOURCE)
REGEX: dict[str, str] = {name: s.replace("++$", "++\\Z") for name, s in SOURCE.items()}

# The cl100k string lmfast writes into a tokenizer.json: Oniguruma (Hugging Face's regex engine) reads
# ``\p{N}{1,3}+`` as "one or more groups of 1-3 digits", not as a possessive group, so the digits go plain (nothing
# follows them, so the meaning is the same). Its ``$`` is an end of line, but after the possessive ``\s++`` only
# the end of the text can follow.
HF_SOURCE = {**SOURCE, "cl100k": SOURCE["cl100k"].replace(r"\p{N}{1,3}+", r"\p{N}{1,3}")}

# Other spellings of the same patterns: tiktoken's r50k/p50k string for GPT-2 (possessive, ``\s++$``), which splits
# every text as GPT-2's does, and the tokenizer.json spelling of cl100k above.
_ALIASES = {
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s""": "gpt2",
    HF_SOURCE["cl100k"]: "cl100k",
}


def pattern_of_regex(pattern: str) -> str | None:
    """The name of the pre-tokenizer a regex string is, or None when lmfast has no splitter for it."""
    for name, source in SOURCE.items():
        if pattern == source:
            return name
    return _ALIASES.get(pattern)


def check_pattern(name) -> str:
    """``name`` when it names a pattern, else ValueError listing them."""
    if name not in SOURCE:
        raise ValueError(f"pattern={name!r} is not one of lmfast's pre-tokenizers {PATTERNS}; pass one of those names")
    return name


# Safe cuts for streaming, per pattern: see lmfast.tokenizer.streaming._cut_point. GPT-2 cuts between any
# non-whitespace and whitespace; the newer patterns let punctuation take the newlines after it (and o200k
# contractions follow letters), so there a cut goes before a non-newline whitespace character, or after a letter or
# digit run ended by something that cannot continue the piece.
_SAFE_CUT = {
    "gpt2": r"(?r)\S\s|\p{L}\P{L}|\p{N}\P{N}",
    "newer": r"(?r)\S[^\S\r\n]|\p{L}[^\p{L}\p{M}']|\p{N}\P{N}",
}


def safe_cut_regex(name: str) -> regex.Pattern:
    return _compiled(name if name == "gpt2" else "newer")


_CACHE: dict[str, regex.Pattern] = {}


def _compiled(key: str) -> regex.Pattern:
    if key not in _CACHE:
        _CACHE[key] = regex.compile(_SAFE_CUT[key])
    return _CACHE[key]
