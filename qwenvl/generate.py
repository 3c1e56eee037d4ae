"""Generation: prefill once, then one token per step over the static KV cache, for a batch of rows.

Rows are left padded and carry their own MRoPE delta; a row that finishes leaves the batch (its cache rows are
dropped), so finished rows stop costing compute. Text is detokenized incrementally; stop strings are cut.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterator

import torch

from .batch import Batch, MediaInfo
from .detokenize import IncrementalDetokenizer
from .model.positions import decode_position_ids
from .sampling import Sampler, SamplingParams


@dataclass
class Usage:
    prompt_tokens: int
    visual_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "visual_tokens": self.visual_tokens,
                "completion_tokens": self.completion_tokens, "total_tokens": self.total_tokens}


@dataclass
class Generation:
    """One row's answer: text (stop strings and special tokens removed), ids (including a final stop token),
    finish_reason 'stop' or 'length', token usage, and the original/resized size of each image and video."""
    text: str
    token_ids: list[int]
    finish_reason: str
    usage: Usage
    media: list[MediaInfo] = field(default_factory=list)
    stop: str | int | None = None  # the stop string or stop token id that ended it


@dataclass
class TokenEvent:
    row: int
    token_id: int
    delta: str
    finished: Generation | None = None


class _Row:
    def __init__(self, i, prompt_ids, params, tokenizer, stop_ids, media, visual, vocab_size, device):
        self.i, self.params = i, params
        self.history = list(prompt_ids)
        self.generated: list[int] = []
        self.sampler = Sampler([params], vocab_size, device)
        self.detok = IncrementalDetokenizer(tokenizer, params.stop)
        self.stop_ids = set(stop_ids) | set(params.stop_token_ids)
        self.media, self.prompt_len, self.visual = media, len(prompt_ids), visual
        self.tokenizer, self.constraint, self._token_bytes = tokenizer, None, None
        if params.constraint is not None:
            from .tasks.constrained import grounding_constraint, token_bytes
            self.constraint = grounding_constraint(tokenizer, params.constraint, self.stop_ids)
            self._token_bytes = token_bytes

    def step(self, logits: torch.Tensor) -> tuple[int, str, Generation | None]:
        if self.constraint is not None:
            logits = self.constraint.mask(logits)
        tok = int(self.sampler(logits.unsqueeze(0), [self.history], [len(self.generated)], [self.stop_ids])[0])
        if self.constraint is not None:
            self.constraint.advance(self._token_bytes(self.tokenizer, tok))
        self.generated.append(tok)
        self.history.append(tok)
        if tok in self.stop_ids:  # the sampler never picks one before min_new_tokens
            return tok, self.detok.finish(), self._done("stop", tok)
        delta = self.detok.add(tok)
        if self.detok.stopped:
            return tok, delta + self.detok.finish(), self._done("stop", self.detok.stop_string)
        if len(self.generated) >= self.params.max_new_tokens:
            return tok, delta + self.detok.finish(), self._done("length", None)
        return tok, delta, None

    def _done(self, reason, stop) -> Generation:
        return Generation(self.detok.text, list(self.generated), reason,
                          Usage(self.prompt_len, self.visual, len(self.generated)), self.media, stop)


DECODE_MODES = ("auto", "eager", "static", "graph")


def _decode_mode(mode: str, device: torch.device) -> str:
    if mode not in DECODE_MODES:
        raise ValueError(f"decode mode must be one of {DECODE_MODES}, got {mode!r}")
    if mode == "auto":
        off = os.environ.get("QWENVL_CUDA_GRAPHS", "1") == "0"
        return "graph" if device.type == "cuda" and not off else "eager"
    if mode == "graph" and device.type != "cuda":
        raise ValueError("decode mode 'graph' (CUDA graphs) needs a CUDA model")
    return mode


@torch.inference_mode()
def run(model, tokenizer, batch: Batch, params: list[SamplingParams], stop_ids: set[int],
        decode: str = "auto") -> Iterator[TokenEvent]:
    """Yield one TokenEvent per generated token of every row, the last one of a row carrying its Generation.

    decode: 'eager' (one forward per step over the used part of the cache), 'static' (fixed shapes over the whole
    cache), 'graph' (static steps replayed as CUDA graphs), 'auto' (graph on CUDA unless QWENVL_CUDA_GRAPHS=0,
    else eager)."""
    mode = _decode_mode(decode, model.device)
    B, T = batch.input_ids.shape
    rows = [new_row(model, tokenizer, batch, i, params[i], stop_ids) for i in range(B)]
    cache, delta, logits = prefill(model, batch, max(p.max_new_tokens for p in params))  # logits: (B, V)
    active = list(range(B))  # batch index -> row
    step = 0
    decoder = None
    if mode != "eager":
        cache.make_static()
    while active:
        next_ids, keep = [], []
        for j, r in enumerate(active):
            tok, text, done = rows[r].step(logits[j].float())
            yield TokenEvent(r, tok, text, done)
            if done is None:
                keep.append(j)
                next_ids.append(tok)
        if not keep:
            return
        if len(keep) < len(active):  # finished rows leave the batch
            idx = torch.tensor(keep, device=delta.device)
            cache.keep_rows(idx)
            delta = delta[idx]
            active = [active[j] for j in keep]
        ids = torch.tensor(next_ids, device=model.device).view(-1, 1)
        pos = decode_position_ids(T + step, 1, delta)
        if mode == "graph":
            if decoder is None or not decoder.matches(cache):  # first step, or rows left the batch
                from .model.cuda_graph import GraphDecoder
                cache.static_slot.fill_(T + step)
                decoder = GraphDecoder(model, cache)
            logits = decoder.step(ids, pos, T + step)
        else:
            if mode == "static":
                cache.static_slot.fill_(T + step)
            logits = model(ids, position_ids=pos, cache=cache)[:, -1]
        step += 1


# ---------------------------------------------------------------- pieces for a scheduler (continuous batching)
def new_row(model, tokenizer, batch: Batch, i: int, params: SamplingParams, stop_ids: set[int]) -> _Row:
    """The per-row state `run()` keeps (sampler, detokenizer, stops, constraint) for row i of a prompt batch;
    `row.step(logits)` -> (token_id, text delta, Generation or None)."""
    c = model.config
    ids = batch.input_ids[i]
    if batch.attention_mask is not None:
        ids = ids[batch.attention_mask[i].bool()]
    ids = ids.tolist()
    visual = sum(t in (c.image_token_id, c.video_token_id) for t in ids)
    return _Row(i, ids, params, tokenizer, stop_ids, batch.media[i] if i < len(batch.media) else [], visual,
                c.text.vocab_size, model.device)


@torch.inference_mode()
def prefill(model, batch: Batch, room: int):
    """Run a prompt batch once into a fresh eager KV cache with `room` free slots per row.
    Returns (cache, rope deltas (B, 1), last-position logits (B, V))."""
    b = batch.to(model.device)
    B, T = b.input_ids.shape
    mask = b.attention_mask if b.attention_mask is not None else torch.ones_like(b.input_ids)
    cache = model.new_cache(B, T + max(1, room))
    pos, delta = model.rope_index(b.input_ids, mask, b.image_grid_thw, b.video_grid_thw, b.second_per_grid_ts)
    logits = model(b.input_ids, mask, b.pixel_values, b.image_grid_thw, b.pixel_values_videos, b.video_grid_thw,
                   position_ids=pos, cache=cache, logits_to_keep=1)[:, -1]
    return cache, delta, logits


@torch.inference_mode()
def decode_step(model, cache, next_ids: list[int], delta: torch.Tensor) -> torch.Tensor:
    """One eager decode step: one token per cache row at the next slot (rope position slot + delta).
    Returns logits (B, V)."""
    cache.ensure_room(1)
    ids = torch.tensor(next_ids, device=model.device).view(-1, 1)
    pos = decode_position_ids(cache.length, 1, delta)
    return model(ids, position_ids=pos, cache=cache)[:, -1]


def generate(model, tokenizer, batch: Batch, params: list[SamplingParams], stop_ids: set[int],
             decode: str = "auto") -> list[Generation]:
    out: list[Generation | None] = [None] * batch.batch_size
    for ev in run(model, tokenizer, batch, params, stop_ids, decode):
        if ev.finished is not None:
            out[ev.row] = ev.finished
    return out  # type: ignore[return-value]

