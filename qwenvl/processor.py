"""Messages -> `Batch`: chat template, image/video preprocessing, placeholder expansion, left padding.

Matches qwen-vl-utils 0.0.10/0.0.11 followed by the transformers 4.51.3 `Qwen2_5_VLProcessor` (reference.md
§3, §4, §8). Each image is resized once, with per-item options first and the processor's defaults second.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from . import chat_template
from .batch import Batch, MediaInfo
from .config import QwenVLConfig
from .media import image as im
from .media.common import MAX_DECODE_PIXELS, MAX_PIXELS, MIN_PIXELS, VIDEO_MIN_PIXELS, MediaError
from .messages import check_value, is_batch, media_parts, normalize_conversation, template_view
from .tokenizer import Tokenizer

log = logging.getLogger(__name__)

# The report's long-video evaluation limits: at most 768 frames and 24,576 video tokens. The per-frame floor is
# lowered too: with the default 128*28*28 floor, 768 frames alone would take ~51k tokens at 16:9.
LONG_VIDEO = {"max_frames": 768, "total_pixels": 24576 * 28 * 28, "video_min_pixels": 32 * 28 * 28}
VIDEO_OPTIONS = ("fps", "nframes", "min_frames", "max_frames", "total_pixels", "video_start", "video_end")


@dataclass
class _Media:
    kind: str
    pixels: torch.Tensor  # (rows, patch_dim)
    grid: tuple[int, int, int]
    info: MediaInfo
    second_per_grid: float | None = None

    @property
    def tokens(self) -> int:
        t, h, w = self.grid
        return t * h * w // 4


def video_options(part: dict, defaults: dict) -> dict:
    """A video part's own options, completed from the call's defaults (fps xor nframes; video_min/max_pixels
    become the part's min/max_pixels)."""
    ele = {k: v for k, v in part.items() if k not in ("type", "value")}
    for k in VIDEO_OPTIONS:
        if k in defaults and k not in ele and not (k in ("fps", "nframes") and ("fps" in ele or "nframes" in ele)):
            ele[k] = defaults[k]
    for k in ("min_pixels", "max_pixels"):
        if f"video_{k}" in defaults and k not in ele:
            ele[k] = defaults[f"video_{k}"]
    return ele


class Processor:
    """Callable: `processor(messages)` -> Batch, for one conversation or a list of conversations."""

    def __init__(self, tokenizer: Tokenizer, config: QwenVLConfig, *, min_pixels: int = MIN_PIXELS,
                 max_pixels: int = MAX_PIXELS, image_mean=im.CLIP_MEAN, image_std=im.CLIP_STD,
                 chat_template_text: str | None = None, max_length: int | None = None,
                 allow_remote_media: bool = False, remote_timeout: float = 10.0,
                 max_remote_bytes: int = 64 * 2**20, max_decode_pixels: int = MAX_DECODE_PIXELS):
        self.tokenizer = tokenizer
        self.config = config
        self.min_pixels, self.max_pixels = int(min_pixels), int(max_pixels)
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)
        self.chat_template = chat_template_text or tokenizer.chat_template
        self.max_length = max_length or config.text.max_position_embeddings
        self.remote = im.RemotePolicy(allow_remote_media, remote_timeout, max_remote_bytes)
        self.max_decode_pixels = max_decode_pixels
        v = config.vision
        self.factor = v.patch_size * v.spatial_merge_size
        self.temporal = v.temporal_patch_size
        # variables transformers hands every chat template
        tc = tokenizer.config
        self.template_vars = {k: (tc[k]["content"] if isinstance(tc.get(k), dict) else tc.get(k))
                              for k in ("bos_token", "eos_token", "pad_token", "unk_token")}

    @classmethod
    def from_dir(cls, path: str | os.PathLike, tokenizer: Tokenizer, config: QwenVLConfig, **kw) -> "Processor":
        """Defaults from preprocessor_config.json (min/max pixels, mean/std) when the file exists."""
        f = Path(path) / "preprocessor_config.json"
        pc: dict = {}
        if f.is_file():
            try:
                pc = json.loads(f.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{f} is not valid JSON ({e})") from None
        size = pc.get("size") or {}
        opts = dict(min_pixels=pc.get("min_pixels", size.get("shortest_edge", MIN_PIXELS)),
                    max_pixels=pc.get("max_pixels", size.get("longest_edge", MAX_PIXELS)),
                    image_mean=pc.get("image_mean", im.CLIP_MEAN), image_std=pc.get("image_std", im.CLIP_STD))
        opts.update(kw)
        return cls(tokenizer, config, **opts)

    # ------------------------------------------------------------------ public
    def render(self, messages, *, add_generation_prompt: bool = True, add_vision_id: bool = False) -> str | list[str]:
        """Prompt text(s) with one placeholder per image/video (before expansion)."""
        convs = messages if is_batch(messages) else [messages]
        texts = [self._render(normalize_conversation(c, f"conversation {i}"), add_generation_prompt, add_vision_id)
                 for i, c in enumerate(convs)]
        return texts if is_batch(messages) else texts[0]

    def _render(self, norm: list[dict], add_generation_prompt: bool, add_vision_id: bool) -> str:
        return chat_template.render(template_view(norm), self.chat_template, add_generation_prompt=add_generation_prompt,
                                    add_vision_id=add_vision_id, **self.template_vars)

    def __call__(self, messages, *, add_generation_prompt: bool = True, add_vision_id: bool = False,
                 truncation: bool = False, max_length: int | None = None, video_fit: str = "error",
                 **media_defaults) -> Batch:
        """Build the model inputs. `media_defaults` apply to every part lacking them: min_pixels, max_pixels
        (images), fps, nframes, min_frames, max_frames, total_pixels, video_start, video_end (videos),
        video_min_pixels, video_max_pixels. `video_fit="downsample"` shrinks videos to fit the context instead
        of raising; `truncation=True` drops the oldest tokens, never cutting inside a vision block."""
        if video_fit not in ("error", "downsample"):
            raise ValueError("video_fit must be 'error' or 'downsample'")
        unknown = set(media_defaults) - {"min_pixels", "max_pixels", "video_min_pixels", "video_max_pixels",
                                         *VIDEO_OPTIONS}
        if unknown:
            raise TypeError(f"unknown processor option(s) {sorted(unknown)}")
        limit = max_length or self.max_length
        single = not is_batch(messages)
        convs = [messages] if single else list(messages)
        rows, row_media, prompts = [], [], []
        for ci, conv in enumerate(convs):
            where = f"conversation {ci}" if not single else "conversation"
            norm = normalize_conversation(conv, where)
            text = self._render(norm, add_generation_prompt, add_vision_id)
            ids = self.tokenizer.encode(text)
            parts = media_parts(norm)
            self._check_placeholders(ids, parts, where)
            media = [self._load(p, f"{where}, {loc}", media_defaults) for loc, p in parts]
            n_total = len(ids) + sum(m.tokens - 1 for m in media)
            if n_total > limit and video_fit == "downsample" and any(m.kind == "video" for m in media):
                media = self._downsample_videos(parts, media, n_total - limit, where, media_defaults)
            ids = self._expand(ids, media)
            if len(ids) > limit:
                ids, media = self._truncate(ids, media, limit, where) if truncation else self._too_long(ids, media,
                                                                                                       limit, where)
            rows.append(ids)
            row_media.append(media)
            prompts.append(text)
        return self._collate(rows, row_media, prompts)

    # ------------------------------------------------------------------ media
    def _load(self, part: dict, where: str, defaults: dict) -> _Media:
        check_value(part, where)
        try:
            if part["type"] == "image":
                return self._image(part, defaults, where)
            return self._video(part, defaults, where)
        except MediaError as e:
            msg = str(e)
            raise MediaError(msg if msg.startswith(where) else f"{where}: {msg}") from None

    def _image(self, part: dict, defaults: dict, where: str) -> _Media:
        img = im.load_image(part["value"], remote=self.remote, max_decode_pixels=self.max_decode_pixels)
        img = im.to_rgb(img)
        opts = {k: part[k] for k in ("min_pixels", "max_pixels", "resized_height", "resized_width") if k in part}
        size = im.target_size(img.height, img.width, opts, int(defaults.get("min_pixels", self.min_pixels)),
                              int(defaults.get("max_pixels", self.max_pixels)), self.factor)
        pixels, grid = im.preprocess_image(img, size, self.image_mean, self.image_std)
        return _Media("image", pixels, grid, MediaInfo("image", (img.height, img.width), size))

    def _video(self, part: dict, defaults: dict, where: str) -> _Media:
        from .media import video as vid

        ele = video_options(part, defaults)
        value = part["value"]
        tmp = None
        try:
            if isinstance(value, str) and value.lower().startswith("data:"):
                value, tmp = self._video_data_url(value)
            ele["video"] = value
            v = vid.fetch_video(ele, allow_remote=self.remote.allow, remote_timeout=self.remote.timeout,
                                max_remote_bytes=self.remote.max_bytes)
        finally:
            if tmp is not None:
                os.unlink(tmp)
        frames = v.frames.to(torch.uint8)  # (T, C, H, W): integer-valued in [0, 255], so exact
        pixels, grid = im.preprocess_frames(frames, self.image_mean, self.image_std, self.temporal)
        info = MediaInfo("video", tuple(v.original_size), tuple(v.resized_size), list(v.frame_times), v.sample_fps)
        return _Media("video", pixels, grid, info, self.temporal / v.sample_fps)

    def _video_data_url(self, url: str):
        head = url[:url.find(",")].lower()
        if head.startswith(("data:video/jpeg", "data:video/jpg", "data:video/png", "data:image")):
            frames = url[url.find(",") + 1:].split(",")  # comma-joined base64 frames (vLLM convention)
            return [im.b64decode(f, f"video frame {i}") for i, f in enumerate(frames)], None
        data = im.read_data_url(url, "video")
        fd, tmp = tempfile.mkstemp(suffix=".mp4")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return tmp, tmp

    def _downsample_videos(self, parts, media, excess, where, defaults):
        """Re-sample videos with a smaller total pixel budget so the prompt fits (requested by the caller)."""
        vids = [i for i, m in enumerate(media) if m.kind == "video"]
        vid_tokens = sum(media[i].tokens for i in vids)
        budget = vid_tokens - excess
        if budget < 4 * len(vids):
            raise MediaError(f"{where}: even downsampled, the videos cannot fit the {self.max_length}-token context")
        media = list(media)
        for i in vids:
            share = int(budget * media[i].tokens / vid_tokens)
            part = dict(parts[i][1])
            for _ in range(12):
                frames = 2 * media[i].grid[0]
                part["total_pixels"] = int(share * 28 * 28 * 0.95)
                per_frame = part["total_pixels"] / frames * 2  # the per-frame cap fetch_video will derive
                part["min_pixels"] = int(max(4 * 28 * 28, min(part.get("min_pixels", VIDEO_MIN_PIXELS), per_frame / 1.06)))
                media[i] = self._load(part, f"{where}, {parts[i][0]}", defaults)
                if media[i].tokens <= share:
                    break
                part["max_frames"] = max(4, frames // 2)  # the frame floor binds: sample fewer frames
            else:
                raise MediaError(f"{where}: could not downsample the video to {share} tokens")
            log.info("%s: downsampled video to %d tokens to fit the context", where, media[i].tokens)
        return media

    # ------------------------------------------------------------------ tokens
    def _check_placeholders(self, ids, parts, where):
        sp = self.tokenizer.special_ids
        n_img = ids.count(sp["<|image_pad|>"])
        n_vid = ids.count(sp["<|video_pad|>"])
        want_img = sum(p["type"] == "image" for _, p in parts)
        want_vid = sum(p["type"] == "video" for _, p in parts)
        if (n_img, n_vid) != (want_img, want_vid):
            raise ValueError(f"{where}: the rendered prompt has {n_img} image / {n_vid} video placeholders for "
                             f"{want_img} image / {want_vid} video parts; remove literal <|image_pad|>/<|video_pad|> "
                             "tokens from the text or fix the chat template")

    def _expand(self, ids: list[int], media: list[_Media]) -> list[int]:
        sp = self.tokenizer.special_ids
        pads = {sp["<|image_pad|>"]: "image", sp["<|video_pad|>"]: "video"}
        queues = {"image": [m for m in media if m.kind == "image"], "video": [m for m in media if m.kind == "video"]}
        out: list[int] = []
        for t in ids:
            kind = pads.get(t)
            if kind is None:
                out.append(t)
            else:
                out.extend([t] * queues[kind].pop(0).tokens)
        return out

    def _too_long(self, ids, media, limit, where):
        vis = sum(m.tokens for m in media)
        raise MediaError(f"{where}: the prompt needs {len(ids)} tokens ({vis} visual) but the context holds "
                         f"{limit}; lower max_pixels / fps / max_frames / total_pixels, pass video_fit='downsample', "
                         "or truncation=True to drop the oldest text")

    def _truncate(self, ids, media, limit, where):
        """Drop the oldest tokens; a cut inside a vision block moves past the block, and its media is dropped."""
        sp = self.tokenizer.special_ids
        start_id, end_id = sp["<|vision_start|>"], sp["<|vision_end|>"]
        cut = len(ids) - limit
        blocks, i = [], 0  # (start, end) spans of vision blocks, in media order
        while i < len(ids):
            if ids[i] == start_id and i + 1 < len(ids) and ids[i + 1] in (sp["<|image_pad|>"], sp["<|video_pad|>"]):
                j = ids.index(end_id, i + 1) if end_id in ids[i + 1:] else len(ids) - 1
                blocks.append((i, j))
                i = j + 1
            else:
                i += 1
        dropped = 0
        for s, e in blocks:
            if s < cut:
                dropped += 1
                if e >= cut:
                    cut = e + 1
        if cut >= len(ids):
            raise MediaError(f"{where}: cannot truncate to {limit} tokens without cutting the last vision block")
        log.warning("%s: truncated %d oldest tokens (%d media dropped)", where, cut, dropped)
        return ids[cut:], media[dropped:]

    def _collate(self, rows, row_media, prompts) -> Batch:
        T = max(len(r) for r in rows)
        B = len(rows)
        input_ids = torch.full((B, T), self.tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros((B, T), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, T - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, T - len(r):] = 1
        flat = [m for ms in row_media for m in ms]
        imgs = [m for m in flat if m.kind == "image"]
        vids = [m for m in flat if m.kind == "video"]
        b = Batch(input_ids=input_ids, attention_mask=mask, media=[[m.info for m in ms] for ms in row_media],
                  prompts=prompts)
        if imgs:
            b.pixel_values = torch.cat([m.pixels for m in imgs])
            b.image_grid_thw = torch.tensor([m.grid for m in imgs], dtype=torch.long)
        if vids:
            b.pixel_values_videos = torch.cat([m.pixels for m in vids])
            b.video_grid_thw = torch.tensor([m.grid for m in vids], dtype=torch.long)
            b.second_per_grid_ts = torch.tensor([m.second_per_grid for m in vids], dtype=torch.float32)
        return b

