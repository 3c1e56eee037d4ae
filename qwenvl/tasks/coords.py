"""Coordinate frames: the resized image the model saw <-> the user's original image (or a device screen).

Qwen2.5-VL answers in absolute pixels of the smart_resize'd frame (capabilities.md §1.1); users want their own
image's pixels. Sizes are (height, width) as in `MediaInfo`; coordinates are (x, y). Mapping scales each axis by
the ratio of the sizes, orders swapped corners and (by default) clips to the target frame. The reverse mapping
builds training labels in the model frame from boxes in the original image (capabilities.md §1.5).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from .types import Box, Detection, DocBlock, Point, TextItem


def order_box(box) -> Box:
    x1, y1, x2, y2 = (float(v) for v in box)
    return (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))


@dataclass(frozen=True)
class FrameMap:
    """Maps model-frame pixels (`resized`, h x w) to `original` pixels (h x w) and back."""
    original: tuple[int, int]
    resized: tuple[int, int]

    def __post_init__(self):
        for name, (h, w) in (("original", self.original), ("resized", self.resized)):
            if not (h > 0 and w > 0):
                raise ValueError(f"FrameMap: {name} size must be positive (height, width), got {(h, w)}")

    @classmethod
    def from_media(cls, info) -> "FrameMap":
        """From a `qwenvl.batch.MediaInfo` (an image or video as the processor prepared it)."""
        return cls(tuple(info.original_size), tuple(info.resized_size))

    @classmethod
    def for_screen(cls, device_size: tuple[int, int], resized: tuple[int, int]) -> "FrameMap":
        """A device screen of `device_size` (h, w) shown to the model at `resized` (h, w)."""
        return cls(tuple(device_size), tuple(resized))

    @property
    def sx(self) -> float:
        return self.original[1] / self.resized[1]

    @property
    def sy(self) -> float:
        return self.original[0] / self.resized[0]

    # ------------------------------------------------------------------ model frame -> original
    def point_to_original(self, point, clip: bool = True) -> Point:
        x, y = float(point[0]) * self.sx, float(point[1]) * self.sy
        return _clip_point(x, y, self.original) if clip else (x, y)

    def box_to_original(self, box, clip: bool = True) -> Box:
        x1, y1, x2, y2 = order_box(box)
        out = (x1 * self.sx, y1 * self.sy, x2 * self.sx, y2 * self.sy)
        return _clip_box(out, self.original) if clip else out

    # ------------------------------------------------------------------ original -> model frame (labels)
    def point_to_model(self, point, clip: bool = True) -> Point:
        x, y = float(point[0]) / self.sx, float(point[1]) / self.sy
        return _clip_point(x, y, self.resized) if clip else (x, y)

    def box_to_model(self, box, clip: bool = True) -> Box:
        x1, y1, x2, y2 = order_box(box)
        out = (x1 / self.sx, y1 / self.sy, x2 / self.sx, y2 / self.sy)
        return _clip_box(out, self.resized) if clip else out

    def box_label(self, box) -> list[int]:
        """A training label: an original-image box as integer model-frame pixels, clipped to [0, size - 1]
        (the convention of the official conversion notebook)."""
        h, w = self.resized
        x1, y1, x2, y2 = self.box_to_model(box, clip=False)
        return [min(max(round(x1), 0), w - 1), min(max(round(y1), 0), h - 1),
                min(max(round(x2), 0), w - 1), min(max(round(y2), 0), h - 1)]

    def point_label(self, point) -> list[int]:
        h, w = self.resized
        x, y = self.point_to_model(point, clip=False)
        return [min(max(round(x), 0), w - 1), min(max(round(y), 0), h - 1)]

    # ------------------------------------------------------------------ results
    def detections_to_original(self, dets: list[Detection], clip: bool = True) -> list[Detection]:
        return [replace(d, bbox=None if d.bbox is None else self.box_to_original(d.bbox, clip),
                        point=None if d.point is None else self.point_to_original(d.point, clip)) for d in dets]

    def text_items_to_original(self, items: list[TextItem], clip: bool = True) -> list[TextItem]:
        return [replace(t, bbox=None if t.bbox is None else self.box_to_original(t.bbox, clip)) for t in items]

    def blocks_to_original(self, blocks: list[DocBlock], clip: bool = True) -> list[DocBlock]:
        return [replace(b, bbox=None if b.bbox is None else self.box_to_original(b.bbox, clip)) for b in blocks]


def _clip_point(x: float, y: float, size: tuple[int, int]) -> Point:
    h, w = size
    return (min(max(x, 0.0), float(w)), min(max(y, 0.0), float(h)))


def _clip_box(box: Box, size: tuple[int, int]) -> Box:
    h, w = size
    x1, y1, x2, y2 = box
    return (min(max(x1, 0.0), float(w)), min(max(y1, 0.0), float(h)),
            min(max(x2, 0.0), float(w)), min(max(y2, 0.0), float(h)))
