"""Result types shared by the parsers, coordinate mapping, drawing, metrics and the task API.

Coordinates are floats in pixels, (x, y) with x to the right and y down; boxes are (x1, y1, x2, y2). A parser
returns them in the frame the model saw (the resized image); `qwenvl.tasks.coords` maps them to the original.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

Box = tuple[float, float, float, float]
Point = tuple[float, float]


class ParseError(ValueError):
    """Model text that could not be parsed into the asked-for structure. `.raw` is the text, `.reason` why."""

    def __init__(self, reason: str, raw: str):
        super().__init__(f"{reason} (model output: {raw[:120]!r}{'...' if len(raw) > 120 else ''})")
        self.reason = reason
        self.raw = raw


@dataclass
class Detection:
    """One grounded object: a box and/or a point with its label; other keys of the JSON object in `extra`."""
    label: str = ""
    bbox: Box | None = None
    point: Point | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"label": self.label}
        if self.bbox is not None:
            d["bbox_2d"] = [round(v, 2) for v in self.bbox]
        if self.point is not None:
            d["point_2d"] = [round(v, 2) for v in self.point]
        d.update(self.extra)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)


@dataclass
class TextItem:
    """Text spotting: one line/word with its box (None when the model gave text only)."""
    text: str
    bbox: Box | None = None

    def to_dict(self) -> dict:
        return {"text_content": self.text, "bbox_2d": None if self.bbox is None else [round(v, 2) for v in self.bbox]}


@dataclass
class DocBlock:
    """One layout element of a QwenVL HTML page, in reading order.

    kind: 'h1'..'h6', 'p', 'table', 'chart', 'formula', 'image', 'image_caption', 'image_ocr', 'music_sheet',
    'chemical_formula', 'list', 'list_item', 'header', 'footer', 'footnote', ... (tag or class, normalised);
    text: the element's plain text; rows: table cells row by row (tables only); html: the element's own HTML;
    attrs: its other attributes (e.g. `format`)."""
    kind: str
    bbox: Box | None = None
    text: str = ""
    rows: list[list[str]] | None = None
    html: str = ""
    attrs: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bbox"] = None if self.bbox is None else [round(v, 2) for v in self.bbox]
        return d


class TimeSpan(tuple):
    """(start_s, end_s) or (start_s, end_s, description): a tuple, so `s, e = span` works when there is no
    description. Attributes .start, .end, .description."""

    def __new__(cls, start: float, end: float, description: str | None = None):
        items = (float(start), float(end)) if description is None else (float(start), float(end), description)
        return super().__new__(cls, items)

    @property
    def start(self) -> float:
        return self[0]

    @property
    def end(self) -> float:
        return self[1]

    @property
    def description(self) -> str | None:
        return self[2] if len(self) > 2 else None

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"start": self.start, "end": self.end}
        if self.description is not None:
            d["description"] = self.description
        return d


class ToolCall(NamedTuple):
    """One `<tool_call>` of the model: function name and its arguments."""
    name: str
    arguments: dict

    def to_dict(self) -> dict:
        return {"name": self.name, "arguments": self.arguments}
