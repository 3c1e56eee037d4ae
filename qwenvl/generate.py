"""Minimal greedy decoding over the static KV cache (prefill once, then one token per step).

The full generation API (sampling, streaming, stop strings, batching policy) builds on these two steps.
"""
from __future__ import annotations

import torch

from .batch import Batch
from .model.positions import decode_position_ids


@torch.inference_mode()
def greedy(model, batch: Batch, max_new_tokens: int, stop_ids: set[int] | frozenset = frozenset()) -> list[list[int]]:
    """Greedy continuation of each row; a row stops at its first stop id (kept) or after max_new_tokens."""
    b = batch.to(model.device)
    B, T = b.input_ids.shape
    cache = model.new_cache(B, T + max_new_tokens)
    pos, delta = model.rope_index(b.input_ids, b.attention_mask, b.image_grid_thw, b.video_grid_thw,
                                  b.second_per_grid_ts)
    logits = model(b.input_ids, b.attention_mask, b.pixel_values, b.image_grid_thw, b.pixel_values_videos,
                   b.video_grid_thw, position_ids=pos, cache=cache, logits_to_keep=1)  # prefill
    out: list[list[int]] = [[] for _ in range(B)]
    done = [False] * B
    for step in range(max_new_tokens):
        nxt = logits[:, -1].argmax(-1)  # (B,)
        for i, t in enumerate(nxt.tolist()):
            if not done[i]:
                out[i].append(t)
                done[i] = t in stop_ids
        if all(done) or step == max_new_tokens - 1:
            break
        logits = model(nxt.view(B, 1), position_ids=decode_position_ids(T + step, 1, delta), cache=cache)
    return out
