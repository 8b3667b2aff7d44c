"""Streamed decoding: one sample's text, token by token, in whole UTF-8 characters, cut at stop strings."""

from __future__ import annotations

import codecs
from collections.abc import Sequence

__all__ = ["TextStream"]


class TextStream:
    """One sample's text as its tokens arrive: whole UTF-8 characters only, cut before the first stop string.

    A character split across tokens waits for its last byte (invalid bytes become U+FFFD, as in ``decode``),
    and text that may still grow into a stop string is held back until the next tokens decide it, so what
    ``push`` hands out, joined, is always a prefix of the final ``text``.
    """

    def __init__(self, tokenizer, stops: Sequence[str]):
        self._bytes = tokenizer.decode_bytes
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = list(stops)
        self._longest = max(map(len, self._stops), default=0)
        self.text, self.stop, self._shown = "", None, 0
        self.tokens = 0  # tokens pushed, the stop string's own included

    @property
    def stopped(self) -> bool:
        return self.stop is not None

    def push(self, token_id: int) -> str:
        """Add one token; returns the text that became final."""
        self.tokens += 1
        return self._add(self._utf8.decode(self._bytes([token_id])), final=False)

    def finish(self) -> str:
        """No more tokens: returns the rest (a dangling partial character becomes U+FFFD)."""
        return self._add(self._utf8.decode(b"", final=True), final=True)

    def _add(self, piece: str, final: bool) -> str:
        if self.stopped:
            return ""
        start = max(0, len(self.text) - self._longest + 1)  # a new match must end inside the new piece
        self.text += piece
        hits = [(i, s) for s in self._stops if (i := self.text.find(s, start)) >= 0]
        if hits:
            end, self.stop = min(hits)
            self.text = self.text[:end]
        else:
            end = len(self.text) if final else len(self.text) - self._held_back()
        new, self._shown = self.text[self._shown:end], end
        return new

    def _held_back(self) -> int:
        """Length of the longest tail of the text that is the start of a stop string."""
        for n in range(min(self._longest - 1, len(self.text)), 0, -1):
            tail = self.text[-n:]
            if any(s.startswith(tail) for s in self._stops):
                return n
        return 0
