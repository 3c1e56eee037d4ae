"""Prefill + cached decode steps equal a full recompute."""
import torch

import qwenvl
from oracle import InputBuilder
from qwenvl.model.positions import decode_position_ids


def _decode_vs_recompute(vlm, inputs, steps=8):
    m = vlm.model
    b = qwenvl.Batch.from_dict(inputs)
    B, T = b.input_ids.shape
    g = torch.Generator().manual_seed(0)
    new = torch.randint(0, 300, (B, steps), generator=g)
    with torch.no_grad():
        cache = m.new_cache(B, T + steps + 3)
        pos, delta = m.rope_index(b.input_ids, b.attention_mask, b.image_grid_thw, b.video_grid_thw,
                                  b.second_per_grid_ts)
        step_logits = [m(b.input_ids, b.attention_mask, b.pixel_values, b.image_grid_thw, b.pixel_values_videos,
                         b.video_grid_thw, position_ids=pos, cache=cache)[:, -1]]
        for i in range(steps):
            p = decode_position_ids(T + i, 1, delta)
            step_logits.append(m(new[:, i:i + 1], position_ids=p, cache=cache)[:, -1])
        cached = torch.stack(step_logits, 1)  # (B, steps+1, V)
        full_ids = torch.cat([b.input_ids, new], 1)
        full_mask = torch.cat([b.attention_mask, torch.ones(B, steps, dtype=torch.long)], 1)
        full = m(full_ids, full_mask, b.pixel_values, b.image_grid_thw, b.pixel_values_videos, b.video_grid_thw,
                 b.second_per_grid_ts)[:, T - 1:]
    return (cached - full).abs().max().item()


def test_cached_decode_equals_recompute_image_video(ref_dir):
    path, _, cfg = ref_dir
    vlm = qwenvl.load(path, dtype=torch.float32)
    inputs = InputBuilder(cfg, seed=11).batch([[4, ("image", (1, 8, 12)), 5, ("video", (3, 8, 8), 0.5), 6]])
    assert _decode_vs_recompute(vlm, inputs) <= 1e-5


def test_cached_decode_equals_recompute_left_padded_batch(ref_dir):
    path, _, cfg = ref_dir
    vlm = qwenvl.load(path, dtype=torch.float32)
    inputs = InputBuilder(cfg, seed=12).batch([[3, ("image", (1, 8, 8)), 20], [6], [2, ("video", (2, 8, 12), 1.5), 3]])
    assert _decode_vs_recompute(vlm, inputs) <= 1e-5


def test_cache_overflow_is_a_clear_error(ref_dir):
    path, _, cfg = ref_dir
    vlm = qwenvl.load(path, dtype=torch.float32)
    cache = vlm.model.new_cache(1, 4)
    import pytest
    with pytest.raises(ValueError, match="KV cache full"):
        vlm.model(torch.zeros(1, 6, dtype=torch.long), cache=cache)
