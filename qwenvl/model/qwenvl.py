"""The whole model: vision tower + Qwen2.5 decoder + lm_head, with vision features scattered into the
placeholder tokens (reference.md §5.6) and MRoPE positions from `positions.get_rope_index`."""
from __future__ import annotations

import torch
from torch import nn

from ..config import QwenVLConfig
from . import positions
from .kv_cache import KVCache
from .layers import mrope_cos_sin
from .text import TextModel
from .vision import VisionTransformer


class QwenVL(nn.Module):
    """HF module tree of the original release: `visual`, `model`, `lm_head` (keys load by name)."""

    def __init__(self, config: QwenVLConfig):
        super().__init__()
        self.config = config
        self.visual = VisionTransformer(config.vision)
        self.model = TextModel(config.text)
        self.lm_head = nn.Linear(config.text.hidden_size, config.text.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    # ------------------------------------------------------------------ pieces
    def rope_index(self, input_ids, attention_mask=None, image_grid_thw=None, video_grid_thw=None,
                   second_per_grid_ts=None):
        """(3, B, T) MRoPE position ids and (B, 1) rope deltas for a prompt."""
        c = self.config
        pos, delta = positions.get_rope_index(
            input_ids.cpu(), None if attention_mask is None else attention_mask.cpu(), image_grid_thw, video_grid_thw,
            second_per_grid_ts, image_token_id=c.image_token_id, video_token_id=c.video_token_id,
            vision_start_token_id=c.vision_start_token_id, spatial_merge_size=c.vision.spatial_merge_size,
            tokens_per_second=c.vision.tokens_per_second, frame_index=c.time_positions == "frame_index")
        return pos.to(input_ids.device), delta.to(input_ids.device)

    def embed(self, input_ids, pixel_values=None, image_grid_thw=None, pixel_values_videos=None,
              video_grid_thw=None) -> torch.Tensor:
        """(B, T, C) token embeddings with image/video features written at their pad tokens."""
        x = self.model.embed_tokens(input_ids)
        for pix, grid, tok, what in ((pixel_values, image_grid_thw, self.config.image_token_id, "image"),
                                     (pixel_values_videos, video_grid_thw, self.config.video_token_id, "video")):
            if pix is None:
                continue
            if grid is None:
                raise ValueError(f"{what} pixels were given without {what}_grid_thw")
            feats = self.visual(pix, grid)  # (n_tokens, C)
            sel = input_ids == tok
            n_tok = int(sel.sum())
            if n_tok != feats.shape[0]:
                raise ValueError(f"{what} tokens and features do not match: {n_tok} <|{what}_pad|> tokens in "
                                 f"input_ids, {feats.shape[0]} features from the grids; build inputs with the processor")
            x = x.masked_scatter(sel.unsqueeze(-1), feats.to(x.dtype))
        return x

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                pixel_values=None, image_grid_thw=None, pixel_values_videos=None, video_grid_thw=None,
                second_per_grid_ts=None, position_ids: torch.Tensor | None = None,
                cache: KVCache | None = None, inputs_embeds: torch.Tensor | None = None,
                logits_to_keep: int = 0, segments=None, return_hidden: bool = False) -> torch.Tensor:
        """Logits (B, T, V) (or the last `logits_to_keep` positions).

        Training: `segments` [(start, end), ...] isolates packed samples (pass their own `position_ids`);
        `return_hidden` returns the final normed hidden states (B, T, C) so the loss can run lm_head in chunks.

        Without `position_ids`, positions are computed for a full prompt. With `cache`, the tokens are written
        at the next free slots; pass `position_ids` for decode steps (see `positions.decode_position_ids`).
        """
        B, T = input_ids.shape
        if segments is not None and position_ids is None:
            raise ValueError("segments (packed samples) need each sample's own position_ids (3, 1, T)")
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids, pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw)
        if position_ids is None:
            position_ids, _ = self.rope_index(input_ids, attention_mask, image_grid_thw, video_grid_thw,
                                              second_per_grid_ts)
        t = self.config.text
        cos, sin = mrope_cos_sin(position_ids, t.head_dim, t.rope_theta, t.mrope_section, inputs_embeds.dtype)
        slots = None
        if cache is not None:
            slots = cache.reserve(T, attention_mask if cache.length == 0 else None)
            mask = cache.mask(slots)
        elif attention_mask is not None and not bool(attention_mask.all()):
            valid = attention_mask.bool()
            idx = torch.arange(T, device=input_ids.device)
            mask = (idx.view(1, -1) <= idx.view(-1, 1)).unsqueeze(0) & valid[:, None, :]  # (B, T, T)
            mask |= torch.eye(T, dtype=torch.bool, device=input_ids.device).unsqueeze(0)
            mask = mask.unsqueeze(1)
        else:
            mask = None
        if segments is not None and (cache is not None or mask is not None or B != 1):
            raise ValueError("segments (packed samples) need batch size 1, no cache and no attention mask")
        hidden = self.model(inputs_embeds, cos, sin, mask, cache, slots, segments)
        if return_hidden:
            return hidden
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        return self.lm_head(hidden)

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        t = self.config.text
        return KVCache(t.num_hidden_layers, batch, t.num_key_value_heads, max_len, t.head_dim, self.dtype, self.device)
