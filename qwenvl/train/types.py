"""What the training data pipeline hands the trainer: one tokenized sample with labels and its media tensors."""
from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100  # label value that takes no loss (as in transformers / PyTorch cross_entropy ignore_index)


class DataError(ValueError):
    """A training record that cannot be used; the message names the file, line and field."""


@dataclass
class TrainSample:
    """One conversation, tokenized. Labels are IGNORE everywhere except assistant answers (with <|im_end|>)."""
    input_ids: torch.Tensor  # (T,) int64
    labels: torch.Tensor  # (T,) int64
    position_ids: torch.Tensor  # (3, T) int64 MRoPE positions of this sample alone
    pixel_values: torch.Tensor | None = None  # (N_img_patches, patch_dim) float32
    image_grid_thw: torch.Tensor | None = None  # (n_images, 3)
    pixel_values_videos: torch.Tensor | None = None
    video_grid_thw: torch.Tensor | None = None
    second_per_grid_ts: torch.Tensor | None = None  # (n_videos,)
    source: str = ""  # "file.jsonl:12" for error messages and logs

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_loss_tokens(self) -> int:
        return int((self.labels != IGNORE).sum())


@dataclass
class PreferencePair:
    """A DPO pair: the same prompt with a chosen and a rejected answer (each a full TrainSample)."""
    chosen: TrainSample
    rejected: TrainSample
    source: str = ""
