"""Leaf modules and rotary helpers shared by both towers (reference.md §5.5, §6.2, §9.2)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """Statistics in fp32, cast back to the input dtype, then the weight multiply (Qwen2RMSNorm numerics)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """NeoX-style rotation x*cos + rotate_half(x)*sin in the dtype of cos/sin, result in x's dtype."""
    dtype = x.dtype
    x = x.to(cos.dtype)
    return (x * cos + rotate_half(x) * sin).to(dtype)


def inv_freq(dim: int, theta: float, device=None) -> torch.Tensor:
    """(dim/2,) float32 inverse frequencies 1/theta^(2j/dim), computed as the reference does."""
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim))


def mrope_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float, mrope_section, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """MRoPE tables (B, T, head_dim) from (3, B, T) ids.

    Frequency j of the half dim takes its position from component t for j < s0, h for j < s0+s1, w otherwise;
    angles in fp32 (one product, as the reference), cos/sin cast to the model dtype.
    """
    freqs = inv_freq(head_dim, theta, position_ids.device)  # (D/2,)
    s0, s1, s2 = mrope_section
    dev = position_ids.device  # built there: no host-to-device copy (decode steps are captured as CUDA graphs)
    comp = torch.cat([torch.full((s0,), 0, device=dev), torch.full((s1,), 1, device=dev),
                      torch.full((s2,), 2, device=dev)])
    pos = position_ids.float()  # (3, B, T)
    sel = pos[comp]  # (D/2, B, T): per frequency, the component it uses
    ang = sel.permute(1, 2, 0) * freqs  # (B, T, D/2)
    emb = torch.cat((ang, ang), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


class VisionMLP(nn.Module):
    """SwiGLU with biases (vision blocks)."""

    def __init__(self, dim: int, hidden: int, bias: bool = True):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=bias)
        self.up_proj = nn.Linear(dim, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, dim, bias=bias)
        self.gate_up_fused = None  # set by model.packed.pack_model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, u = self.gate_up_fused(x) if self.gate_up_fused is not None else (self.gate_proj(x), self.up_proj(x))
        return self.down_proj(F.silu(g) * u)


def mrope_reach(head_dim: int, theta: float, mrope_section, span: int) -> dict[str, float]:
    """Per MRoPE component (t, h, w): the angle, in radians, by which that component's fastest frequency turns
    between two positions `span` apart (e.g. the first and last rows or columns of a picture, in merged tokens).

    Attention sees where a visual token lies only through these angles. A component that turns far less than a
    radian across the picture leaves its tokens indistinguishable along that axis: with head_dim 64, theta 1e6 and
    sections [16, 8, 8] the columns of a 16-token-wide picture span 5e-4 rad.
    """
    freqs = inv_freq(head_dim, theta)
    out, start = {}, 0
    for name, n in zip("thw", mrope_section):
        out[name] = float(freqs[start]) * span if n else 0.0  # freqs fall with the index: the first is the fastest
        start += n
    return out


def mrope_alias(head_dim: int, theta: float, mrope_section, span: int) -> dict[str, dict | None]:
    """Per MRoPE component (t, h, w): the offset in 2..`span` whose rotary code looks most like offset 0.

    A component's code for a position is its frequencies' rotations; two positions d apart are alike by
    K(d) = mean_j cos(w_j d) over that component's frequencies (1: the same code). A good code falls with d over
    the range the model must tell apart. When K comes back above K(1) at some d >= 2, positions d apart look
    nearer than neighbours do: the axis aliases, and reading an absolute value off it is ambiguous. With theta 5
    and sections [4, 14, 14] (the embedded model) the temporal component's four frequencies lie within 15 % of
    1 rad per position, so K(7) = 0.91 against K(1) = 0.60: video frames 3.5 s apart (2 positions per second)
    carry nearly the same temporal code. Returns {"offset", "similarity", "neighbour", "aliased"} per component
    (None for an empty section or a span under 2).
    """
    freqs = inv_freq(head_dim, theta).double()
    out, start = {}, 0
    for name, n in zip("thw", mrope_section):
        w = freqs[start:start + n]
        start += n
        if n == 0 or span < 2:
            out[name] = None
            continue
        d = torch.arange(1, span + 1, dtype=torch.float64)
        k = torch.cos(d[:, None] * w[None, :]).mean(dim=1)  # (span,) K(1..span)
        i = int(k[1:].argmax()) + 1
        out[name] = {"offset": i + 1, "similarity": float(k[i]), "neighbour": float(k[0]),
                     "aliased": bool(k[i] > k[0])}
    return out
