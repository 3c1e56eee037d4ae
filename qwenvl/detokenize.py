"""Incremental detokenization for streaming: safe text deltas, special tokens dropped, stop strings cut."""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)

_REPLACEMENT = "\ufffd"  # what the byte-level decoder writes for incomplete UTF-8


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas: never emits half a multi-byte character, drops special
    tokens (skip_special_tokens=True by default), and holds back text that could be the start of a stop string.

    Only a window of ids is decoded per token: ids[prefix:] where `prefix` is the last point at which the decoded
    text ended on a complete character, compared with the text of ids[prefix:read] decoded earlier.
    """

    def __init__(self, tokenizer, stop: tuple[str, ...] = (), skip_special_tokens: bool = True):
        if isinstance(stop, str):
            stop = (stop,)
        if not all(isinstance(s, str) and s for s in stop):
            raise ValueError(f"stop strings must be non-empty, got {stop!r}")
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.skip_special_tokens = skip_special_tokens
        self.stop_string: str | None = None
        self._ids: list[int] = []
        self._prefix = 0          # window start: ids before it are decoded and final
        self._read = 0            # ids[prefix:read] decode to `_window_text`, already moved to text/pending
        self._window_text = ""
        self._emitted = ""        # handed out in deltas
        self._pending = ""        # decoded but held back (a possible stop-string start)
        self._stopped = False
        self._finished = False
        self._max_hold = max((len(s) for s in self.stop), default=1) - 1

    @property
    def text(self) -> str:
        """All text emitted so far (held-back text is included once finish() has flushed it)."""
        return self._emitted

    @property
    def stopped(self) -> bool:
        """A stop string was found: text ends just before it and later add() calls return ""."""
        return self._stopped

    @property
    def ids(self) -> list[int]:
        return list(self._ids)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def add(self, token_id: int) -> str:
        """Append one id; return the newly safe text (possibly "")."""
        if self._stopped:
            return ""
        if self._finished:
            raise RuntimeError("add() after finish()")
        self._ids.append(int(token_id))
        new = self._decode(self._ids[self._prefix:])
        if new.endswith(_REPLACEMENT):
            return ""  # an incomplete character: wait for the next id (finish() flushes it anyway)
        self._pending += new[len(self._window_text):]
        # the next window starts at the old read point so the decoder keeps a little context
        self._prefix, self._read = self._read, len(self._ids)
        self._window_text = self._decode(self._ids[self._prefix:self._read])
        return self._release(final=False)

    def finish(self) -> str:
        """Flush everything held back (cut at a stop string if one completes) and return that last delta."""
        if self._finished:
            return ""
        self._finished = True
        if self._stopped:
            return ""
        if self._read < len(self._ids):
            new = self._decode(self._ids[self._prefix:])
            self._pending += new[len(self._window_text):]
            self._read = len(self._ids)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        """Move the safe part of `_pending` to the emitted text and return it."""
        pending = self._pending
        hit = self._find_stop(pending)
        if hit is not None:
            pos, s = hit
            self._stopped, self.stop_string = True, s
            self._pending = ""
            self._emitted += pending[:pos]
            return pending[:pos]
        keep = 0 if final else self._held_suffix(pending)
        out = pending[:len(pending) - keep]
        self._pending = pending[len(pending) - keep:]
        self._emitted += out
        return out

    def _find_stop(self, pending: str) -> tuple[int, str] | None:
        """Earliest stop string in `pending` (emitted text never holds the start of one): (index, string)."""
        best = None
        for s in self.stop:
            i = pending.find(s)
            if i >= 0 and (best is None or i < best[0]):
                best = (i, s)
        return best

    def _held_suffix(self, pending: str) -> int:
        """Length of the longest suffix of `pending` that is a proper prefix of some stop string."""
        for n in range(min(len(pending), self._max_hold), 0, -1):
            tail = pending[-n:]
            if any(s.startswith(tail) for s in self.stop):
                return n
        return 0
