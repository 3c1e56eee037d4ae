"""Draw task results on images with Pillow: detections, text-spotting items, document layout blocks.

Coordinates are taken to be in the given image's pixels (map them first with `qwenvl.tasks.coords`).
Every function returns a new image of the input's size and leaves the input untouched. Labels use PIL's
default font, so scripts it lacks (CJK, emoji) may show as boxes, but never fail.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from qwenvl.tasks.types import Box, Detection, DocBlock, TextItem

__all__ = ["PALETTE", "draw_detections", "draw_text_items", "draw_document", "save_png"]

PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 114, 178), (230, 159, 0), (0, 158, 115), (204, 121, 167), (86, 180, 233), (213, 94, 0),
    (240, 228, 66), (128, 0, 128), (0, 128, 128), (128, 128, 0), (70, 70, 200), (255, 99, 71),
    (46, 139, 87), (199, 21, 133), (30, 144, 255), (160, 82, 45),
)
_KIND_COLOR = {k: PALETTE[i] for i, k in enumerate((
    "p", "table", "image", "formula", "chart", "image_caption", "list_item", "list", "header", "footer",
    "footnote", "page_number", "image_ocr", "music_sheet", "chemical_formula"))}
_KIND_COLOR.update({f"h{i}": (220, 20, 60) for i in range(1, 7)})
_WHITE = (255, 255, 255)


class _Colors:
    """Rotating palette keyed by label: the n-th distinct label gets PALETTE[n % len(PALETTE)]."""

    def __init__(self, fixed: dict[str, tuple[int, int, int]] | None = None):
        self.fixed = fixed or {}
        self.seen: dict[str, tuple[int, int, int]] = {}

    def __call__(self, key: str) -> tuple[int, int, int]:
        if key in self.fixed:
            return self.fixed[key]
        if key not in self.seen:
            self.seen[key] = PALETTE[len(self.seen) % len(PALETTE)]
        return self.seen[key]


def _open(image: Image.Image | str | Path) -> Image.Image:
    """A drawable copy (RGB, or RGBA when the input has alpha)."""
    if isinstance(image, (str, Path)):
        with Image.open(image) as im:
            im.load()
            image = im.copy()
    else:
        image = image.copy()
    return image if image.mode in ("RGB", "RGBA") else image.convert("RGBA" if "A" in image.getbands() else "RGB")


def _line_width(im: Image.Image, width: int | None) -> int:
    return max(1, int(width)) if width is not None else max(2, round(min(im.size) / 250))


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1 or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _finite(vals: Sequence[float] | None, n: int) -> bool:
    try:
        return vals is not None and len(vals) == n and all(math.isfinite(float(v)) for v in vals)
    except (TypeError, ValueError):
        return False


def _clip_box(im: Image.Image, box: Box, lw: int) -> tuple[int, int, int, int] | None:
    """Integer, ordered box clamped just outside the image (huge coordinates must not overflow Pillow)."""
    if not _finite(box, 4):
        return None
    w, h = im.size
    x1, y1, x2, y2 = (float(v) for v in box)
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    m = lw + 1
    cx = [int(round(min(max(v, -m), w + m))) for v in (x1, x2)]
    cy = [int(round(min(max(v, -m), h + m))) for v in (y1, y2)]
    return cx[0], cy[0], cx[1], cy[1]


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[str, int, int]:
    """(drawable text, width, height); text the font cannot encode is replaced by '?'."""
    for t in (text, text.encode("ascii", "replace").decode("ascii")):
        try:
            x1, y1, x2, y2 = draw.textbbox((0, 0), t, font=font)
            return t, x2 - min(0, x1), y2 - min(0, y1)
        except (UnicodeError, ValueError, OSError):
            continue
    return "", 0, 0


def _tag(draw: ImageDraw.ImageDraw, im: Image.Image, text: str, box: tuple[int, int, int, int],
         color: tuple[int, int, int], font, below: bool = False) -> None:
    """A filled label tag above the box (below it with below=True), kept inside the image."""
    text = " ".join(text.split())
    if not text:
        return
    text, tw, th = _text_size(draw, text, font)
    if not text:
        return
    pad = max(1, th // 5)
    w, h = im.size
    bw, bh = tw + 2 * pad, th + 2 * pad
    x = min(max(box[0], 0), max(0, w - bw))
    if below:
        y = box[3] if box[3] + bh <= h else box[1] - bh
    else:
        y = box[1] - bh if box[1] - bh >= 0 else box[1]
    y = min(max(y, 0), max(0, h - bh))
    draw.rectangle((x, y, x + bw - 1, y + bh - 1), fill=color)
    fg = (0, 0, 0) if 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2] > 150 else _WHITE
    try:
        draw.text((x + pad, y + pad), text, fill=fg, font=font)
    except (UnicodeError, ValueError, OSError):
        pass


def _setup(image, width: int | None, font_size: int | None):
    im = _open(image)
    lw = _line_width(im, width)
    font = _font(font_size or max(10, round(min(im.size) / 40)))
    return im, ImageDraw.Draw(im), lw, font


def draw_detections(image: Image.Image | str | Path, detections: Sequence[Detection], *, labels: bool = True,
                    width: int | None = None, font_size: int | None = None) -> Image.Image:
    """Outline each detection's bbox and draw its point as a filled dot with a white rim, one colour per
    label (rotating palette), with a filled label tag above the box (inside the image at the top edge)."""
    im, draw, lw, font = _setup(image, width, font_size)
    colors = _Colors()
    for det in detections:
        color = colors(det.label)
        anchor = None
        if det.bbox is not None:
            anchor = _clip_box(im, det.bbox, lw)
            if anchor is not None:
                draw.rectangle(anchor, outline=color, width=lw)
        if det.point is not None and _finite(det.point, 2):
            x, y = (float(v) for v in det.point)
            if -1e6 < x < 1e6 and -1e6 < y < 1e6:
                r = max(3, 2 * lw)
                draw.ellipse((x - r, y - r, x + r, y + r), fill=color, outline=_WHITE, width=max(1, lw // 2))
                if anchor is None:
                    anchor = _clip_box(im, (x + r, y - r, x + r, y - r), lw)
        if labels and det.label and anchor is not None:
            _tag(draw, im, det.label, anchor, color, font)
    return im


def draw_text_items(image: Image.Image | str | Path, items: Sequence[TextItem], *, width: int | None = None,
                    font_size: int | None = None) -> Image.Image:
    """Outline each text item's box with its text in a tag under it (over it at the bottom edge)."""
    im, draw, lw, font = _setup(image, width, font_size)
    for i, item in enumerate(items):
        box = _clip_box(im, item.bbox, lw) if item.bbox is not None else None
        if box is None:
            continue
        color = PALETTE[i % len(PALETTE)]
        draw.rectangle(box, outline=color, width=lw)
        _tag(draw, im, item.text, box, color, font, below=True)
    return im


def draw_document(image: Image.Image | str | Path, blocks: Sequence[DocBlock], *, labels: bool = True,
                  width: int | None = None, font_size: int | None = None) -> Image.Image:
    """Outline each layout block (bbox in this image's pixels) in a colour per kind, tagged with the kind."""
    im, draw, lw, font = _setup(image, width, font_size)
    colors = _Colors(_KIND_COLOR)
    for b in blocks:
        box = _clip_box(im, b.bbox, lw) if b.bbox is not None else None
        if box is None:
            continue
        color = colors(b.kind)
        draw.rectangle(box, outline=color, width=lw)
        if labels:
            _tag(draw, im, b.kind, box, color, font)
    return im


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Write `image` as PNG at `path`, creating the parent directory; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path
