"""Position maths as pure functions: vision rotary ids, window index, cu_seqlens, and MRoPE position ids.

Mirrors transformers 4.51.3 `rot_pos_emb`, `get_window_index`, `get_rope_index` (reference.md §5.2, §5.3, §6.1),
which equal vLLM's `get_mrope_input_positions`. Everything here is CPU integer maths on small tensors; the
per-grid results are cached because the same image sizes recur.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import torch

Grid = tuple[int, int, int]  # (t, h, w) in 14-px patches; t in temporal patches


def _grids(grid_thw) -> list[Grid]:
    if grid_thw is None:
        return []
    if isinstance(grid_thw, torch.Tensor):
        grid_thw = grid_thw.tolist()
    return [tuple(int(x) for x in g) for g in grid_thw]


# ----------------------------------------------------------------------------- vision tower
@lru_cache(maxsize=256)
def _item_hw_ids(t: int, h: int, w: int, merge: int) -> torch.Tensor:
    hpos = torch.arange(h).unsqueeze(1).expand(h, w)
    wpos = torch.arange(w).unsqueeze(0).expand(h, w)

    def blockwise(p):  # (h, w) -> (h/m * w/m * m * m,) in 2x2-block-major order, like pixel_values rows
        return p.reshape(h // merge, merge, w // merge, merge).permute(0, 2, 1, 3).reshape(-1)

    ids = torch.stack([blockwise(hpos), blockwise(wpos)], dim=-1)  # (h*w, 2)
    return ids.repeat(t, 1)  # (t*h*w, 2): no temporal position in the ViT


def vision_rotary_ids(grid_thw, merge: int = 2) -> torch.Tensor:
    """(N, 2) int64 (row, col) patch coordinates in pixel_values row order, for all items."""
    return torch.cat([_item_hw_ids(t, h, w, merge) for t, h, w in _grids(grid_thw)], dim=0)


@lru_cache(maxsize=256)
def _item_windows(t: int, h: int, w: int, merge: int, win: int) -> tuple[torch.Tensor, torch.Tensor]:
    lh, lw = h // merge, w // merge
    index = torch.arange(t * lh * lw).reshape(t, lh, lw)
    pad_h, pad_w = win - lh % win, win - lw % win  # a full extra window when divisible: empty, dropped below
    nh, nw = (lh + pad_h) // win, (lw + pad_w) // win
    padded = torch.nn.functional.pad(index, (0, pad_w, 0, pad_h), value=-100)
    padded = padded.reshape(t, nh, win, nw, win).permute(0, 1, 3, 2, 4).reshape(t, nh * nw, win, win)
    seqlens = (padded != -100).sum(dim=(2, 3)).reshape(-1)  # merged tokens per window, window order
    flat = padded.reshape(-1)
    return flat[flat != -100], seqlens


def window_index(grid_thw, merge: int = 2, window_size: int = 112, patch_size: int = 14):
    """Window order of merged tokens and window boundaries.

    Returns (index (N/4,) int64: merged-token ids in window order; cu_window_seqlens (n_windows+1,) int32 in
    patches, empty windows removed).
    """
    win = window_size // merge // patch_size
    unit = merge * merge
    idx, lens, offset = [], [torch.zeros(1, dtype=torch.int64)], 0
    for t, h, w in _grids(grid_thw):
        item_idx, seqlens = _item_windows(t, h, w, merge, win)
        idx.append(item_idx + offset)
        lens.append(seqlens * unit)
        offset += t * (h // merge) * (w // merge)
    cu = torch.cat(lens).cumsum(0).to(torch.int32)
    return torch.cat(idx), torch.unique_consecutive(cu)


def full_cu_seqlens(grid_thw) -> torch.Tensor:
    """(n_groups+1,) int32: one segment per temporal group of each item (full attention never crosses them)."""
    lens = [h * w for t, h, w in _grids(grid_thw) for _ in range(t)]
    return torch.cat([torch.zeros(1, dtype=torch.int64), torch.tensor(lens, dtype=torch.int64).cumsum(0)]).to(torch.int32)


# ----------------------------------------------------------------------------- language model
def get_rope_index(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    image_grid_thw=None,
    video_grid_thw=None,
    second_per_grid_ts: Sequence[float] | torch.Tensor | None = None,
    *,
    image_token_id: int,
    video_token_id: int,
    vision_start_token_id: int,
    spatial_merge_size: int = 2,
    tokens_per_second: float = 2,
    frame_index: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MRoPE position ids (3, B, T) int64 and rope deltas (B, 1) int64 (reference semantics, §6.1).

    Text tokens get t = h = w = running index; a vision block of llm grid (t, h/2, w/2) gets
    (trunc(k * s * tokens_per_second), row, col) + base, with s = seconds per temporal patch (0 for images).
    Image/video counters run across the batch. Padded slots get 1; delta = max + 1 - padded length.
    `frame_index=True` is the Qwen2-VL ablation (a config's `time_positions: frame_index`): a video's temporal
    id is its temporal patch index k, whatever the sampling rate.
    """
    B, T = input_ids.shape
    images, videos = _grids(image_grid_thw), _grids(video_grid_thw)
    if not images and not videos:
        if attention_mask is None:
            pos = torch.arange(T, dtype=torch.int64).view(1, 1, T).expand(3, B, T).clone()
            return pos, torch.zeros(B, 1, dtype=torch.int64)
        m = attention_mask.long()
        pos = (m.cumsum(-1) - 1).masked_fill(m == 0, 1)
        delta = pos.max(-1, keepdim=True).values + 1 - T
        return pos.unsqueeze(0).expand(3, B, T).clone(), delta
    if second_per_grid_ts is not None and isinstance(second_per_grid_ts, torch.Tensor):
        second_per_grid_ts = second_per_grid_ts.tolist()
    mask = torch.ones(B, T, dtype=torch.bool) if attention_mask is None else attention_mask.bool().cpu()
    pos = torch.ones(3, B, T, dtype=torch.int64)
    deltas = []
    img_i = vid_i = 0
    for b in range(B):
        tokens = input_ids[b][mask[b]].tolist()
        n = len(tokens)
        starts = [i for i, x in enumerate(tokens[:-1]) if x == vision_start_token_id]
        kinds = [tokens[i + 1] for i in starts]
        remain_img, remain_vid = kinds.count(image_token_id), kinds.count(video_token_id)
        chunks: list[torch.Tensor] = []
        st, nxt = 0, 0  # nxt = next free position id
        for _ in range(remain_img + remain_vid):
            ed_img = _index(tokens, image_token_id, st) if remain_img > 0 else n + 1
            ed_vid = _index(tokens, video_token_id, st) if remain_vid > 0 else n + 1
            if ed_img < ed_vid:
                (t, h, w), s, ed = images[img_i], 0.0, ed_img
                img_i, remain_img = img_i + 1, remain_img - 1
            else:
                (t, h, w), ed = videos[vid_i], ed_vid
                s = 1.0 if second_per_grid_ts is None else float(second_per_grid_ts[vid_i])
                vid_i, remain_vid = vid_i + 1, remain_vid - 1
            gh, gw = h // spatial_merge_size, w // spatial_merge_size
            text_len = ed - st
            chunks.append(torch.arange(text_len).expand(3, -1) + nxt)
            # temporal ids: float32 multiply then truncation, exactly as the reference
            if frame_index and s > 0:
                tt = torch.arange(t, dtype=torch.int64)
            else:
                tt = (torch.arange(t, dtype=torch.float32) * torch.tensor(s, dtype=torch.float32)
                      * torch.tensor(tokens_per_second, dtype=torch.float32)).long()
            t_idx = tt.view(t, 1, 1).expand(t, gh, gw).reshape(-1)
            h_idx = torch.arange(gh).view(1, gh, 1).expand(t, gh, gw).reshape(-1)
            w_idx = torch.arange(gw).view(1, 1, gw).expand(t, gh, gw).reshape(-1)
            vis = torch.stack([t_idx, h_idx, w_idx]) + text_len + nxt
            chunks.append(vis)
            nxt = int(vis.max()) + 1
            st = ed + t * gh * gw
        if st < n:
            chunks.append(torch.arange(n - st).expand(3, -1) + nxt)
        row = torch.cat(chunks, dim=1) if chunks else torch.zeros(3, 0, dtype=torch.int64)
        pos[:, b, mask[b]] = row
        deltas.append((int(row.max()) + 1 if row.numel() else 0) - T)
    return pos, torch.tensor(deltas, dtype=torch.int64).unsqueeze(1)


def _index(tokens: list[int], value: int, start: int) -> int:
    try:
        return tokens.index(value, start)
    except ValueError:
        return len(tokens) + 1


def decode_position_ids(start: int, length: int, rope_deltas: torch.Tensor) -> torch.Tensor:
    """(3, B, length) positions for tokens at cache slots start..start+length-1: slot + delta, on all 3 rows."""
    pos = torch.arange(start, start + length, device=rope_deltas.device).view(1, -1) + rope_deltas.view(-1, 1)
    return pos.unsqueeze(0).expand(3, -1, -1)
