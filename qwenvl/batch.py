"""`Batch`: what the processor hands the model. Field names are the reference processor's."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping

import torch

MODEL_FIELDS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "pixel_values_videos",
                "video_grid_thw", "second_per_grid_ts")


@dataclass
class MediaInfo:
    """One image or video as the model saw it: original and resized (h, w); for videos the frame times (s)."""
    kind: str  # "image" | "video"
    original_size: tuple[int, int]
    resized_size: tuple[int, int]
    frame_times: list[float] | None = None
    sample_fps: float | None = None


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T) int64, left padded
    attention_mask: torch.Tensor | None = None  # (B, T) int64
    pixel_values: torch.Tensor | None = None  # (N_img_patches, C*T*p*p) float32
    image_grid_thw: torch.Tensor | None = None  # (n_images, 3) int64, in 14-px patches
    pixel_values_videos: torch.Tensor | None = None  # (N_vid_patches, C*T*p*p) float32
    video_grid_thw: torch.Tensor | None = None  # (n_videos, 3) int64
    second_per_grid_ts: torch.Tensor | None = None  # (n_videos,) float32: seconds per temporal patch
    media: list[list[MediaInfo]] = field(default_factory=list)  # per row, in prompt order
    prompts: list[str] = field(default_factory=list)  # rendered prompt text per row (placeholders unexpanded)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Batch":
        """From a mapping with the reference's keys (e.g. a transformers processor output); others are ignored."""
        kw = {}
        for k in MODEL_FIELDS:
            v = d.get(k)
            if v is None:
                continue
            if not isinstance(v, torch.Tensor):
                v = torch.tensor(v, dtype=torch.float32 if k == "second_per_grid_ts" else None)
            kw[k] = v
        return cls(**kw)

    def model_inputs(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in MODEL_FIELDS}

    def to(self, device) -> "Batch":
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor) and f.name not in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts"):
                v = v.to(device)
            out[f.name] = v
        return Batch(**out)

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]


def concat(batches: list[Batch], pad_id: int) -> Batch:
    """One left-padded batch from several (rows in order; media tensors concatenated in the same order, which is
    the order their pad tokens appear in the flattened batch). Used to prefill requests that arrive together."""
    if len(batches) == 1:
        return batches[0]
    T = max(b.input_ids.shape[1] for b in batches)
    B = sum(b.batch_size for b in batches)
    ids = torch.full((B, T), pad_id, dtype=batches[0].input_ids.dtype)
    mask = torch.zeros((B, T), dtype=torch.long)
    r = 0
    for b in batches:
        n, t = b.input_ids.shape
        ids[r:r + n, T - t:] = b.input_ids
        mask[r:r + n, T - t:] = 1 if b.attention_mask is None else b.attention_mask
        r += n

    def cat(name):
        parts = [getattr(b, name) for b in batches if getattr(b, name) is not None]
        return torch.cat(parts) if parts else None
    return Batch(input_ids=ids, attention_mask=mask, pixel_values=cat("pixel_values"),
                 image_grid_thw=cat("image_grid_thw"), pixel_values_videos=cat("pixel_values_videos"),
                 video_grid_thw=cat("video_grid_thw"), second_per_grid_ts=cat("second_per_grid_ts"),
                 media=[m for b in batches for m in (b.media or [[]] * b.batch_size)],
                 prompts=[p for b in batches for p in (b.prompts or [""] * b.batch_size)])
