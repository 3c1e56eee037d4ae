"""Images: load from any source, convert to RGB, smart_resize, normalise and patchify exactly as the reference
(qwen-vl-utils `fetch_image` + the slow `Qwen2VLImageProcessor`, reference.md §3)."""
from __future__ import annotations

import base64
import binascii
import io
import os
import re
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .common import MAX_DECODE_PIXELS, MAX_PIXELS, MIN_PIXELS, MediaError, smart_resize

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]*(?:/[\w.+-]+)?)?(?P<params>(?:;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,",
                       re.I)


@dataclass
class RemotePolicy:
    """Remote http(s) media: off unless enabled; when on, bounded in time and size."""
    allow: bool = False
    timeout: float = 10.0
    max_bytes: int = 64 * 2**20


def read_data_url(url: str, what: str = "image") -> bytes:
    m = _DATA_URL.match(url)
    if not m:
        raise MediaError(f"malformed data URL for {what} (starts {url[:40]!r}); expected data:<type>;base64,<data>")
    payload = url[m.end():]
    if not m.group("b64"):
        from urllib.parse import unquote_to_bytes
        return unquote_to_bytes(payload)
    return b64decode(payload, what)


def b64decode(payload: str, what: str = "image") -> bytes:
    try:
        return base64.b64decode(re.sub(r"\s+", "", payload), validate=True)
    except (binascii.Error, ValueError):
        raise MediaError(f"{what} data is not valid base64; encode the file bytes with base64 "
                         "(e.g. base64.b64encode(open(path, 'rb').read()).decode())") from None


def fetch_remote(url: str, policy: RemotePolicy, what: str = "image") -> bytes:
    if not policy.allow:
        raise MediaError(f"remote {what} {url[:80]!r} refused: remote media is off by default; pass "
                         "allow_remote_media=True (CLI: --allow-remote-media) or download the file and give its path")
    try:
        with urllib.request.urlopen(url, timeout=policy.timeout) as r:  # noqa: S310 (http(s) checked by caller)
            data = r.read(policy.max_bytes + 1)
    except OSError as e:
        raise MediaError(f"could not fetch {what} {url[:80]!r}: {e}") from None
    if len(data) > policy.max_bytes:
        raise MediaError(f"{what} at {url[:80]!r} is larger than the {policy.max_bytes} byte cap")
    return data


def _path_of(src: str) -> Path:
    return Path(src[len("file://"):]) if src.startswith("file://") else Path(src).expanduser()


def _open_bytes(data: bytes, name: str, max_pixels: int) -> Image.Image:
    if not data:
        raise MediaError(f"image {name} is empty (0 bytes); give a PNG/JPEG/WebP file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise MediaError(f"image {name} is a decompression bomb (declared size over {max_pixels} pixels); "
                         "refusing to decode it") from None
    except (Image.UnidentifiedImageError, OSError, ValueError) as e:
        raise MediaError(f"image {name} cannot be read ({e}); give a valid PNG/JPEG/WebP/GIF/BMP file") from None
    w, h = img.size
    if w * h > max_pixels:
        raise MediaError(f"image {name} declares {w}x{h} = {w * h} pixels, over the {max_pixels}-pixel decode "
                         "limit (decompression-bomb guard); downscale it first or raise max_decode_pixels")
    if w == 0 or h == 0:
        raise MediaError(f"image {name} has zero size ({w}x{h})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
    except (OSError, ValueError, SyntaxError) as e:
        raise MediaError(f"image {name} is corrupt or truncated ({e}); re-export or re-download it") from None
    return img


def load_image(src, *, remote: RemotePolicy | None = None, max_decode_pixels: int = MAX_DECODE_PIXELS,
               name: str | None = None) -> Image.Image:
    """A PIL image from a path, file:// URL, data URL, bare base64, http(s) URL (if allowed), bytes, PIL image,
    numpy array (H, W[, C]) or uint8 torch tensor (H, W, C)."""
    remote = remote or RemotePolicy()
    if isinstance(src, Image.Image):
        if src.width == 0 or src.height == 0:
            raise MediaError(f"image {name or '(PIL)'} has zero size ({src.width}x{src.height})")
        return src
    if isinstance(src, torch.Tensor):
        src = src.detach().cpu().numpy()
    if isinstance(src, np.ndarray):
        return _from_array(src, name or "(array)")
    if isinstance(src, (bytes, bytearray, memoryview)):
        return _open_bytes(bytes(src), name or "(bytes)", max_decode_pixels)
    if isinstance(src, dict) and "url" in src:  # OpenAI {"url": ...}
        src = src["url"]
    if not isinstance(src, (str, os.PathLike)):
        raise MediaError(f"unsupported image value of type {type(src).__name__}; give a path, URL, data URL, "
                         "bytes, PIL image or numpy array")
    s = os.fspath(src).strip()
    label = name or (s if len(s) < 80 else s[:60] + "...")
    if s.lower().startswith("data:"):
        return _open_bytes(read_data_url(s), "(data URL)", max_decode_pixels)
    if s.lower().startswith(("http://", "https://")):
        return _open_bytes(fetch_remote(s, remote), label, max_decode_pixels)
    p = _path_of(s)
    try:
        if p.is_file():
            return _open_bytes(p.read_bytes(), label, max_decode_pixels)
    except OSError as e:  # name too long, permission denied, ...
        if len(s) < 256:
            raise MediaError(f"image file {label} cannot be read: {e}") from None
    if len(s) > 64 and re.fullmatch(r"[A-Za-z0-9+/=\s]+", s):  # bare base64 payload
        return _open_bytes(b64decode(s), "(base64)", max_decode_pixels)
    raise MediaError(f"image file {label} not found; check the path (relative paths are resolved from "
                     f"{os.getcwd()})")


def _from_array(a: np.ndarray, name: str) -> Image.Image:
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)  # CHW -> HWC
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (1, 3, 4)) or a.size == 0:
        raise MediaError(f"image array {name} has shape {a.shape}; expected (H, W), (H, W, 3) or (H, W, 4) "
                         "with H, W > 0")
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.floating) and a.size and float(np.nanmax(a)) <= 1.0:
            a = a * 255.0
        a = np.clip(np.nan_to_num(a), 0, 255).round().astype(np.uint8)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    return Image.fromarray(a)


def to_rgb(img: Image.Image) -> Image.Image:
    """RGBA (and LA / P with transparency) composited on white, as qwen-vl-utils does; others convert."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.split()[3])
        return canvas
    return img if img.mode == "RGB" else img.convert("RGB")


def target_size(h: int, w: int, opts: dict, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS,
                factor: int = 28) -> tuple[int, int]:
    """Resized (h, w) for an image part: resized_height/width win, then per-item min/max pixels, then defaults."""
    if opts.get("resized_height") is not None and opts.get("resized_width") is not None:
        return smart_resize(int(opts["resized_height"]), int(opts["resized_width"]), factor, min_pixels, max_pixels)
    return smart_resize(h, w, factor, int(opts.get("min_pixels", min_pixels)), int(opts.get("max_pixels", max_pixels)))


def resize(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    h, w = size
    return img if (img.height, img.width) == (h, w) else img.resize((w, h), Image.BICUBIC)


def normalize_rows(rows: torch.Tensor, channels: int = 3, mean=CLIP_MEAN, std=CLIP_STD,
                   chunk: int = 192) -> torch.Tensor:
    """(N, C*T*p*p) uint8 patch rows -> float32 rows with the reference's arithmetic: x * (1/255) in float64, cast
    to float32, then (x - mean) / std in float32. Done in cache-sized chunks, so no full float64 copy exists."""
    N, D = rows.shape
    m = torch.tensor(mean, dtype=torch.float32).view(1, channels, 1)
    sd = torch.tensor(std, dtype=torch.float32).view(1, channels, 1)
    out = torch.empty(N, D, dtype=torch.float32)
    r3, o3 = rows.view(N, channels, -1), out.view(N, channels, -1)  # rows are channel-major
    for i in range(0, N, chunk):
        x = (r3[i:i + chunk].to(torch.float64) * (1 / 255)).to(torch.float32)
        torch.div(x.sub_(m), sd, out=o3[i:i + chunk])
    return out


def patchify(frames: torch.Tensor, patch: int = 14, temporal: int = 2, merge: int = 2):
    """(T, C, H, W) -> ((T/2)*(H/14)*(W/14), C*2*14*14) rows in the reference order, and grid (t, h, w).

    Any dtype (uint8 before normalisation). The frame count is padded to a multiple of `temporal` by repeating
    the last frame."""
    T, C, H, W = frames.shape
    if T % temporal:
        frames = torch.cat([frames, frames[-1:].expand(temporal - T % temporal, -1, -1, -1)])
        T = frames.shape[0]
    gt, gh, gw = T // temporal, H // patch, W // patch
    x = frames.reshape(gt, temporal, C, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # (gt, bh, bw, mh, mw, C, T, ph, pw)
    return x.reshape(gt * gh * gw, C * temporal * patch * patch), (gt, gh, gw)


def preprocess_frames(frames_u8: torch.Tensor, mean=CLIP_MEAN, std=CLIP_STD, temporal: int = 2):
    """(T, C, H, W) uint8 -> (float32 patch rows, grid)."""
    rows, grid = patchify(frames_u8, temporal=temporal)
    return normalize_rows(rows, frames_u8.shape[1], mean, std), grid


def preprocess_image(img: Image.Image, size: tuple[int, int], mean=CLIP_MEAN, std=CLIP_STD):
    """RGB PIL image -> (pixel rows, grid) at `size` (h, w)."""
    arr = np.array(resize(to_rgb(img), size))  # (H, W, 3) uint8
    return preprocess_frames(torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0), mean, std)
