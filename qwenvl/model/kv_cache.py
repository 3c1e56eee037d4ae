"""Static KV cache: preallocated per-layer buffers written at position tensors (gpt-fast style).

Slots are cache indices (0..max_len-1), not rope positions: MRoPE positions are computed separately.
`valid` marks which slots hold real tokens (left padding stays False), so attention never reads padding.
"""
from __future__ import annotations

import torch


class KVCache:
    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device=None):
        shape = (batch, n_kv_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.valid = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.max_len = max_len
        self.length = 0  # slots written so far (host-side counter; no device sync)
        self.static_slot: torch.Tensor | None = None  # set by make_static(): fixed-shape one-token steps

    def make_static(self) -> None:
        """Switch to fixed-shape decode steps (for CUDA graphs): one token per step, written at the slot held in
        the device tensor `static_slot`, attention over all max_len slots with a mask. Shapes never change, and
        no host value is read inside a step."""
        self.static_slot = torch.tensor([self.length], device=self.valid.device)
        self._ar = torch.arange(self.max_len, device=self.valid.device)

    @property
    def batch(self) -> int:
        return self.valid.shape[0]

    def reserve(self, n: int, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Claim the next n slots for every row; returns their indices (n,). Rows' validity from the mask."""
        if self.static_slot is not None:
            if n != 1:
                raise ValueError("a static KV cache takes one token per step")
            self.valid.index_fill_(1, self.static_slot, True)
            self.length += 1
            return self.static_slot
        if self.length + n > self.max_len:
            raise ValueError(f"KV cache full: {self.length} + {n} tokens > max_len {self.max_len}; "
                             "create the cache with a larger max_len")
        slots = torch.arange(self.length, self.length + n, device=self.valid.device)
        self.valid[:, slots] = True if attention_mask is None else attention_mask.to(self.valid.device, torch.bool)
        self.length += n
        return slots

    def update(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Write k, v (B, Hkv, n, D) at slots; return the used part of the buffers (B, Hkv, length, D)."""
        kc, vc = self.k[layer], self.v[layer]
        kc.index_copy_(2, slots, k.to(kc.dtype))
        vc.index_copy_(2, slots, v.to(vc.dtype))
        if self.static_slot is not None:
            return kc, vc
        return kc[:, :, : self.length], vc[:, :, : self.length]

    def mask(self, slots: torch.Tensor) -> torch.Tensor:
        """(B, 1, n, length) bool: causal over slots, real keys only; a query always sees itself (no NaN rows)."""
        if self.static_slot is not None:  # (B, 1, 1, max_len)
            return ((self._ar <= slots) & self.valid).view(self.batch, 1, 1, self.max_len)
        k = torch.arange(self.length, device=slots.device)
        causal = k.view(1, -1) <= slots.view(-1, 1)  # (n, L)
        m = causal.unsqueeze(0) & self.valid[:, None, : self.length]  # (B, n, L)
        m |= (k.view(1, -1) == slots.view(-1, 1)).unsqueeze(0)
        return m.unsqueeze(1)

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only batch rows `rows` (others finished): later steps no longer compute or read them."""
        self.k = [k.index_select(0, rows) for k in self.k]
        self.v = [v.index_select(0, rows) for v in self.v]
        self.valid = self.valid.index_select(0, rows)

    def reset(self) -> None:
        self.length = 0
        self.valid.zero_()
