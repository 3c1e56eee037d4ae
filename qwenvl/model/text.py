"""Qwen2.5 decoder with MRoPE (reference.md §6.2, §7): GQA attention with q/k/v bias, SwiGLU MLP, RMSNorm."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import TextConfig
from .kv_cache import KVCache
from .layers import RMSNorm, apply_rotary


class Attention(nn.Module):
    def __init__(self, cfg: TextConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=True)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=False)
        self.qkv_fused = None  # set by model.packed.pack_model (inference on CPU)

    def forward(self, x, cos, sin, mask, cache: KVCache | None = None, slots=None, segments=None):
        B, T, _ = x.shape
        if self.qkv_fused is not None:
            q, k, v = self.qkv_fused(x)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = v.view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, D), model dtype
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, slots, k, v)  # (B, Hkv, L, D)
        gqa = self.n_kv != self.n_heads
        if segments is not None:  # packed samples: causal attention inside each [start, end) only
            o = torch.cat([F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], is_causal=True,
                                                          enable_gqa=gqa) for a, b in segments], dim=2)
        elif mask is None:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return self.o_proj(o.transpose(1, 2).reshape(B, T, -1))  # (B, T, C)


class MLP(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.gate_up_fused = None  # set by model.packed.pack_model

    def forward(self, x):
        g, u = self.gate_up_fused(x) if self.gate_up_fused is not None else (self.gate_proj(x), self.up_proj(x))
        return self.down_proj(F.silu(g) * u)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TextConfig, layer_idx: int):
        super().__init__()
        self.self_attn = Attention(cfg, layer_idx)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, mask, cache=None, slots=None, segments=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, slots, segments)
        return x + self.mlp(self.post_attention_layernorm(x))


class TextModel(nn.Module):
    """Embeddings, decoder layers and final norm (HF names: model.embed_tokens, model.layers.N, model.norm)."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.gradient_checkpointing = False  # runtime knob (training): recompute each layer in backward

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                cache: KVCache | None = None, slots: torch.Tensor | None = None, segments=None) -> torch.Tensor:
        """x: (B, T, C) input embeddings; cos/sin: (B, T, D). Returns normed hidden states (B, T, C).
        `segments` [(start, end), ...]: packed samples attend only within their own span (training)."""
        ckpt = self.gradient_checkpointing and torch.is_grad_enabled()
        for layer in self.layers:
            if ckpt:
                x = checkpoint(layer, x, cos, sin, mask, cache, slots, segments, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, cache, slots, segments)
        return self.norm(x)
