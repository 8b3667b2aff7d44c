"""lmfast's tokenizer as Hugging Face ``tokenizer.json`` + ``tokenizer_config.json`` (a byte-level BPE), and back.

The HF pipeline that gives lmfast's ids: a ``BPE`` model over GPT-2's byte<->unicode strings with the merges in
priority order, the ``ByteLevel`` pre-tokenizer (GPT-2's split pattern, no prefix space) or, for the newer patterns
(``cl100k``, ``llama3``, ``qwen2``, ``o200k``), a ``Split`` on the pattern's regex followed by ``ByteLevel`` without
its own regex (as Llama-3's file has it), the ``ByteLevel`` decoder, and each special token as an added token
(matched in the raw text before the split, as lmfast's ``encode`` does by default). ``model.ignore_merges`` carries
the tokenizer's ``ignore_merges``. A byte-level model (``tokenizer: null``) is the same with 256 byte tokens
and no merges, so its ids are the raw UTF-8 bytes. The file is built with the ``tokenizers`` library's own
classes when it is installed; without it, the same document is written in the library's documented format.

:func:`read_tokenizer_json` reads such a file back (an exported folder, or any GPT-2-style byte-level BPE on a
hub), so that ``tokenizer: DIR`` takes the folder ``--init-from`` takes. It refuses, naming the field, any
setting under which lmfast's encoder would give other ids than the file's tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

from lmfast.tokenizer.gpt2_files import EOT, _to_bytes, _to_str
from lmfast.tokenizer.patterns import HF_SOURCE, pattern_of_regex

__all__ = ["tokenizer_json", "tokenizer_config", "read_tokenizer_json"]


def _parts(tokenizer) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]], dict[str, int]]:
    """(vocab, merges, special tokens) of an lmfast Tokenizer, or of the byte level for None / ByteTokenizer."""
    if getattr(tokenizer, "vocab", None) is None:
        return {i: bytes([i]) for i in range(256)}, [], {}
    return tokenizer.vocab, tokenizer.merges, tokenizer.special_tokens


def _options(tokenizer) -> tuple[str, bool]:
    """(pattern, ignore_merges) of a tokenizer; GPT-2's pattern and BPE by the merges for anything else."""
    return getattr(tokenizer, "pattern", "gpt2"), bool(getattr(tokenizer, "ignore_merges", False))


def _hf_strings(vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]], specials: dict[str, int]
                ) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocab as string -> id (special tokens under their own text) and merges as string pairs."""
    special_at = {i: s for s, i in specials.items()}
    strings: dict[str, int] = {}
    for i in sorted(vocab):
        s = special_at.get(i, _to_str(vocab[i]))
        if s in strings:
            raise ValueError(f"ids {strings[s]} and {i} both map to the token string {s!r}; tokenizer.json maps "
                             "each string to one id, so this vocabulary cannot be exported")
        strings[s] = i
    pairs = [(_to_str(a), _to_str(b)) for a, b in merges]
    for a, b in pairs:
        if a not in strings or b not in strings or a + b not in strings:
            raise ValueError(f"the merge {a!r} + {b!r} uses a token whose bytes are also a special token's; "
                             "tokenizer.json cannot hold both, so this vocabulary cannot be exported")
    return strings, pairs


def tokenizer_json(tokenizer) -> str:
    """The ``tokenizer.json`` text of an lmfast tokenizer (None or a ByteTokenizer = byte level)."""
    vocab, merges, specials = _parts(tokenizer)
    pattern, ignore_merges = _options(tokenizer)
    strings, pairs = _hf_strings(vocab, merges, specials)
    ordered = sorted(specials, key=specials.get)
    try:
        import tokenizers
    except ImportError:
        return json.dumps(_document(strings, pairs, ordered, specials, pattern, ignore_merges), ensure_ascii=False,
                          indent=2)
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers

    tok = tokenizers.Tokenizer(models.BPE(strings, pairs, ignore_merges=ignore_merges))
    if pattern == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(HF_SOURCE[pattern]), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in ordered])
    return tok.to_str(pretty=True)


def _document(strings: dict[str, int], pairs: list[tuple[str, str]], ordered: list[str], specials: dict[str, int],
              pattern: str = "gpt2", ignore_merges: bool = False) -> dict:
    """The same tokenizer in the ``tokenizers`` serialization format (version 1.0), for when it is not installed."""
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    pre = byte_level
    if pattern != "gpt2":
        split = {"type": "Split", "pattern": {"Regex": HF_SOURCE[pattern]}, "behavior": "Isolated", "invert": False}
        pre = {"type": "Sequence", "pretokenizers": [split, {**byte_level, "trim_offsets": False, "use_regex": False}]}
    added = [{"id": specials[s], "content": s, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for s in ordered]
    model = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
             "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": ignore_merges,
             "vocab": strings, "merges": [list(p) for p in pairs]}
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
            "pre_tokenizer": pre, "post_processor": None, "decoder": {**byte_level, "add_prefix_space": True},
            "model": model}


def tokenizer_config(tokenizer, context_length: int) -> dict:
    """``tokenizer_config.json``: the fast tokenizer class, no BOS/EOS added, ``<|endoftext|>`` as EOS if present.

    ``model_input_names`` leaves out ``token_type_ids``, which ``LlamaForCausalLM.generate`` refuses.
    """
    _, _, specials = _parts(tokenizer)
    return {"tokenizer_class": "PreTrainedTokenizerFast", "model_input_names": ["input_ids", "attention_mask"],
            "model_max_length": context_length,
            "bos_token": None, "eos_token": EOT if EOT in specials else None, "unk_token": None,
            "pad_token": None, "add_bos_token": False, "add_eos_token": False,
            "clean_up_tokenization_spaces": False}


def read_tokenizer_json(path: Path, doc: dict
                        ) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]], list[str], dict]:
    """(vocab, merges, special tokens, options) of ``doc``, the parsed Hugging Face ``tokenizer.json`` at ``path``;
    options are the ``Tokenizer`` keywords ``pattern`` and ``ignore_merges``.

    Every added token becomes an lmfast special token: both are matched in the raw text before the split and never
    broken up. A bad or foreign file raises ValueError naming the field.
    """
    model = doc.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("vocab"), dict):
        raise ValueError(f"{path}: no model.vocab object; not a Hugging Face tokenizer.json")

    def refuse(field: str, value, wanted: str) -> ValueError:
        return ValueError(f"{path}: {field} is {value!r}, but lmfast reads only a byte-level BPE "
                          f"({field} {wanted}), whose ids it reproduces exactly; use this tokenizer through "
                          "`tokenizers`, or train one with `python -m lmfast.tokenize train`")

    checks = [("model.type", model.get("type"), "BPE", "'BPE'"),
              ("model.dropout", model.get("dropout"), None, "null"),
              ("model.byte_fallback", bool(model.get("byte_fallback")), False, "false"),
              ("model.continuing_subword_prefix", model.get("continuing_subword_prefix") or None, None, "null"),
              ("model.end_of_word_suffix", model.get("end_of_word_suffix") or None, None, "null"),
              ("normalizer", doc.get("normalizer"), None, "null")]
    for field, value, wanted, shown in checks:
        if value != wanted:
            raise refuse(field, value, shown)
    pattern = _pattern_of(path, doc.get("pre_tokenizer"), refuse)
    options = {"pattern": pattern, "ignore_merges": bool(model.get("ignore_merges"))}

    added = doc.get("added_tokens") or []
    specials = {}
    for t in added:
        if not (isinstance(t, dict) and isinstance(t.get("content"), str) and t["content"]
                and isinstance(t.get("id"), int)):
            raise ValueError(f"{path}: added_tokens holds {t!r}, not an object with a non-empty content and an id")
        specials[t["content"]] = t["id"]
    vocab: dict[int, bytes] = {}
    for s, i in model["vocab"].items():
        if not isinstance(i, int) or isinstance(i, bool):
            raise ValueError(f"{path}: model.vocab[{s!r}] is {i!r}, not an integer id")
        if i in vocab:
            raise ValueError(f"{path}: model.vocab gives id {i} to both {vocab[i]!r} and {s!r}")
        vocab[i] = s.encode("utf-8") if s in specials else _to_bytes(s)
    for s, i in specials.items():
        if vocab.setdefault(i, s.encode("utf-8")) != s.encode("utf-8"):
            raise ValueError(f"{path}: added token {s!r} has id {i}, which model.vocab gives to another token")
    merges = []
    for k, m in enumerate(model.get("merges") or []):
        pair = m.split(" ") if isinstance(m, str) else m  # "a b" (tokenizers < 0.20) or ["a", "b"]
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) and x for x in pair)):
            raise ValueError(f"{path}: model.merges[{k}] is {m!r}, not a pair of tokens")
        merges.append((_to_bytes(pair[0]), _to_bytes(pair[1])))
    return vocab, merges, sorted(specials, key=specials.get), options


def _pattern_of(path: Path, pre, refuse) -> str:
    """The lmfast pattern of a ``pre_tokenizer``: GPT-2's ``ByteLevel``, or ``Split`` on a known regex then
    ``ByteLevel`` without its own regex (Llama-3, Qwen2, GPT-4o-style files)."""
    if isinstance(pre, dict) and pre.get("type") == "ByteLevel" and not pre.get("add_prefix_space", True) \
            and pre.get("use_regex", True):
        return "gpt2"
    steps = pre.get("pretokenizers") if isinstance(pre, dict) and pre.get("type") == "Sequence" else None
    if isinstance(steps, list) and len(steps) == 2 and all(isinstance(x, dict) for x in steps):
        split, byte_level = steps
        regex = split.get("pattern", {}).get("Regex") if isinstance(split.get("pattern"), dict) else None
        if (split.get("type") == "Split" and split.get("behavior") == "Isolated" and not split.get("invert")
                and byte_level.get("type") == "ByteLevel" and not byte_level.get("add_prefix_space", True)
                and not byte_level.get("use_regex", True)):
            if not isinstance(regex, str):
                raise refuse("pre_tokenizer.pretokenizers[0].pattern", split.get("pattern"), "a Regex")
            name = pattern_of_regex(regex)
            if name is None:
                raise ValueError(f"{path}: pre_tokenizer splits on the regex {regex!r}, which is none of lmfast's "
                                 "pre-tokenizers (GPT-2, cl100k/Llama-3, Qwen2, o200k: "
                                 "lmfast.tokenizer.patterns.SOURCE); use this tokenizer through `tokenizers`")
            return name
    raise refuse("pre_tokenizer", pre, "ByteLevel with add_prefix_space false and use_regex true, or Split on a "
                 "known pattern (Isolated) then ByteLevel with use_regex false")
