"""Helpers that build tiny reference checkpoints with transformers 4.51.3 (the oracle) and matching inputs."""
from __future__ import annotations

import random
from pathlib import Path

import torch

from qwenvl.tiny import build_tokenizer, randomize_, tiny_config, write_tokenizer


def hf_model(cfg: dict, seed: int = 0, dtype=torch.float32):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    hf_cfg = Qwen2_5_VLConfig(**cfg)
    hf_cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(hf_cfg).eval()
    randomize_(model, seed)
    return model.to(dtype)


def make_reference_dir(path: Path, seed: int = 0, **overrides):
    """Save a randomly initialised reference model + tokenizer with the oracle's own save_pretrained."""
    tok = build_tokenizer()
    cfg = tiny_config(tok, **overrides)
    model = hf_model(cfg, seed)
    model.save_pretrained(path, safe_serialization=True)
    write_tokenizer(tok, path)
    return model, tok, cfg


class InputBuilder:
    """Builds input_ids with vision blocks and random pixel values, the way the reference processor lays them out."""

    def __init__(self, cfg: dict, seed: int = 0):
        self.cfg = cfg
        self.g = torch.Generator().manual_seed(seed)
        self.rng = random.Random(seed)
        v = cfg["vision_config"]
        self.patch_dim = v["in_channels"] * v["temporal_patch_size"] * v["patch_size"] ** 2

    def text(self, n: int) -> list[int]:
        return [self.rng.randrange(0, 300) for _ in range(n)]

    def row(self, parts) -> tuple[list[int], list, list, list]:
        """parts: ints (text length) or ('image', (t,h,w)) / ('video', (t,h,w), s). Returns ids + media lists."""
        ids, images, videos, spg = [], [], [], []
        for p in parts:
            if isinstance(p, int):
                ids += self.text(p)
                continue
            kind, grid = p[0], p[1]
            pad = self.cfg["image_token_id"] if kind == "image" else self.cfg["video_token_id"]
            n = grid[0] * grid[1] * grid[2] // 4
            ids += [self.cfg["vision_start_token_id"]] + [pad] * n + [self.cfg["vision_end_token_id"]]
            (images if kind == "image" else videos).append(grid)
            if kind == "video":
                spg.append(p[2])
        return ids, images, videos, spg

    def batch(self, rows) -> dict:
        """Left-padded batch of rows (each a parts list) as a dict with the reference processor's keys."""
        built = [self.row(r) for r in rows]
        T = max(len(b[0]) for b in built)
        pad = self.cfg["bos_token_id"]
        ids = torch.full((len(rows), T), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), T), dtype=torch.long)
        images, videos, spg = [], [], []
        for i, (r, im, vi, s) in enumerate(built):
            ids[i, T - len(r):] = torch.tensor(r)
            mask[i, T - len(r):] = 1
            images += im
            videos += vi
            spg += s
        out = {"input_ids": ids, "attention_mask": mask}
        if images:
            out["image_grid_thw"] = torch.tensor(images)
            out["pixel_values"] = torch.randn(sum(t * h * w for t, h, w in images), self.patch_dim, generator=self.g)
        if videos:
            out["video_grid_thw"] = torch.tensor(videos)
            out["pixel_values_videos"] = torch.randn(sum(t * h * w for t, h, w in videos), self.patch_dim,
                                                     generator=self.g)
            out["second_per_grid_ts"] = torch.tensor(spg, dtype=torch.float32)
        return out


def reference_logits(model, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs, use_cache=False).logits


# ----------------------------------------------------------------------------- reference processor
def hf_processor(tok, chat_template: str, min_pixels: int = 3136, max_pixels: int = 12845056):
    """transformers 4.51.3 Qwen2_5_VLProcessor (slow image processor) around our test tokenizer."""
    from transformers import Qwen2_5_VLProcessor, Qwen2TokenizerFast, Qwen2VLImageProcessor

    t = Qwen2TokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                           unk_token=None, bos_token=None)
    t.padding_side = "left"
    ip = Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels)
    return Qwen2_5_VLProcessor(image_processor=ip, tokenizer=t, chat_template=chat_template)


def qvu_smart_resize(h, w, factor=28, min_pixels=3136, max_pixels=12845056):
    """qwen-vl-utils smart_resize written independently from reference.md §3.2 (test-side oracle)."""
    import math
    if max(h, w) / min(h, w) > 200:
        raise ValueError("ratio")
    hb, wb = max(factor, round(h / factor) * factor), max(factor, round(w / factor) * factor)
    if hb * wb > max_pixels:
        beta = math.sqrt(h * w / max_pixels)
        hb, wb = math.floor(h / beta / factor) * factor, math.floor(w / beta / factor) * factor
    elif hb * wb < min_pixels:
        beta = math.sqrt(min_pixels / (h * w))
        hb, wb = math.ceil(h * beta / factor) * factor, math.ceil(w * beta / factor) * factor
    return hb, wb


def qvu_fetch_image(img, min_pixels=3136, max_pixels=12845056):
    """qwen-vl-utils fetch_image on a PIL image: RGBA on white, smart_resize, PIL resize (default bicubic)."""
    from PIL import Image
    if img.mode == "RGBA":
        white = Image.new("RGB", img.size, (255, 255, 255))
        white.paste(img, mask=img.split()[3])
        img = white
    else:
        img = img.convert("RGB")
    h, w = qvu_smart_resize(img.height, img.width, min_pixels=min_pixels, max_pixels=max_pixels)
    return img.resize((w, h))
