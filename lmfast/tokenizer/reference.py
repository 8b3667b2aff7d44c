"""Pure-Python byte-level BPE: the oracle the C++ engine (``lmfast.tokenizer._bpe``) is held equal to.

Two pieces, with the same interface as the native module:

- ``ReferenceEngine(vocab, merges, special_tokens, pattern="gpt2", ignore_merges=False)``: a pre-tokenizer
  pattern of ``lmfast.tokenizer.patterns`` (``regex`` semantics are the truth), then, inside each pre-token,
  repeatedly merge the adjacent pair of lowest merge rank (the rank of ``(a, b)`` is its index in ``merges``; the
  merged token's id is the vocab id of ``a + b``). With ``ignore_merges`` a pre-token that is a vocab token is that
  token (tiktoken).
- ``train_bpe_reference(input_path, vocab_size, special_tokens)``: the CS336 trainer. Ids are the special tokens
  first (given order), then the 256 single bytes, then one per merge. The text is split on the special tokens (no
  merge crosses one), pre-tokenized, pairs are counted inside pre-tokens weighted by pre-token frequency, and the
  most frequent pair is merged each step; ties go to the greater pair as a ``(bytes, bytes)`` tuple.

Simple and obviously right comes first here; speed is the C++ engine's job. The trainer keeps pair counts
up to date incrementally (only words that contain the merged pair are touched) and picks the best pair with a
lazily-invalidated heap, so a 10k vocabulary on 1 MB of text takes seconds, not hours.
"""

from __future__ import annotations

import functools
import heapq
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import regex

from lmfast.tokenizer.patterns import REGEX, SOURCE, check_pattern

__all__ = ["GPT2_PATTERN", "ReferenceEngine", "train_bpe_reference", "read_utf8", "special_token_regex"]

GPT2_PATTERN = SOURCE["gpt2"]  # one spelling of each pattern, in lmfast.tokenizer.patterns


@functools.cache
def pretokenizer(pattern: str) -> regex.Pattern:
    """The compiled ``regex`` of a pattern name (``lmfast.tokenizer.patterns``)."""
    return regex.compile(REGEX[check_pattern(pattern)])
_CACHE_LIMIT = 1 << 16  # pieces kept in the per-engine encode cache before it is cleared
MAX_VOCAB_SIZE = 1 << 31  # ids are C int32-sized in the C++ engine and in token files
MAX_THREADS = 1024  # a worker or thread count above this is a typo, and the C++ pool would keep every thread parked


def special_token_regex(special_tokens: Iterable[str]) -> regex.Pattern | None:
    """A pattern matching any of ``special_tokens``, the longest one winning where several start at one position.

    Alternation tries branches in order, so sorting longest-first gives "longest match at the leftmost position".
    Returns None for an empty collection.
    """
    return _special_token_regex(frozenset(special_tokens))


@functools.lru_cache(maxsize=64)
def _special_token_regex(special_tokens: frozenset[str]) -> regex.Pattern | None:
    tokens = sorted(special_tokens, key=lambda s: (-len(s), s))
    if not tokens:
        return None
    return regex.compile("|".join(regex.escape(t) for t in tokens))


def split_on_special(text: str, pattern: regex.Pattern | None) -> list[tuple[str, bool]]:
    """Split ``text`` into ``(piece, is_special)`` parts, scanning left to right for special-token matches."""
    if pattern is None:
        return [(text, False)] if text else []
    parts: list[tuple[str, bool]] = []
    start = 0
    for m in pattern.finditer(text):
        if m.start() > start:
            parts.append((text[start : m.start()], False))
        parts.append((m.group(), True))
        start = m.end()
    if start < len(text):
        parts.append((text[start:], False))
    return parts


def read_utf8(path: str | os.PathLike) -> str:
    """Read a whole file as strict UTF-8; a bad byte raises ValueError naming the file and byte offset."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{os.fspath(path)}: not valid UTF-8 at byte offset {e.start} ({e.reason}); "
            "re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
        ) from None


# ----------------------------------------------------------------------------------------------------------------
# Encoding / Decoding


class ReferenceEngine:
    """Byte-level BPE encoder/decoder over a fixed vocabulary; same interface as ``lmfast.tokenizer._bpe.Engine``.

    ``vocab`` maps id -> token bytes, ``merges`` lists ``(a, b)`` pairs in priority order, ``special_tokens`` maps
    str -> id (ids present in ``vocab``). Every merged ``a + b`` and all 256 single bytes must be in ``vocab``.
    Where the same bytes have several ids, ordinary text uses the smallest id that is not a special token's.
    """

    def __init__(self, vocab: Mapping[int, bytes], merges: Sequence[tuple[bytes, bytes]], special_tokens=None,
                 pattern: str = "gpt2", ignore_merges: bool = False):
        special_tokens = dict(special_tokens or {})
        self.pattern = pattern
        self._split = pretokenizer(pattern)
        self._ignore_merges = bool(ignore_merges)
        self._vocab = {int(i): bytes(b) for i, b in vocab.items()}
        special_ids = set(special_tokens.values())
        self._ids: dict[bytes, int] = {}
        for i in sorted(self._vocab):
            if i not in special_ids:
                self._ids.setdefault(self._vocab[i], i)
        for tok, i in special_tokens.items():
            if i not in self._vocab:
                raise ValueError(f"special token {tok!r} has id {i}, which is not in the vocab; add it to the vocab")
            self._ids.setdefault(self._vocab[i], i)
        self._ranks: dict[tuple[int, int], tuple[int, int]] = {}  # (id_a, id_b) -> (rank, merged id)
        for rank, (a, b) in enumerate(merges):
            for part in (a, b, a + b):
                if part not in self._ids:
                    raise ValueError(f"merge {rank} ({a!r}, {b!r}): token {part!r} is not in the vocab")
            self._ranks.setdefault((self._ids[a], self._ids[b]), (rank, self._ids[a + b]))
        missing = [x for x in range(256) if bytes([x]) not in self._ids]
        if missing:
            raise ValueError(f"the vocab lacks {len(missing)} of the 256 single bytes (first: {missing[:5]}); "
                             "a byte-level BPE vocab needs every byte as a token")
        self._byte_ids = [self._ids[bytes([x])] for x in range(256)]
        self._special = special_tokens
        self._special_ids = special_ids
        self._cache: dict[str, list[int]] = {}
        self.vocab_size = max(self._vocab) + 1 if self._vocab else 0

    def _bpe(self, piece: str) -> list[int]:
        """Merge the bytes of one pre-token, lowest rank first, leftmost first among equal ranks."""
        try:
            data = piece.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates become U+FFFD, as tiktoken does
            data = piece.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode("utf-8")
        if self._ignore_merges and len(data) > 1 and data in self._ids and self._ids[data] not in self._special_ids:
            return [self._ids[data]]
        ids = [self._byte_ids[x] for x in data]
        ranks = self._ranks
        while len(ids) > 1:
            best = None
            for pair in zip(ids, ids[1:], strict=False):
                r = ranks.get(pair)
                if r is not None and (best is None or r[0] < best[0]):
                    best = r
                    best_pair = pair
            if best is None:
                break
            merged, i = [], 0
            while i < len(ids):
                if i + 1 < len(ids) and (ids[i], ids[i + 1]) == best_pair:
                    merged.append(best[1])
                    i += 2
                else:
                    merged.append(ids[i])
                    i += 1
            ids = merged
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Pre-tokenizer + BPE; special-token text is encoded as ordinary text."""
        out: list[int] = []
        cache = self._cache
        for piece in self._split.findall(text):
            ids = cache.get(piece)
            if ids is None:
                ids = self._bpe(piece)
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                cache[piece] = ids
            out.extend(ids)
        return out

    def encode(self, text: str, allowed_special: Iterable[str]) -> list[int]:
        """Split out the allowed special tokens (longest match at the leftmost position), encode the rest."""
        allowed = frozenset(allowed_special)
        unknown = allowed - self._special.keys()
        if unknown:
            raise ValueError(f"allowed_special names {sorted(unknown)!r}, which are not special tokens of this engine")
        out: list[int] = []
        for piece, is_special in split_on_special(text, special_token_regex(allowed)):
            if is_special:
                out.append(self._special[piece])
            else:
                out.extend(self.encode_ordinary(piece))
        return out

    def encode_batch(self, texts: Sequence[str], allowed_special: Iterable[str], num_threads: int = 1):
        """``encode`` each text; the reference runs them one after another whatever ``num_threads`` says."""
        allowed = frozenset(allowed_special)
        return [self.encode(t, allowed) for t in texts]

    def encode_batch_to_bytes(self, texts: Sequence[str], allowed_special: Iterable[str], num_threads: int,
                              itemsize: int) -> list[bytes]:
        """``encode_batch`` with each text's ids as little-endian uint16 (``itemsize`` 2) or uint32 (4) bytes."""
        dtype = {2: "<u2", 4: "<u4"}[itemsize]
        return [np.asarray(ids, dtype=dtype).tobytes() for ids in self.encode_batch(texts, allowed_special)]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Concatenate the bytes of ``ids``; a non-int raises TypeError, an id not in the vocab ValueError, each
        naming the id and its position (the messages of ``lmfast.tokenizer._bpe.Engine.decode_bytes``)."""
        ids = list(ids)
        vocab = self._vocab
        try:
            return b"".join(vocab[i] for i in ids)
        except (KeyError, TypeError):
            k, bad = next((k, i) for k, i in enumerate(ids) if type(i) is not int or i not in vocab)
            if type(bad) is not int:
                raise TypeError(f"token ids must be int, got {type(bad).__name__} {bad!r} at position {k}") from None
            shown = bad if bad.bit_length() <= 256 else f"of {bad.bit_length()} bits"  # str() of 10**5000 raises
            raise ValueError(f"unknown token id {shown} at position {k}; valid ids are those in the vocab "
                             f"(0..{self.vocab_size - 1})") from None


# ----------------------------------------------------------------------------------------------------------------
# Training


class _Desc:
    """Heap key that orders pairs greatest-first, so a min-heap of (-count, _Desc(pair)) pops the CS336 winner."""

    __slots__ = ("pair",)

    def __init__(self, pair):
        self.pair = pair

    def __lt__(self, other):
        return self.pair > other.pair

    def __eq__(self, other):
        return self.pair == other.pair


def _check_train_args(vocab_size, special_tokens, num_workers) -> list[str]:
    if isinstance(special_tokens, (str, bytes)):
        raise ValueError(f"special_tokens must be a list of strings, got the single {type(special_tokens).__name__} "
                         f"{special_tokens!r}; write [{special_tokens!r}]")
    special_tokens = list(special_tokens or [])
    if any(not isinstance(s, str) or not s for s in special_tokens):
        raise ValueError(f"special_tokens must be non-empty strings, got {special_tokens!r}")
    if len(set(special_tokens)) != len(special_tokens):
        raise ValueError(f"special_tokens has duplicates: {special_tokens!r}; list each token once")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 256 + len(special_tokens):
        raise ValueError(f"vocab_size={vocab_size!r} is too small: it must be an int >= 256 + {len(special_tokens)} "
                         f"(the 256 byte tokens plus the special tokens); use at least {256 + len(special_tokens)}")
    if vocab_size > MAX_VOCAB_SIZE:
        raise ValueError(f"vocab_size={vocab_size} is too large: token ids must stay below 2**31, so use at most "
                         f"{MAX_VOCAB_SIZE}")
    if num_workers is not None and (isinstance(num_workers, bool) or not isinstance(num_workers, int)
                                    or not 1 <= num_workers <= MAX_THREADS):
        raise ValueError(f"num_workers={num_workers!r}: must be None (all cores) or an int from 1 to {MAX_THREADS}")
    return special_tokens


def pretoken_counts(text: str, special_tokens: Sequence[str], pattern: str = "gpt2") -> Counter:
    """Count the pre-tokens of ``text`` after removing the special tokens (so no pre-token spans one)."""
    counts: Counter = Counter()
    split = pretokenizer(pattern)
    for piece, is_special in split_on_special(text, special_token_regex(special_tokens)):
        if not is_special:
            counts.update(split.findall(piece))
    return counts


def _pairs(word: Sequence[bytes]):
    return zip(word, word[1:], strict=False)


def _merge_word(word: tuple, pair: tuple[bytes, bytes], new: bytes) -> tuple:
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == pair[0] and word[i + 1] == pair[1]:
            out.append(new)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def train_bpe_reference(input_path, vocab_size: int, special_tokens: Sequence[str], num_workers: int | None = None,
                        progress=None, pattern: str = "gpt2"):
    """Train a byte-level BPE on a UTF-8 text file; returns ``(vocab: dict[int, bytes], merges: list[(bytes, bytes)])``.

    ``num_workers`` is accepted for interface parity with the native trainer; the reference runs in one process.
    ``pattern`` names the pre-tokenizer (``lmfast.tokenizer.patterns``).
    ``progress(merges_done, merges_wanted)``, when given, is called every 64 merges and at the end.
    """
    special_tokens = _check_train_args(vocab_size, special_tokens, num_workers)
    text = read_utf8(input_path)
    vocab: dict[int, bytes] = {i: s.encode("utf-8") for i, s in enumerate(special_tokens)}
    for x in range(256):
        vocab[len(vocab)] = bytes([x])

    words: list[tuple] = []
    freqs: list[int] = []
    for piece, n in pretoken_counts(text, special_tokens, pattern).items():
        b = piece.encode("utf-8")
        if len(b) > 1:
            words.append(tuple(bytes([x]) for x in b))
            freqs.append(n)
    pair_count: dict[tuple, int] = defaultdict(int)
    pair_words: dict[tuple, set] = defaultdict(set)
    for w, (word, n) in enumerate(zip(words, freqs, strict=True)):
        for p in _pairs(word):
            pair_count[p] += n
            pair_words[p].add(w)
    heap = [(-c, _Desc(p)) for p, c in pair_count.items()]
    heapq.heapify(heap)

    merges: list[tuple[bytes, bytes]] = []
    wanted = vocab_size - len(vocab)
    while len(vocab) < vocab_size:
        if progress is not None and len(merges) % 64 == 0:
            progress(len(merges), wanted)
        best = None
        while heap:
            neg, key = heapq.heappop(heap)
            if pair_count.get(key.pair, 0) == -neg and -neg > 0:  # stale entries (count changed) are skipped
                best = key.pair
                break
        if best is None:
            break
        new = best[0] + best[1]
        merges.append(best)
        vocab[len(vocab)] = new
        delta: dict[tuple, int] = defaultdict(int)
        for w in list(pair_words[best]):
            old, n = words[w], freqs[w]
            merged = _merge_word(old, best, new)
            for p in _pairs(old):
                delta[p] -= n
                pair_words[p].discard(w)
            for p in _pairs(merged):
                delta[p] += n
                pair_words[p].add(w)
            words[w] = merged
        for p, d in delta.items():
            if d:
                c = pair_count[p] + d
                if c > 0:
                    pair_count[p] = c
                    heapq.heappush(heap, (-c, _Desc(p)))
                else:
                    del pair_count[p]
                    pair_words.pop(p, None)
    if progress is not None:
        progress(len(merges), wanted)
    return vocab, merges
