"""Vision tower: dynamic-resolution ViT with window attention, 2D rotary and the 2x2 merger.

Mirrors transformers 4.51.3 `Qwen2_5_VisionTransformerPretrainedModel` (reference.md §5) with attention
computed per segment (window / temporal group), like the FA2 varlen path, never as one big masked attention.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import VisionConfig
from . import positions
from .layers import RMSNorm, VisionMLP, apply_rotary, inv_freq


class PatchEmbed(nn.Module):
    """Conv3d with kernel = stride, computed as one matmul: (N, C*T*p*p) @ W^T -> (N, hidden)."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.proj = nn.Conv3d(cfg.in_channels, cfg.hidden_size,
                              kernel_size=(cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size),
                              stride=(cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size), bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.proj.weight
        return F.linear(x.to(w.dtype), w.reshape(w.shape[0], -1))


@dataclass
class SegmentPlan:
    """Attention segments grouped by length: for each length L, an (n, L) index of rows, or a plain slice.
    Also the raw boundaries (`cu`, int32) and the longest segment, for a varlen kernel (flash-attn)."""
    groups: list[tuple[int, torch.Tensor | None, int]]  # (L, idx or None, start when idx is None)
    cu: torch.Tensor | None = None
    max_len: int = 0

    @classmethod
    def from_cu_seqlens(cls, cu: torch.Tensor) -> "SegmentPlan":
        cu = cu.to(torch.int64)
        lens = cu[1:] - cu[:-1]
        starts = cu[:-1]
        groups = []
        extra = dict(cu=cu.to(torch.int32), max_len=int(lens.max()) if len(lens) else 0)
        if len(lens) == 1:
            groups.append((int(lens[0]), None, int(starts[0])))
            return cls(groups, **extra)
        for L in torch.unique(lens).tolist():
            if L == 0:
                continue
            st = starts[lens == L]
            groups.append((L, st.unsqueeze(1) + torch.arange(L), 0))
        return cls(groups, **extra)

    def to(self, device) -> "SegmentPlan":
        return SegmentPlan([(L, None if i is None else i.to(device), s) for L, i, s in self.groups],
                           None if self.cu is None else self.cu.to(device), self.max_len)


def flash_varlen(q: torch.Tensor):
    """flash-attn's varlen kernel when installed and usable for q (CUDA, fp16/bf16), else None (SDPA path)."""
    if not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16):
        return None
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return None
    return flash_attn_varlen_func


def segment_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: SegmentPlan,
                      flash=None) -> torch.Tensor:
    """Block-diagonal non-causal attention. q, k, v: (N, H, D) -> (N, H, D). `flash`: a varlen kernel with
    flash-attn's signature (one call over all segments), else SDPA per group of equal-length segments."""
    if flash is not None and plan.cu is not None:
        return flash(q, k, v, plan.cu, plan.cu, plan.max_len, plan.max_len)
    out = torch.empty_like(q) if len(plan.groups) != 1 or plan.groups[0][1] is not None else None
    for L, idx, start in plan.groups:
        if idx is None:  # one contiguous segment
            qs, ks, vs = (t[start:start + L].transpose(0, 1).unsqueeze(0) for t in (q, k, v))  # (1, H, L, D)
            o = F.scaled_dot_product_attention(qs, ks, vs)[0].transpose(0, 1)  # (L, H, D)
            if out is None:
                return o
            out[start:start + L] = o
        else:  # n segments of equal length L, batched in one call
            qs, ks, vs = (t[idx].transpose(1, 2) for t in (q, k, v))  # (n, H, L, D)
            o = F.scaled_dot_product_attention(qs, ks, vs).transpose(1, 2)  # (n, L, H, D)
            out[idx] = o
    return out


class VisionAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, plan: SegmentPlan) -> torch.Tensor:
        N, C = x.shape
        q, k, v = self.qkv(x).view(N, 3, self.num_heads, -1).unbind(1)  # each (N, H, D)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)  # fp32 rotation, cast back
        o = segment_attention(q, k, v, plan, flash_varlen(q))  # (N, H, D)
        return self.proj(o.reshape(N, C))


class VisionBlock(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.norm1 = RMSNorm(cfg.hidden_size, eps=1e-6)  # vision eps is fixed at 1e-6 in the reference
        self.norm2 = RMSNorm(cfg.hidden_size, eps=1e-6)
        self.attn = VisionAttention(cfg.hidden_size, cfg.num_heads)
        self.mlp = VisionMLP(cfg.hidden_size, cfg.intermediate_size, bias=True)

    def forward(self, x, cos, sin, plan):
        x = x + self.attn(self.norm1(x), cos, sin, plan)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    """RMSNorm, concatenate each 2x2 block (4 consecutive rows), Linear - exact GELU - Linear."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        dim = cfg.hidden_size * cfg.spatial_merge_size ** 2
        self.ln_q = RMSNorm(cfg.hidden_size, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, cfg.out_hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln_q(x)
        return self.mlp(x.view(-1, self.mlp[0].in_features))  # (N/4, out_hidden)


@dataclass
class GridPlan:
    """Everything that depends only on the grids: cached per (grids, device)."""
    window_index: torch.Tensor  # (N/4,) merged-token ids in window order
    reverse: torch.Tensor  # (N/4,) inverse permutation
    cos: torch.Tensor  # (N, 1, D) fp32, in window order
    sin: torch.Tensor
    window: SegmentPlan
    full: SegmentPlan


class VisionTransformer(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.blocks = nn.ModuleList(VisionBlock(cfg) for _ in range(cfg.depth))
        self.merger = PatchMerger(cfg)
        self.fullatt = frozenset(cfg.fullatt_block_indexes)
        self._plans: OrderedDict = OrderedDict()
        self.gradient_checkpointing = False  # runtime knob (training): recompute each block in backward

    def plan(self, grid_thw, device) -> GridPlan:
        key = (tuple(map(tuple, positions._grids(grid_thw))), str(device))
        hit = self._plans.get(key)
        if hit is not None:
            self._plans.move_to_end(key)
            return hit
        c = self.cfg
        unit = c.spatial_merge_size ** 2
        widx, cu_win = positions.window_index(grid_thw, c.spatial_merge_size, c.window_size, c.patch_size)
        ids = positions.vision_rotary_ids(grid_thw, c.spatial_merge_size)  # (N, 2)
        n = ids.shape[0]
        ids = ids.view(n // unit, unit, 2)[widx].view(n, 2)
        freqs = inv_freq(c.head_dim // 2, 10000.0)  # (D/4,)
        ang = (ids.unsqueeze(-1).float() * freqs).reshape(n, -1)  # (N, D/2): [h freqs, w freqs]
        emb = torch.cat((ang, ang), dim=-1).unsqueeze(1)  # (N, 1, D)
        plan = GridPlan(widx.to(device), torch.argsort(widx).to(device), emb.cos().to(device), emb.sin().to(device),
                        SegmentPlan.from_cu_seqlens(cu_win).to(device),
                        SegmentPlan.from_cu_seqlens(positions.full_cu_seqlens(grid_thw)).to(device))
        self._plans[key] = plan
        if len(self._plans) > 32:
            self._plans.popitem(last=False)
        return plan

    def forward(self, pixel_values: torch.Tensor, grid_thw) -> torch.Tensor:
        """(N, C*T*p*p) patches of all items -> (N/4, out_hidden) merged tokens in placeholder order."""
        c = self.cfg
        unit = c.spatial_merge_size ** 2
        n_expected = sum(t * h * w for t, h, w in positions._grids(grid_thw))
        if pixel_values.shape[0] != n_expected or pixel_values.shape[-1] != c.patch_dim:
            raise ValueError(f"pixel_values has shape {tuple(pixel_values.shape)} but the grids need "
                             f"({n_expected}, {c.patch_dim})")
        p = self.plan(grid_thw, pixel_values.device)
        x = self.patch_embed(pixel_values)  # (N, C)
        N, C = x.shape
        x = x.view(N // unit, unit, C)[p.window_index].view(N, C)  # window order, 2x2 groups kept together
        ckpt = self.gradient_checkpointing and torch.is_grad_enabled()
        for i, blk in enumerate(self.blocks):
            seg = p.full if i in self.fullatt else p.window
            x = checkpoint(blk, x, p.cos, p.sin, seg, use_reentrant=False) if ckpt else blk(x, p.cos, p.sin, seg)
        x = self.merger(x)  # (N/4, out)
        return x[p.reverse]
