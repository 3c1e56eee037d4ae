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

    # ------------------------------------------------------------------ continuous batching (eager mode only)
    def _eager_only(self, what: str) -> None:
        if self.static_slot is not None:
            raise ValueError(f"{what} needs an eager (non-static) KV cache")

    def extend_rows(self, other: "KVCache", min_max_len: int = 0) -> tuple[int, int]:
        """Append the rows of `other` (a request that joins a running batch). Both sides are right-aligned at the
        longer length: the shorter side's slots move right and the new front slots stay invalid. Returns
        (shift_self, shift_other), the slots each side moved, so a caller keeps rope positions with
        `delta -= shift`. The buffers are reallocated with at least `min_max_len` slots."""
        self._eager_only("extend_rows")
        other._eager_only("extend_rows")
        if len(self.k) != len(other.k) or self.k[0].shape[1] != other.k[0].shape[1] \
                or self.k[0].shape[3] != other.k[0].shape[3]:
            raise ValueError("extend_rows: the caches come from different models")
        L = max(self.length, other.length)
        s1, s2 = L - self.length, L - other.length
        B1, B2 = self.batch, other.batch
        max_len = max(L, min_max_len)
        k0 = self.k[0]
        shape = (B1 + B2, k0.shape[1], max_len, k0.shape[3])
        for layer in range(len(self.k)):
            for buf, src in ((self.k, other.k), (self.v, other.v)):
                new = torch.zeros(shape, dtype=buf[layer].dtype, device=buf[layer].device)
                new[:B1, :, s1:L] = buf[layer][:, :, : self.length]
                new[B1:, :, s2:L] = src[layer][:, :, : other.length].to(new.dtype)
                buf[layer] = new
        valid = torch.zeros(B1 + B2, max_len, dtype=torch.bool, device=self.valid.device)
        valid[:B1, s1:L] = self.valid[:, : self.length]
        valid[B1:, s2:L] = other.valid[:, : other.length].to(valid.device)
        self.valid, self.max_len, self.length = valid, max_len, L
        return s1, s2

    def trim_front(self) -> int:
        """Drop the leading slots that no row uses (left by rows that left the batch); returns how many were
        dropped, so a caller keeps rope positions with `delta += dropped`."""
        self._eager_only("trim_front")
        used = self.valid[:, : self.length].any(0)
        n = int(used.int().argmax()) if bool(used.any()) else self.length
        if n == 0:
            return 0
        self.k = [k[:, :, n:].clone() for k in self.k]
        self.v = [v[:, :, n:].clone() for v in self.v]
        self.valid = self.valid[:, n:].clone()
        self.max_len -= n
        self.length -= n
        return n

    def ensure_room(self, n: int) -> None:
        """Make room for n more slots, reallocating (doubling) the buffers when they are full."""
        self._eager_only("ensure_room")
        if self.length + n <= self.max_len:
            return
        new_len = max(self.length + n, 2 * self.max_len)
        pad = new_len - self.max_len
        self.k = [torch.nn.functional.pad(k, (0, 0, 0, pad)) for k in self.k]
        self.v = [torch.nn.functional.pad(v, (0, 0, 0, pad)) for v in self.v]
        self.valid = torch.nn.functional.pad(self.valid, (0, pad))
        self.max_len = new_len

    def reset(self) -> None:
        self.length = 0
        self.valid.zero_()
