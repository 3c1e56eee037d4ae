"""One call per capability: prompt with the official phrasing, generate, parse, map to the user's coordinates.

    import qwenvl
    from qwenvl import tasks
    vlm = qwenvl.load(path)
    r = tasks.ground(vlm, "photo.jpg", "the red car")
    r.detections          # boxes in photo.jpg's own pixels
    r.to_json()           # {"task": "ground", "objects": [...], "image_size": [w, h], ...}
    r.draw("photo.jpg").save("boxes.png")

Model-side problems (unparseable or truncated answers) never raise: the result keeps the raw text and `.error`.
Bad inputs (unreadable image, wrong option) raise the usual ValueError from the processor.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from . import prompts
from .coords import FrameMap
from .types import Detection, DocBlock, ParseError, TextItem, TimeSpan, ToolCall

# default answer budgets per task (documents are long; capabilities.md §2.1)
BUDGET = {"ground": 1024, "point": 512, "count": 1024, "document": 4096, "read_text": 2048, "spot_text": 2048,
          "extract": 512, "locate_event": 128, "dense_captions": 1024, "next_action": 256}


@dataclass(kw_only=True)
class TaskResult:
    """What every task returns: the raw answer, the sizes the model saw, and a parse error if any."""
    task: str
    text: str
    original_size: tuple[int, int] | None = None  # (h, w) of the user's image / video frames
    model_size: tuple[int, int] | None = None  # (h, w) the model saw
    finish_reason: str = "stop"
    error: str | None = None

    def payload(self) -> dict:
        return {}

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"task": self.task}
        if self.original_size is not None:
            d["image_size"] = [self.original_size[1], self.original_size[0]]  # [w, h]
            d["model_size"] = [self.model_size[1], self.model_size[0]]
        d.update(self.payload())
        d["text"] = self.text
        d["finish_reason"] = self.finish_reason
        if self.error is not None:
            d["error"] = self.error
        return d

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, **kw)


@dataclass(kw_only=True)
class GroundingResult(TaskResult):
    detections: list[Detection] = field(default_factory=list)  # original-image pixels
    count: int | None = None

    def payload(self) -> dict:
        d: dict[str, Any] = {"objects": [x.to_dict() for x in self.detections]}
        if self.task == "count":
            d["count"] = self.count
        return d

    def draw(self, image):
        from .draw import draw_detections
        return draw_detections(image, self.detections)


@dataclass(kw_only=True)
class DocumentResult(TaskResult):
    blocks: list[DocBlock] = field(default_factory=list)  # original-image pixels

    def payload(self) -> dict:
        return {"blocks": [b.to_dict() for b in self.blocks]}

    @property
    def html(self) -> str:
        from .document import to_html
        return to_html(self.blocks)

    @property
    def markdown(self) -> str:
        from .document import to_markdown
        return to_markdown(self.blocks)

    def draw(self, image):
        from .draw import draw_document
        return draw_document(image, self.blocks)


@dataclass(kw_only=True)
class TextResult(TaskResult):
    lines: list[str] = field(default_factory=list)
    items: list[TextItem] = field(default_factory=list)  # text spotting: boxes in original pixels

    def payload(self) -> dict:
        if self.task == "spot_text":
            return {"items": [t.to_dict() for t in self.items]}
        return {"lines": self.lines}

    def draw(self, image):
        from .draw import draw_text_items
        return draw_text_items(image, self.items)


@dataclass(kw_only=True)
class KeyValueResult(TaskResult):
    values: dict = field(default_factory=dict)

    def payload(self) -> dict:
        return {"values": self.values}


@dataclass(kw_only=True)
class TemporalResult(TaskResult):
    spans: list[TimeSpan] = field(default_factory=list)  # seconds from the start of the video

    def payload(self) -> dict:
        return {"spans": [s.to_dict() for s in self.spans]}


@dataclass(kw_only=True)
class ActionResult(TaskResult):
    call: ToolCall | None = None  # as the model wrote it (model-frame coordinates)
    action: Any = None  # agent.Action in device pixels

    def payload(self) -> dict:
        a = self.action
        return {"call": None if self.call is None else self.call.to_dict(),
                "action": None if a is None else {k: v for k, v in vars(a).items() if k != "call" and v is not None}}


# --------------------------------------------------------------------------------------------- plumbing


def _ask(vlm, task: str, text: str, media: list, options: dict, system: str | None = None):
    options = dict(options)
    options.setdefault("max_new_tokens", BUDGET[task])
    video_opts = {k: options.pop(k) for k in ("fps", "nframes", "video_start", "video_end") if k in options}
    msgs = prompts.messages(text, media, system=system, video_options=video_opts)
    g = vlm.generate(msgs, **options)
    info = g.media[0] if g.media else None
    frame = FrameMap.from_media(info) if info is not None else None
    base = dict(task=task, text=g.text, finish_reason=g.finish_reason,
                original_size=None if info is None else tuple(info.original_size),
                model_size=None if info is None else tuple(info.resized_size))
    return g, frame, base


def _try(fn, *args):
    try:
        return fn(*args), None
    except ParseError as e:
        return None, e.reason


# --------------------------------------------------------------------------------------------- images


def ground(vlm, image, query: str | None = None, *, category: str | None = None, constrained: bool = False,
           **options) -> GroundingResult:
    """Boxes for a referring expression (`query`) or every instance of a `category`."""
    from .parse import parse_grounding

    if (query is None) == (category is None):
        raise ValueError("ground() needs exactly one of query='the red car' or category='car'")
    text = prompts.refer(query) if query is not None else prompts.detect(category)
    if constrained:
        options["constraint"] = "bbox"
    g, frame, base = _ask(vlm, "ground", text, [image], options)
    dets, err = _try(parse_grounding, g.text)
    dets = [d for d in dets or [] if d.bbox is not None]
    return GroundingResult(**base, detections=frame.detections_to_original(dets), error=err)


def point(vlm, image, query: str, *, constrained: bool = False, **options) -> GroundingResult:
    """Points on the described object(s) (XML `<points>` answer, or point_2d JSON when constrained)."""
    from .parse import parse_grounding

    text = prompts.point(query, xml=not constrained)
    if constrained:
        options["constraint"] = "point"
    g, frame, base = _ask(vlm, "point", text, [image], options)
    dets, err = _try(parse_grounding, g.text)
    dets = [d for d in dets or [] if d.point is not None]
    return GroundingResult(**base, detections=frame.detections_to_original(dets), error=err)


def count(vlm, image, category: str | None = None, **options) -> GroundingResult:
    """Detect then count: boxes of every item (or every `category`) and the number the model states."""
    from .parse import parse_count, parse_grounding

    g, frame, base = _ask(vlm, "count", prompts.count(category), [image], options)
    dets, err = _try(parse_grounding, g.text)
    dets = [d for d in dets or [] if d.bbox is not None]
    n = parse_count(g.text)
    if n is not None:
        err = None  # a stated count is an answer even without boxes
    return GroundingResult(**base, detections=frame.detections_to_original(dets), count=n, error=err)


def read_document(vlm, image, **options) -> DocumentResult:
    """Omni-document parsing into QwenVL HTML blocks (layout boxes in the original page's pixels)."""
    from .document import parse_document

    g, frame, base = _ask(vlm, "document", prompts.DOCUMENT_USER, [image], options, system=prompts.DOCUMENT_SYSTEM)
    blocks, err = _try(parse_document, g.text)
    return DocumentResult(**base, blocks=frame.blocks_to_original(blocks or []), error=err)


def read_text(vlm, image, **options) -> TextResult:
    """Plain OCR: the text lines in reading order."""
    from .parse import parse_ocr_lines

    g, _, base = _ask(vlm, "read_text", prompts.READ_TEXT, [image], options)
    lines, err = _try(parse_ocr_lines, g.text)
    return TextResult(**base, lines=lines or [], error=err)


def spot_text(vlm, image, **options) -> TextResult:
    """Line-level text spotting: each line's text and box (original pixels)."""
    from .parse import parse_text_spotting

    g, frame, base = _ask(vlm, "spot_text", prompts.SPOT_TEXT, [image], options)
    items, err = _try(parse_text_spotting, g.text)
    items = frame.text_items_to_original(items or [])
    return TextResult(**base, items=items, lines=[t.text for t in items], error=err)


def extract(vlm, image, keys, **options) -> KeyValueResult:
    """Key-information extraction: `keys` is a list of field names or a template dict."""
    from .parse import parse_key_values

    names = list(keys.keys()) if isinstance(keys, dict) else [str(k) for k in keys]
    if not names:
        raise ValueError("extract() needs at least one key, e.g. keys=['company', 'date', 'total']")
    g, _, base = _ask(vlm, "extract", prompts.key_values(keys), [image], options)
    values, err = _try(parse_key_values, g.text, names)
    return KeyValueResult(**base, values=values or {k: None for k in names}, error=err)


# --------------------------------------------------------------------------------------------- video


def locate_event(vlm, video, query: str, *, fps: float = 2.0, **options) -> TemporalResult:
    """When does `query` happen? Spans in seconds (absolute time via MRoPE; pass the true fps)."""
    from .parse import parse_time_spans

    g, _, base = _ask(vlm, "locate_event", prompts.video_grounding(query), [("video", video)],
                      {**options, "fps": fps})
    spans, err = _try(parse_time_spans, g.text)
    return TemporalResult(**base, spans=spans or [], error=err)


def dense_captions(vlm, video, *, fps: float = 2.0, **options) -> TemporalResult:
    """Events with start/end times and descriptions."""
    from .parse import parse_time_spans

    g, _, base = _ask(vlm, "dense_captions", prompts.DENSE_CAPTION, [("video", video)], {**options, "fps": fps})
    spans, err = _try(parse_time_spans, g.text)
    return TemporalResult(**base, spans=spans or [], error=err)


# --------------------------------------------------------------------------------------------- agents


def next_action(vlm, screenshot, task: str, *, kind: str = "computer", history=(), min_pixels: int = 3136,
                max_pixels: int = 12845056, **options) -> ActionResult:
    """One GUI agent step: the tool call for `task` on this screenshot, with the action in device pixels."""
    from PIL import Image

    from . import agent
    from .parse import parse_tool_calls

    if kind not in ("computer", "mobile"):
        raise ValueError(f"kind must be 'computer' or 'mobile', got {kind!r}")
    img = screenshot if isinstance(screenshot, Image.Image) else Image.open(screenshot)
    img.load()
    w, h = img.size
    rw, rh = agent.screen_frame(w, h, min_pixels, max_pixels)
    tool = (agent.computer_use_tool if kind == "computer" else agent.mobile_use_tool)(rw, rh)
    msgs = agent.build_messages(task, img, list(history), tool, min_pixels=min_pixels, max_pixels=max_pixels)
    options.setdefault("max_new_tokens", BUDGET["next_action"])
    g = vlm.generate(msgs, **options)
    base = dict(task="next_action", text=g.text, finish_reason=g.finish_reason, original_size=(h, w),
                model_size=(rh, rw))
    calls, err = _try(parse_tool_calls, g.text)
    if not calls:
        return ActionResult(**base, error=err or "no tool call in the answer")
    call = calls[0]
    try:
        act = agent.action_from_call(call, (rw, rh), (w, h), expect=f"{kind}_use")
    except agent.ActionError as e:
        return ActionResult(**base, call=call, error=str(e))
    return ActionResult(**base, call=call, action=act)


# --------------------------------------------------------------------------------------------- any answer


def structured(text: str, media=None) -> dict | None:
    """Best-effort structured view of a free answer (for `generate --json` and the server): tool calls,
    QwenVL HTML blocks, grounding objects (original coordinates of the first image) or time spans; None when the
    text has none of these."""
    from .document import parse_document
    from .parse import parse_grounding, parse_time_spans, parse_tool_calls

    info = media[0] if media else None
    frame = FrameMap.from_media(info) if info is not None and info.kind == "image" else None
    if "<tool_call>" in text:
        calls, _ = _try(parse_tool_calls, text)
        if calls:
            return {"tool_calls": [c.to_dict() for c in calls]}
    if "data-bbox" in text or "<html" in text:
        blocks, _ = _try(parse_document, text)
        if blocks:
            blocks = frame.blocks_to_original(blocks) if frame else blocks
            return {"blocks": [b.to_dict() for b in blocks]}
    if any(k in text for k in ("bbox_2d", "point_2d", "<points", "bbox", "<|box_start|>")):
        dets, _ = _try(parse_grounding, text)
        if dets:
            dets = frame.detections_to_original(dets) if frame else dets
            return {"objects": [d.to_dict() for d in dets]}
    if info is not None and info.kind == "video":
        spans, _ = _try(parse_time_spans, text)
        if spans:
            return {"spans": [s.to_dict() for s in spans]}
    return None
