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
