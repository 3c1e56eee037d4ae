"""Packing samples into fixed-budget sequences, and the loss that does not depend on how they were packed.

- `plan_bins` groups sample indices into bins whose true token counts (text + visual tokens) fit the budget
  (first fit, deterministic), so each bin is one forward pass of at most `capacity` tokens. Training packs in the
  shuffled order, so every bin is a random mix of samples; sorting by size first packs tighter but makes each bin
  a run of same-length samples (in mixed data: one task per step), which stalled learning (docs/training.md).
- `collate` concatenates a bin: input ids, labels shifted *within* each sample (the last token of one sample never
  predicts the first of the next), each sample's own MRoPE positions, `segments` for per-sample attention in the
  language model (the vision tower already attends per image / frame group), and the media tensors in order.
- `packed_loss` runs lm_head only at labelled positions, in chunks (a full (T, V) logits tensor would be
  8,192 x 151,936 floats), and returns the summed token loss plus per-sample sums and counts. Dividing by the
  number of loss tokens of the whole optimizer step (all micro-batches, all processes) makes the gradient
  independent of packing.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .types import IGNORE, TrainSample


def plan_bins(token_counts: list[int], capacity: int, order: list[int] | None = None,
              decreasing: bool = True) -> list[list[int]]:
    """Indices grouped into bins of total tokens <= capacity: first fit, over `order` sorted by decreasing size
    (tightest; ties keep `order`) or over `order` as given (`decreasing=False`: each bin a random mix when `order`
    is shuffled, instead of a run of same-length samples)."""
    order = list(range(len(token_counts))) if order is None else list(order)
    too_long = [i for i in order if token_counts[i] > capacity]
    if too_long:
        i = too_long[0]
        raise ValueError(f"sample {i} has {token_counts[i]} tokens, more than the packing length {capacity}; raise "
                         f"pack_length or lower max_pixels / fps for it ({len(too_long)} such samples)")
    ranked = sorted(order, key=lambda i: -token_counts[i]) if decreasing else order  # sorted is stable
    smallest = min((token_counts[i] for i in order), default=0)
    bins: list[list[int]] = []
    room: list[int] = []
    open_bins: list[int] = []  # bins that can still take the smallest sample, in creation order
    for i in ranked:
        n = token_counts[i]
        for k, b in enumerate(open_bins):
            if n <= room[b]:
                bins[b].append(i)
                room[b] -= n
                if room[b] < smallest:  # full: skipping it changes no placement, only the scan's length
                    del open_bins[k]
                break
        else:
            bins.append([i])
            room.append(capacity - n)
            if room[-1] >= smallest:
                open_bins.append(len(bins) - 1)
    return bins


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # (1, L)
    labels: torch.Tensor  # (1, L): target of position t (already shifted inside each sample)
    position_ids: torch.Tensor  # (3, 1, L)
    segments: list[tuple[int, int]]
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    pixel_values_videos: torch.Tensor | None = None
    video_grid_thw: torch.Tensor | None = None
    sources: tuple[str, ...] = ()

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def num_loss_tokens(self) -> int:
        return int((self.labels != IGNORE).sum())

    def to(self, device) -> "PackedBatch":
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return PackedBatch(mv(self.input_ids), mv(self.labels), mv(self.position_ids), self.segments,
                           mv(self.pixel_values), mv(self.image_grid_thw), mv(self.pixel_values_videos),
                           mv(self.video_grid_thw), self.sources)


def _cat(ts):
    ts = [t for t in ts if t is not None]
    return torch.cat(ts) if ts else None


def collate(samples: list[TrainSample]) -> PackedBatch:
    """One packed sequence from samples (in the given order)."""
    ids, labels, pos, segs = [], [], [], []
    start = 0
    for s in samples:
        n = s.num_tokens
        ids.append(s.input_ids)
        labels.append(torch.cat([s.labels[1:], torch.tensor([IGNORE])]))  # position t predicts token t+1
        pos.append(s.position_ids)
        segs.append((start, start + n))
        start += n
    return PackedBatch(
        input_ids=torch.cat(ids).view(1, -1), labels=torch.cat(labels).view(1, -1),
        position_ids=torch.cat(pos, dim=1).unsqueeze(1), segments=segs,
        pixel_values=_cat([s.pixel_values for s in samples]), image_grid_thw=_cat([s.image_grid_thw for s in samples]),
        pixel_values_videos=_cat([s.pixel_values_videos for s in samples]),
        video_grid_thw=_cat([s.video_grid_thw for s in samples]), sources=tuple(s.source for s in samples))


def hidden_states(model, batch: PackedBatch) -> torch.Tensor:
    """(1, L, C) final hidden states of a packed batch, samples isolated."""
    return model(batch.input_ids, pixel_values=batch.pixel_values, image_grid_thw=batch.image_grid_thw,
                 pixel_values_videos=batch.pixel_values_videos, video_grid_thw=batch.video_grid_thw,
                 position_ids=batch.position_ids, segments=batch.segments, return_hidden=True)


def _chunk_loss(h: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = F.linear(h, w).float()  # (n, V)
    return F.cross_entropy(logits, y, reduction="none")


def token_losses(model, hidden: torch.Tensor, labels: torch.Tensor, chunk: int = 1024) -> tuple[torch.Tensor,
                                                                                              torch.Tensor]:
    """Per-token cross entropy (fp32) at labelled positions -> (losses (n,), positions (n,))."""
    pos = (labels.view(-1) != IGNORE).nonzero().view(-1)
    h = hidden.view(-1, hidden.shape[-1]).index_select(0, pos)
    y = labels.view(-1).index_select(0, pos)
    w = model.lm_head.weight
    parts = []
    for a in range(0, h.shape[0], chunk):
        hs, ys = h[a:a + chunk], y[a:a + chunk]
        if torch.is_grad_enabled():  # logits are recomputed in backward instead of kept (n x V floats)
            parts.append(checkpoint(_chunk_loss, hs, w, ys, use_reentrant=False))
        else:
            parts.append(_chunk_loss(hs, w, ys))
    losses = torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)
    return losses, pos


def packed_loss(model, batch: PackedBatch, chunk: int = 1024):
    """(sum of token losses, per-sample loss sums (K,), per-sample loss-token counts (K,))."""
    hidden = hidden_states(model, batch)
    losses, pos = token_losses(model, hidden, batch.labels, chunk)
    bounds = torch.tensor([b for _, b in batch.segments], device=pos.device)
    owner = torch.bucketize(pos, bounds, right=True)  # sample index of each loss position
    K = len(batch.segments)
    per_sum = torch.zeros(K, dtype=torch.float32, device=losses.device).index_add(0, owner, losses)
    per_cnt = torch.bincount(owner, minlength=K)
    return losses.sum(), per_sum, per_cnt
