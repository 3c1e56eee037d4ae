"""Constrained decoding for grounding: only token sequences that spell a `bbox_2d` / `point_2d` JSON list.

The grammar is a byte-level NFA (Thompson construction) of the model's own answer shape,

    [```json\\n] [ {"bbox_2d": [x1, y1, x2, y2], "label": "..."}, ... ] [\\n```]

with JSON integers of up to 5 digits, labels of printable UTF-8 without quotes or backslashes, and short whitespace runs. At each
step the allowed tokens are those whose bytes keep the NFA alive from the current state set; they are found by a
walk over a byte trie of the vocabulary and cached per state set (a label's characters all share one state set, so
the cache stays small). Stop tokens are allowed only once the list is complete.
"""
from __future__ import annotations

import torch

WS = b" \t\n"
DIGITS = b"0123456789"
KINDS = ("bbox", "point")


class _NFA:
    def __init__(self):
        self.trans: list[list[tuple[frozenset, int]]] = []
        self.eps: list[list[int]] = []

    def state(self) -> int:
        self.trans.append([])
        self.eps.append([])
        return len(self.trans) - 1

    # fragments are (start, end) pairs; every builder makes fresh states
    def cls(self, chars) -> tuple[int, int]:
        s, e = self.state(), self.state()
        self.trans[s].append((frozenset(chars), e))
        return s, e

    def lit(self, text: bytes) -> tuple[int, int]:
        return self.seq(*[self.cls([b]) for b in text])

    def seq(self, *frags) -> tuple[int, int]:
        for (_, e), (s, _) in zip(frags, frags[1:]):
            self.eps[e].append(s)
        return frags[0][0], frags[-1][1]

    def opt(self, frag) -> tuple[int, int]:
        s, e = self.state(), self.state()
        self.eps[s] += [frag[0], e]
        self.eps[frag[1]].append(e)
        return s, e

    def star(self, frag) -> tuple[int, int]:
        s, e = self.state(), self.state()
        self.eps[s] += [frag[0], e]
        self.eps[frag[1]] += [frag[0], e]
        return s, e

    def alt(self, *frags) -> tuple[int, int]:
        s, e = self.state(), self.state()
        for a, b in frags:
            self.eps[s].append(a)
            self.eps[b].append(e)
        return s, e

    def upto(self, make, n: int) -> tuple[int, int]:
        """0..n repetitions of make()."""
        frag = self.opt(make())
        for _ in range(n - 1):
            frag = self.opt(self.seq(make(), frag))
        return frag


def _grammar(kind: str) -> tuple[_NFA, int, int]:
    n = _NFA()
    ws = lambda: n.upto(lambda: n.cls(WS), 6)  # noqa: E731
    num = lambda: n.alt(n.lit(b"0"), n.seq(n.cls(DIGITS[1:]), n.upto(lambda: n.cls(DIGITS), 4)))  # noqa: E731
    comma = lambda: n.seq(ws(), n.lit(b","), ws())  # noqa: E731
    ascii_chars = [b for b in range(0x20, 0x7F) if b not in b'"\\']
    cont = lambda: n.cls(range(0x80, 0xC0))  # noqa: E731

    def char():  # one printable ASCII character or one well-formed UTF-8 sequence
        return n.alt(n.cls(ascii_chars), n.seq(n.cls(range(0xC2, 0xE0)), cont()),
                     n.seq(n.cls(range(0xE0, 0xF0)), cont(), cont()),
                     n.seq(n.cls(range(0xF0, 0xF5)), cont(), cont(), cont()))

    string = lambda: n.seq(n.lit(b'"'), n.star(char()), n.lit(b'"'))  # noqa: E731
    key, count = (b'"bbox_2d"', 4) if kind == "bbox" else (b'"point_2d"', 2)

    def item():
        coords = [num()]
        for _ in range(count - 1):
            coords += [comma(), num()]
        return n.seq(n.lit(b"{"), ws(), n.lit(key), ws(), n.lit(b":"), ws(), n.lit(b"["), ws(), *coords, ws(),
                     n.lit(b"]"), comma(), n.lit(b'"label"'), ws(), n.lit(b":"), ws(), string(), ws(), n.lit(b"}"))

    items = n.opt(n.seq(item(), n.star(n.seq(comma(), item()))))
    body = n.seq(n.lit(b"["), ws(), items, ws(), n.lit(b"]"))
    fenced = n.seq(n.lit(b"```json\n"), body, n.lit(b"\n```"))
    start, end = n.seq(ws(), n.alt(body, fenced), ws())
    return n, start, end


def _bytes_decoder() -> dict[str, int]:
    """Inverse of the byte-level BPE byte -> printable character table."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


class _Vocab:
    """Byte strings of a tokenizer's ordinary tokens, as a trie: node = {byte: child}, ids stored under None."""

    def __init__(self, tokenizer):
        dec = _bytes_decoder()
        special = set(tokenizer.all_special_ids) | set(tokenizer.special_ids.values())
        self.size = tokenizer.vocab_size
        self.trie: dict = {}
        for tok, i in tokenizer.tok.get_vocab(with_added_tokens=False).items():
            if i in special or not all(ch in dec for ch in tok):
                continue
            node = self.trie
            for b in bytes(dec[ch] for ch in tok):
                node = node.setdefault(b, {})
            node.setdefault(None, []).append(i)


class GroundingGrammar:
    """Compiled grammar + vocabulary walk for one tokenizer and kind ('bbox' or 'point'); shared by rows."""

    def __init__(self, tokenizer, kind: str = "bbox"):
        if kind not in KINDS:
            raise ValueError(f"constraint kind must be one of {KINDS}, got {kind!r}")
        self.kind = kind
        self.nfa, self.start, self.accept = _grammar(kind)
        self.vocab = _vocab_for(tokenizer)
        self._closure_cache: dict[int, frozenset] = {}
        self._mask_cache: dict[frozenset, list[int]] = {}
        self.initial = self.closure({self.start})

    def closure(self, states) -> frozenset:
        out, todo = set(states), list(states)
        while todo:
            s = todo.pop()
            for t in self.nfa.eps[s]:
                if t not in out:
                    out.add(t)
                    todo.append(t)
        return frozenset(out)

    def step(self, states: frozenset, b: int) -> frozenset:
        nxt = {t for s in states for chars, t in self.nfa.trans[s] if b in chars}
        return self.closure(nxt) if nxt else frozenset()

    def feed(self, states: frozenset, data: bytes) -> frozenset:
        for b in data:
            states = self.step(states, b)
            if not states:
                break
        return states

    def accepting(self, states: frozenset) -> bool:
        return self.accept in states

    def allowed(self, states: frozenset) -> list[int]:
        """Token ids whose bytes keep the grammar alive from `states` (stop tokens not included)."""
        hit = self._mask_cache.get(states)
        if hit is None:
            hit = []
            stack = [(self.vocab.trie, states)]
            while stack:
                node, st = stack.pop()
                for b, child in node.items():
                    if b is None:
                        hit.extend(child)
                        continue
                    nst = self.step(st, b)
                    if nst:
                        stack.append((child, nst))
            self._mask_cache[states] = hit
        return hit


class GroundingConstraint:
    """Per-row state: call `mask(logits)` before sampling and `advance(token_id, token_bytes)` after."""

    def __init__(self, grammar: GroundingGrammar, stop_ids):
        self.g = grammar
        self.states = grammar.initial
        self.stop_ids = sorted(stop_ids)

    @property
    def complete(self) -> bool:
        return self.g.accepting(self.states)

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """logits (V,) -> copy with every token that would break the grammar set to -inf."""
        allow = list(self.g.allowed(self.states))
        if self.complete or not allow:  # nothing else fits: let it stop rather than emit garbage
            allow += [t for t in self.stop_ids if t < logits.shape[-1]]
        keep = torch.full_like(logits, float("-inf"))
        idx = torch.tensor(allow, dtype=torch.long, device=logits.device)
        keep[idx] = logits[idx]
        return keep

    def advance(self, data: bytes) -> None:
        self.states = self.g.feed(self.states, data)


_VOCABS: dict[int, tuple[object, _Vocab]] = {}
_GRAMMARS: dict[tuple[int, str], GroundingGrammar] = {}


def _vocab_for(tokenizer) -> _Vocab:
    hit = _VOCABS.get(id(tokenizer))
    if hit is None or hit[0] is not tokenizer:
        hit = (tokenizer, _Vocab(tokenizer))
        _VOCABS[id(tokenizer)] = hit
    return hit[1]


def grounding_constraint(tokenizer, kind: str, stop_ids) -> GroundingConstraint:
    """A fresh per-row constraint; the compiled grammar and token trie are cached per tokenizer and kind."""
    key = (id(tokenizer), kind)
    g = _GRAMMARS.get(key)
    if g is None or _vocab_for(tokenizer) is not g.vocab:
        g = _GRAMMARS[key] = GroundingGrammar(tokenizer, kind)
    return GroundingConstraint(g, stop_ids)


def token_bytes(tokenizer, token_id: int) -> bytes:
    """The raw bytes a byte-level BPE token stands for (b'' for special tokens)."""
    tok = tokenizer.tok.id_to_token(token_id)
    if tok is None or token_id in tokenizer.all_special_ids:
        return b""
    dec = _BYTE_DECODER
    return bytes(dec[ch] for ch in tok if ch in dec)


_BYTE_DECODER = _bytes_decoder()
