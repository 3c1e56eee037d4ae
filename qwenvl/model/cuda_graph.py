"""Decode steps replayed as CUDA graphs (gpt-fast's "reduce-overhead" idea, without torch.compile).

A 3B decode step on a large GPU is bound by kernel launches, not by the GPU: ~36 layers x ~15 kernels, each
launched from Python. Captured once per batch size as a CUDA graph over the static KV cache
(`KVCache.make_static`), a step becomes one launch. Inputs (token ids, MRoPE positions, the slot) live in fixed
device tensors that are overwritten before each replay; the logits come back in a fixed output tensor.
"""
from __future__ import annotations

import torch

from .kv_cache import KVCache


class GraphDecoder:
    """`step(ids (B, 1), position_ids (3, B, 1), slot int) -> logits (B, V)` for one static cache."""

    def __init__(self, model, cache: KVCache, warmup: int = 2):
        if cache.static_slot is None:
            cache.make_static()
        self.model, self.cache = model, cache
        B, dev = cache.batch, cache.valid.device
        self.ids = torch.zeros(B, 1, dtype=torch.long, device=dev)
        self.pos = torch.zeros(3, B, 1, dtype=torch.long, device=dev)
        self.buffers = cache.k[0].data_ptr()
        length = cache.length
        stream = torch.cuda.Stream(device=dev)
        stream.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(warmup):  # writes at the upcoming slot only; the real step overwrites it
                self._forward()
        torch.cuda.current_stream(dev).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.inference_mode():
            self.out = self._forward()
        cache.length = length  # warm-up and capture advanced the host counter

    def _forward(self) -> torch.Tensor:
        return self.model(self.ids, position_ids=self.pos, cache=self.cache)[:, -1]

    def matches(self, cache: KVCache) -> bool:
        return cache is self.cache and cache.k[0].data_ptr() == self.buffers and cache.batch == self.ids.shape[0]

    def step(self, ids: torch.Tensor, position_ids: torch.Tensor, slot: int) -> torch.Tensor:
        self.ids.copy_(ids)
        self.pos.copy_(position_ids)
        self.cache.static_slot.fill_(slot)
        self.graph.replay()
        self.cache.length += 1
        return self.out
