"""Shared media rules: errors, constants of qwen-vl-utils 0.0.10/0.0.11, and `smart_resize` (reference.md §3.2)."""
from __future__ import annotations

import math

IMAGE_FACTOR = 28
MIN_PIXELS = 4 * 28 * 28  # 3136
MAX_PIXELS = 16384 * 28 * 28  # 12845056
MAX_RATIO = 200

VIDEO_MIN_PIXELS = 128 * 28 * 28  # 100352
VIDEO_MAX_PIXELS = 768 * 28 * 28  # 602112 per frame
VIDEO_TOTAL_PIXELS = int(128000 * 28 * 28 * 0.9)  # 90316800
FRAME_FACTOR = 2
FPS = 2.0
FPS_MIN_FRAMES = 4
FPS_MAX_FRAMES = 768

# Decompression-bomb guard: images are refused before decoding above this many pixels (settable per call).
MAX_DECODE_PIXELS = 178_956_970  # Pillow's own default bomb limit x2


class MediaError(ValueError):
    """An image or video that cannot be used; the message names the item and the fix."""


def round_by_factor(x: float, f: int) -> int:
    return round(x / f) * f  # Python round: half to even, as the reference


def ceil_by_factor(x: float, f: int) -> int:
    return math.ceil(x / f) * f


def floor_by_factor(x: float, f: int) -> int:
    return math.floor(x / f) * f


def smart_resize(height: int, width: int, factor: int = IMAGE_FACTOR, min_pixels: int = MIN_PIXELS,
                 max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(h, w), both multiples of `factor`, with h*w in [min_pixels, max_pixels] and the aspect ratio kept
    (qwen-vl-utils algorithm: round, then floor/ceil branches from the ORIGINAL size)."""
    if height <= 0 or width <= 0:
        raise MediaError(f"image size {width}x{height} is empty; give an image with at least one pixel")
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise MediaError(f"aspect ratio {max(height, width) / min(height, width):.1f} of a {width}x{height} image "
                         f"exceeds {MAX_RATIO}; crop or pad it to a less extreme shape")
    h = max(factor, round_by_factor(height, factor))
    w = max(factor, round_by_factor(width, factor))
    if h * w > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        # qwen-vl-utils has no max(factor, .) here and returns 0 for thin images (then crashes in PIL); like
        # transformers >= 4.53 we keep at least one factor. Identical wherever the reference returns a size.
        h = max(factor, floor_by_factor(height / beta, factor))
        w = max(factor, floor_by_factor(width / beta, factor))
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = ceil_by_factor(height * beta, factor)
        w = ceil_by_factor(width * beta, factor)
    return h, w
