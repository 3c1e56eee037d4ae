"""Benchmark runner: one JSONL file of items -> prompts -> batched generation -> parsing -> original-frame
coordinates -> scores (the CLI is `qwenvl eval`, see docs/eval.md).

    scores = evaluate("/models/Qwen2.5-VL-3B-Instruct", "refcoco", "refcoco_val.jsonl", limit=100, out_dir="out")

Tasks (keys of `TASKS`): refcoco, detection, counting, temporal, docvqa, ocr, screenspot. Every item is prompted
with the official phrasing (`qwenvl.tasks.prompts`), the answers are parsed leniently; an answer that cannot be
parsed is a failed prediction (recorded with its reason, scored as a miss), never an exception. Boxes and points
come back in the resized frame the model saw and are mapped to the original image with `FrameMap.from_media`.

`replay=` scores recorded answers (a JSONL of {"id", "text"}, e.g. an earlier predictions.jsonl) instead of
generating; the media sizes still come from the processor of the given model directory, so the coordinate
mapping is the real one.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from . import metrics, prompts
from .agent import computer_use_tool, tool_system_prompt
from .coords import FrameMap
from .parse import parse_count, parse_grounding, parse_ocr_lines, parse_time_spans, parse_tool_calls
from .types import ParseError

__all__ = ["evaluate", "TASKS", "EvalDataError", "load_items", "read_replay", "PROCESSOR_OPTIONS",
           "default_out_dir", "match_label"]

DOCVQA_SUFFIX = "Answer the question using a single word or phrase."
PROCESSOR_OPTIONS = ("min_pixels", "max_pixels", "video_min_pixels", "video_max_pixels", "fps", "nframes",
                     "min_frames", "max_frames", "total_pixels", "video_start", "video_end")


class EvalDataError(ValueError):
    """A data or replay file line that cannot be used: `.path`, `.line` (1-based) and `.field` name it."""

    def __init__(self, path: str | os.PathLike, line: int | None, field: str | None, problem: str):
        self.path, self.line, self.field, self.problem = str(path), line, field, problem
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: field '{field}': {problem}" if field else f"{where}: {problem}")


# ------------------------------------------------------------------------------------------------ data items


@dataclass
class Item:
    """One benchmark item: `id`, its line in the data file, the media path (resolved), the ground truth and the
    validated fields of the line."""
    id: Any
    line: int
    media: str
    gt: Any
    fields: dict = field(default_factory=dict)
    source: str = ""


_UNSET = object()


class _Line:
    """Field access for one JSONL line with errors that name file, line and field."""

    def __init__(self, path: Path, line: int, d: dict):
        self.path, self.line, self.d = path, line, d

    def error(self, key: str | None, problem: str) -> EvalDataError:
        return EvalDataError(self.path, self.line, key, problem)

    def has(self, key: str) -> bool:
        return self.d.get(key) is not None

    def get(self, key: str) -> Any:
        if key not in self.d:
            raise self.error(key, "missing")
        if self.d[key] is None:
            raise self.error(key, "is null")
        return self.d[key]

    def text(self, key: str) -> str:
        v = self.get(key)
        if not isinstance(v, str) or not v.strip():
            raise self.error(key, f"must be a non-empty string, got {_short(v)}")
        return v

    def number(self, key: str, v: Any = _UNSET) -> float:
        v = self.get(key) if v is _UNSET else v
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise self.error(key, f"must be a finite number, got {_short(v)}")
        return float(v)

    def count(self, key: str) -> int:
        v = self.get(key)
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise self.error(key, f"must be a non-negative integer, got {_short(v)}")
        return v

    def strings(self, key: str) -> list[str]:
        v = self.get(key)
        if not isinstance(v, list) or not v or not all(isinstance(s, str) for s in v):
            raise self.error(key, f"must be a non-empty list of strings, got {_short(v)}")
        return v

    def box(self, key: str, v: Any = _UNSET, fmt: str = "xyxy") -> tuple[float, float, float, float]:
        """(x1, y1, x2, y2) in original pixels; `fmt` "xywh" converts [x, y, w, h]."""
        v = self.get(key) if v is _UNSET else v
        ok = isinstance(v, (list, tuple)) and len(v) == 4 and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)
        if not ok:
            raise self.error(key, f"must be 4 numbers [x1, y1, x2, y2], got {_short(v)}")
        x1, y1, a, b = (float(x) for x in v)
        x2, y2 = (x1 + a, y1 + b) if fmt == "xywh" else (a, b)
        if x2 <= x1 or y2 <= y1:
            raise self.error(key, f"is an empty box {list(v)} ({fmt}); need x2 > x1 and y2 > y1")
        return (x1, y1, x2, y2)

    def box_format(self) -> str:
        fmt = self.d.get("bbox_format", "xyxy")
        if fmt not in ("xyxy", "xywh"):
            raise self.error("bbox_format", f"must be 'xyxy' or 'xywh', got {_short(fmt)}")
        return fmt

    def media(self, key: str) -> str:
        v = self.text(key)
        s = v.strip()
        if s.lower().startswith(("data:", "http://", "https://")):
            return s
        p = Path(s[7:] if s.lower().startswith("file://") else s).expanduser()
        if not p.is_absolute():
            p = self.path.parent / p
        if not p.is_file():
            raise self.error(key, f"file {p} not found (relative paths are resolved from the data file's folder)")
        return str(p)


def _short(v: Any) -> str:
    s = json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


# ------------------------------------------------------------------------------------------------ tasks


@dataclass
class _Ctx:
    """What a task needs besides the item: the processor (frame sizes) and the run's processor options."""
    processor: Any
    proc_opts: dict


@dataclass
class Outcome:
    """A scored answer: `parsed` (JSON-able, original coordinates), the value the aggregate uses (`pred`), the
    per-item score and the error (why the answer could not be parsed) or None."""
    parsed: Any = None
    pred: Any = None
    score: float | None = None
    error: str | None = None


def _media_info(media: list) -> list[dict]:
    return [{"kind": m.kind, "original_size": list(m.original_size), "resized_size": list(m.resized_size),
             **({"sample_fps": m.sample_fps} if getattr(m, "sample_fps", None) is not None else {})} for m in media]


def _r(v: float) -> float:
    return round(float(v), 2)


def _rbox(b) -> list[float]:
    return [_r(v) for v in b]


class Task:
    """A benchmark type: validation of its JSONL lines, the prompt, parsing/scoring of one answer, aggregation."""
    name = ""
    media_key = "image"
    media_kind = "image"
    max_new_tokens = 128
    description = ""

    def read(self, ln: _Line) -> tuple[Any, dict]:
        """(ground truth, other validated fields) of one line."""
        raise NotImplementedError

    def prompt(self, item: Item) -> str:
        raise NotImplementedError

    def conversation(self, item: Item, ctx: _Ctx) -> list[dict]:
        return prompts.messages(self.prompt(item), [item.media])

    def score(self, item: Item, text: str, media: list, ctx: _Ctx) -> Outcome:
        raise NotImplementedError

    def miss(self, item: Item, error: str) -> Outcome:
        """A failed prediction (no usable answer), scored as a miss."""
        return Outcome(error=error, score=0.0)

    def aggregate(self, items: list[Item], outcomes: list[Outcome]) -> dict:
        raise NotImplementedError

    @staticmethod
    def gt_json(item: Item) -> Any:
        return item.gt


def _frame(media: list) -> FrameMap:
    if not media:
        raise ValueError("no media sizes for this item")
    return FrameMap.from_media(media[0])


class RefCOCO(Task):
    name = "refcoco"
    description = "RefCOCO/+/g referring expressions: one box per expression; Acc@0.5 and mean IoU"

    def read(self, ln):
        return ln.box("bbox", fmt=ln.box_format()), {"expression": ln.text("expression")}

    def prompt(self, item):
        return prompts.refcoco(item.fields["expression"])

    def score(self, item, text, media, ctx):
        try:
            dets = parse_grounding(text)
        except ParseError as e:
            return self.miss(item, e.reason)
        boxes = [d for d in dets if d.bbox is not None]
        if not boxes:
            return self.miss(item, "no box in the answer")
        box = _frame(media).box_to_original(boxes[0].bbox)
        iou = metrics.box_iou(box, item.gt)
        return Outcome(parsed={"bbox": _rbox(box)}, pred=box, score=iou)

    def aggregate(self, items, outcomes):
        r = metrics.refcoco_accuracy([o.pred for o in outcomes], [it.gt for it in items])
        return {"acc@0.5": r["acc"], "miou": r["miou"]}

    @staticmethod
    def gt_json(item):
        return {"bbox": list(item.gt)}


def _norm_label(s: str) -> str:
    return " ".join(str(s).lower().replace("_", " ").replace("-", " ").split())


def _forms(s: str) -> set[str]:
    """The word and its possible singulars (last word only: 'traffic lights' -> 'traffic light')."""
    out = {s}
    for suf, rep in (("ies", "y"), ("es", ""), ("s", "")):
        if s.endswith(suf) and len(s) > len(suf) + 1:
            out.add(s[:-len(suf)] + rep)
    return out


def match_label(label: str, categories: list[str]) -> str | None:
    """The category a predicted label names: exact (case, spaces, _ and - ignored), then singular/plural; with a
    single category every label is that category (the prompt asked for nothing else). None: no category."""
    lab = _norm_label(label)
    for c in categories:
        if _norm_label(c) == lab:
            return c
    for c in categories:
        if _forms(_norm_label(c)) & _forms(lab):
            return c
    return categories[0] if len(categories) == 1 else None


class Detection(Task):
    name = "detection"
    max_new_tokens = 1024
    description = "ODinW-style detection: every instance of the listed categories; COCO mAP@[.5:.95], AP50, AP75"

    def read(self, ln):
        cats = ln.strings("categories")
        objs = ln.get("objects")
        if not isinstance(objs, list):
            raise ln.error("objects", f"must be a list of {{\"label\", \"bbox\"}}, got {_short(objs)}")
        fmt = ln.box_format()
        gt = []
        for j, o in enumerate(objs):
            key = f"objects[{j}]"
            if not isinstance(o, dict):
                raise ln.error(key, f"must be an object {{\"label\", \"bbox\"}}, got {_short(o)}")
            label = o.get("label")
            if not isinstance(label, str) or label not in cats:
                raise ln.error(f"{key}.label", f"must be one of the categories {cats}, got {_short(label)}")
            if o.get("bbox") is None:
                raise ln.error(f"{key}.bbox", "missing")
            gt.append((label, ln.box(f"{key}.bbox", o["bbox"], fmt)))
        return gt, {"categories": cats}

    def prompt(self, item):
        return prompts.detect(", ".join(item.fields["categories"]))

    def miss(self, item, error):
        return Outcome(error=error, pred=[], score=0.0)

    def score(self, item, text, media, ctx):
        try:
            dets = parse_grounding(text)
        except ParseError as e:
            return self.miss(item, e.reason)
        fm = _frame(media)
        pred, parsed = [], []
        for d in dets:
            if d.bbox is None:
                continue
            box = fm.box_to_original(d.bbox)
            cat = match_label(d.label, item.fields["categories"])
            pred.append((cat if cat is not None else d.label, box))
            parsed.append({"label": d.label, "category": cat, "bbox": _rbox(box)})
        if dets and not pred:
            return self.miss(item, "no box in the answer")
        return Outcome(parsed=parsed, pred=pred, score=metrics.coco_map([pred], [item.gt])["map"])

    def aggregate(self, items, outcomes):
        r = metrics.coco_map([o.pred or [] for o in outcomes], [it.gt for it in items])
        return {"map": r["map"], "ap50": r["ap50"], "ap75": r["ap75"], "per_category": r["per_category"]}

    @staticmethod
    def gt_json(item):
        return [{"label": lab, "bbox": list(b)} for lab, b in item.gt]


class Counting(Task):
    name = "counting"
    max_new_tokens = 1024
    description = "CountBench: detect then count; exact-match accuracy"

    def read(self, ln):
        if not ln.has("category") and not ln.has("question"):
            raise ln.error("category", "missing (give 'category' or 'question')")
        f = {"category": ln.text("category")} if ln.has("category") else {"question": ln.text("question")}
        return ln.count("count"), f

    def prompt(self, item):
        return prompts.count(item.fields["category"]) if "category" in item.fields else item.fields["question"]

    def score(self, item, text, media, ctx):
        try:
            n = parse_count(text)
        except ParseError as e:
            return self.miss(item, e.reason)
        if n is None:
            return self.miss(item, "no count found in the answer")
        return Outcome(parsed={"count": n}, pred=n, score=float(n == item.gt))

    def aggregate(self, items, outcomes):
        return {"accuracy": metrics.counting_accuracy([o.pred for o in outcomes], [it.gt for it in items])}

    @staticmethod
    def gt_json(item):
        return {"count": item.gt}


class Temporal(Task):
    name = "temporal"
    media_key = media_kind = "video"
    description = "Charades-STA temporal grounding: mean IoU and R@1 at IoU 0.3/0.5/0.7"

    def read(self, ln):
        span = ln.get("span")
        if not (isinstance(span, (list, tuple)) and len(span) == 2):
            raise ln.error("span", f"must be [start, end] in seconds, got {_short(span)}")
        s, e = (ln.number("span", v) for v in span)
        if not 0 <= s <= e:
            raise ln.error("span", f"must satisfy 0 <= start <= end, got {_short(span)}")
        f = {"query": ln.text("query")}
        if ln.has("fps"):
            fps = ln.number("fps")
            if fps <= 0:
                raise ln.error("fps", f"must be positive, got {_short(ln.d['fps'])}")
            f["fps"] = fps
        return (s, e), f

    def prompt(self, item):
        return prompts.video_grounding(item.fields["query"])

    def conversation(self, item, ctx):
        opts = {"fps": item.fields["fps"]} if "fps" in item.fields else {}
        return prompts.messages(self.prompt(item), [("video", item.media)], media_first=True, video_options=opts)

    def score(self, item, text, media, ctx):
        try:
            spans = parse_time_spans(text)
        except ParseError as e:
            return self.miss(item, e.reason)
        span = (spans[0].start, spans[0].end)
        return Outcome(parsed={"span": [_r(span[0]), _r(span[1])]}, pred=span,
                       score=metrics.temporal_iou(span, item.gt))

    def aggregate(self, items, outcomes):
        r = metrics.charades_scores([o.pred for o in outcomes], [it.gt for it in items])
        r.pop("n", None)
        return r

    @staticmethod
    def gt_json(item):
        return {"span": list(item.gt)}


class DocVQA(Task):
    name = "docvqa"
    max_new_tokens = 64
    description = "DocVQA: short answers; ANLS"

    def read(self, ln):
        return ln.strings("answers"), {"question": ln.text("question")}

    def prompt(self, item):
        return f"{item.fields['question']}\n{DOCVQA_SUFFIX}"

    def miss(self, item, error):
        return Outcome(error=error, pred="", score=metrics.anls("", item.gt))

    def conversation(self, item, ctx):
        return prompts.messages(self.prompt(item), [item.media], media_first=True)

    def score(self, item, text, media, ctx):
        ans = text.strip()
        return Outcome(parsed={"answer": ans}, pred=ans, score=metrics.anls(ans, item.gt))

    def aggregate(self, items, outcomes):
        return {"anls": metrics.anls_score([o.pred for o in outcomes], [it.gt for it in items])}

    @staticmethod
    def gt_json(item):
        return {"answers": item.gt}


def _lines_text(lines) -> str:
    return "\n".join(s for ln in lines if (s := ln.strip()))


class OCR(Task):
    name = "ocr"
    max_new_tokens = 2048
    description = "OmniDocBench-style page text: mean normalised edit distance (lower is better)"

    def read(self, ln):
        v = ln.get("text")
        if not isinstance(v, str):
            raise ln.error("text", f"must be a string, got {_short(v)}")
        return _lines_text(v.splitlines()), {}

    def prompt(self, item):
        return prompts.READ_TEXT

    def miss(self, item, error):
        return Outcome(error=error, pred="", score=metrics.normalized_edit_distance("", item.gt))

    def conversation(self, item, ctx):
        return prompts.messages(self.prompt(item), [item.media], media_first=True)

    def score(self, item, text, media, ctx):
        try:
            pred = _lines_text(parse_ocr_lines(text))
        except ParseError as e:
            return self.miss(item, e.reason)
        return Outcome(parsed={"text": pred}, pred=pred, score=metrics.normalized_edit_distance(pred, item.gt))

    def aggregate(self, items, outcomes):
        return {"edit_distance": metrics.mean_ned([o.pred for o in outcomes], [it.gt for it in items])}

    @staticmethod
    def gt_json(item):
        return {"text": item.gt}


class ScreenSpot(Task):
    name = "screenspot"
    max_new_tokens = 256
    description = "ScreenSpot GUI grounding via the computer_use tool: click-inside-box accuracy"

    def read(self, ln):
        return ln.box("bbox", fmt=ln.box_format()), {"instruction": ln.text("instruction")}

    def prompt(self, item):
        return item.fields["instruction"]

    def frame(self, item: Item, ctx: _Ctx) -> tuple[int, int]:
        """(resized_w, resized_h): the screen resolution the tool description states (the processor's resize)."""
        from ..media.common import smart_resize
        from ..media.image import load_image

        w, h = load_image(item.media).size
        p = ctx.processor
        rh, rw = smart_resize(h, w, p.factor, int(ctx.proc_opts.get("min_pixels", p.min_pixels)),
                              int(ctx.proc_opts.get("max_pixels", p.max_pixels)))
        return rw, rh

    def conversation(self, item, ctx):
        rw, rh = self.frame(item, ctx)
        return [{"role": "system", "content": tool_system_prompt(computer_use_tool(rw, rh))},
                {"role": "user", "content": [{"type": "text", "text": self.prompt(item)},
                                             {"type": "image", "image": item.media}]}]

    def score(self, item, text, media, ctx):
        point, via = None, "tool_call"
        try:
            for call in parse_tool_calls(text):
                c = call.arguments.get("coordinate")
                if isinstance(c, (list, tuple)) and len(c) == 2 and all(
                        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in c):
                    point = (float(c[0]), float(c[1]))
                    break
        except ParseError:
            pass
        if point is None:  # no usable tool call: a point, or the centre of a box, anywhere in the answer
            via = "grounding"
            try:
                dets = parse_grounding(text)
            except ParseError:
                dets = []
            for d in dets:
                if d.point is not None:
                    point = d.point
                elif d.bbox is not None:
                    point = ((d.bbox[0] + d.bbox[2]) / 2, (d.bbox[1] + d.bbox[3]) / 2)
                if point is not None:
                    break
        if point is None:
            return self.miss(item, "no click coordinate in the answer")
        pt = _frame(media).point_to_original(point)
        hit = metrics.click_accuracy([pt], [item.gt])
        return Outcome(parsed={"point": [_r(pt[0]), _r(pt[1])], "via": via}, pred=pt, score=hit)

    def aggregate(self, items, outcomes):
        return {"accuracy": metrics.click_accuracy([o.pred for o in outcomes], [it.gt for it in items])}

    @staticmethod
    def gt_json(item):
        return {"bbox": list(item.gt)}


TASKS: dict[str, Task] = {t.name: t for t in (RefCOCO(), Detection(), Counting(), Temporal(), DocVQA(), OCR(),
                                                ScreenSpot())}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name]


# ------------------------------------------------------------------------------------------------ files


def _json_lines(path: Path, what: str = "data file"):
    """(line number, dict) for every non-blank line; invalid JSON or a non-object raises EvalDataError."""
    try:
        fh = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} not found") from None
    except IsADirectoryError:
        raise IsADirectoryError(f"{what} {path} is a directory; give a .jsonl file") from None
    with fh:
        for i, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                d = json.loads(raw)
            except json.JSONDecodeError as e:
                raise EvalDataError(path, i, None, f"invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(d, dict):
                raise EvalDataError(path, i, None, f"expected a JSON object per line, got {type(d).__name__}")
            yield i, d


def load_items(task: str | Task, data_path: str | os.PathLike, limit: int | None = None) -> list[Item]:
    """The validated items of a JSONL data file (the first `limit` ones). Media paths may be relative to the file's
    folder; a missing id becomes the line number. Raises EvalDataError naming file, line and field."""
    t = get_task(task) if isinstance(task, str) else task
    path = Path(data_path)
    items: list[Item] = []
    seen: dict[str, int] = {}
    for i, d in _json_lines(path):
        if limit is not None and len(items) >= limit:
            break
        ln = _Line(path, i, d)
        media = ln.media(t.media_key)
        gt, fields = t.read(ln)
        item_id = d.get("id", i)
        if isinstance(item_id, (dict, list)) or item_id is None:
            raise ln.error("id", f"must be a string or a number, got {_short(item_id)}")
        if str(item_id) in seen:
            raise ln.error("id", f"duplicate id {_short(item_id)} (first on line {seen[str(item_id)]})")
        seen[str(item_id)] = i
        items.append(Item(item_id, i, media, gt, fields, str(path)))
    if not items:
        raise EvalDataError(path, None, None, "no items (the file is empty)")
    return items


def read_replay(path: str | os.PathLike) -> dict[str, str]:
    """Recorded answers: id (as a string) -> text, from a JSONL of {"id", "text"} (e.g. predictions.jsonl)."""
    path = Path(path)
    out: dict[str, str] = {}
    for i, d in _json_lines(path, "replay file"):
        ln = _Line(path, i, d)
        item_id = ln.get("id")
        text = ln.get("text")
        if not isinstance(text, str):
            raise ln.error("text", f"must be a string (the model's raw answer), got {_short(text)}")
        if str(item_id) in out:
            raise ln.error("id", f"duplicate id {_short(item_id)}")
        out[str(item_id)] = text
    return out


# ------------------------------------------------------------------------------------------------ running


class _ProcessorOnly:
    """Stands in for a VLM in replay runs: the processor of a checkpoint directory, no weights loaded."""

    def __init__(self, path: Path):
        from ..config import QwenVLConfig
        from ..processor import Processor
        from ..tokenizer import Tokenizer

        if not path.is_dir():
            raise FileNotFoundError(f"model directory {path} does not exist; pass a Qwen2.5-VL checkpoint directory")
        config = QwenVLConfig.from_file(path)
        self.path = path
        self.processor = Processor.from_dir(path, Tokenizer.from_dir(path), config)


def _find_bad_item(batch: list[Item], convs: list, proc, proc_opts: dict, t: Task, err: Exception) -> Exception:
    """The item of a failed batch whose media the processor refuses, as an EvalDataError (else `err`)."""
    for it, conv in zip(batch, convs):
        try:
            proc(conv, **proc_opts)
        except ValueError as e:
            return EvalDataError(it.source, it.line, t.media_key, str(e))
    return err


def evaluate(vlm_or_path, task: str, data_path: str | os.PathLike, *, limit: int | None = None,
             out_dir: str | os.PathLike | None = None, batch_size: int = 4, replay: str | os.PathLike | None = None,
             generate_options: dict | None = None, progress: bool = True) -> dict:
    """Run (or, with `replay`, re-score) a benchmark; returns the scores dict (also written to scores.json).

    vlm_or_path: a loaded `qwenvl.VLM` or a checkpoint directory (loaded with `qwenvl.load`; with `replay` only
    its processor is built). generate_options: `vlm.generate` options (max_new_tokens, temperature, ...) and
    processor options (min_pixels, max_pixels, fps, video_max_pixels, ...); defaults: greedy and the task's
    max_new_tokens. out_dir: where predictions.jsonl and scores.json go (nothing is written when None).
    Scores: {"task", "n", "metrics", "failed", "model", "data", "settings", "seconds"}."""
    t0 = time.perf_counter()
    t = get_task(task)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    data_path = Path(data_path)
    items = load_items(t, data_path, limit)
    answers = read_replay(replay) if replay is not None else None

    if isinstance(vlm_or_path, (str, os.PathLike)):
        path = Path(vlm_or_path).expanduser()
        if answers is not None:
            vlm = _ProcessorOnly(path)
        else:
            import qwenvl
            vlm = qwenvl.load(path)
    else:
        vlm = vlm_or_path
    model_path = str(vlm_or_path) if isinstance(vlm_or_path, (str, os.PathLike)) else \
        (None if getattr(vlm, "path", None) is None else str(vlm.path))

    options = {"temperature": 0.0, "max_new_tokens": t.max_new_tokens, **(generate_options or {})}
    options = {k: v for k, v in options.items() if v is not None}
    proc_opts = {k: options[k] for k in PROCESSOR_OPTIONS if k in options}
    ctx = _Ctx(vlm.processor, proc_opts)

    out = None
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
    pred_file = open(out / "predictions.jsonl", "w", encoding="utf-8") if out is not None else None

    from tqdm import tqdm

    outcomes: list[Outcome] = []
    failed = 0
    bar = tqdm(total=len(items), desc=f"eval {t.name}", unit="item", file=sys.stderr, disable=not progress,
               dynamic_ncols=True)
    try:
        for b0 in range(0, len(items), batch_size):
            batch = items[b0:b0 + batch_size]
            convs = [_conversation(t, it, ctx) for it in batch]
            results = _run_batch(vlm, t, batch, convs, answers, options, proc_opts)
            for it, conv, (text, media, extra) in zip(batch, convs, results):
                if text is None:
                    o = t.miss(it, extra.pop("error"))
                else:
                    try:
                        o = t.score(it, text, media, ctx)
                    except ParseError as e:  # defensive: the tasks catch their parsers' errors already
                        o = t.miss(it, e.reason)
                failed += o.error is not None
                outcomes.append(o)
                if pred_file is not None:
                    rec = {"id": it.id, "prompt": _user_text(conv), "text": text, "parsed": o.parsed,
                           "score": o.score, "error": o.error, "gt": t.gt_json(it), "media": _media_info(media),
                           **extra}
                    pred_file.write(json.dumps(rec, ensure_ascii=False) + "\n")
            if pred_file is not None:
                pred_file.flush()
            bar.update(len(batch))
    finally:
        bar.close()
        if pred_file is not None:
            pred_file.close()

    settings = {"batch_size": batch_size, "limit": limit, "replay": None if replay is None else str(replay),
                **{k: v for k, v in options.items()}}
    if answers is not None:
        for k in ("temperature", "max_new_tokens"):
            settings.pop(k, None)
    scores = {"task": t.name, "n": len(items), "metrics": t.aggregate(items, outcomes), "failed": failed,
              "model": model_path, "data": str(data_path), "settings": settings,
              "seconds": round(time.perf_counter() - t0, 3)}
    if out is not None:
        (out / "scores.json").write_text(json.dumps(scores, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return scores


def default_out_dir(task: str) -> Path:
    """`eval-<task>-<YYYYmmdd-HHMMSS>` in the current directory (the CLI's default --out)."""
    return Path.cwd() / f"eval-{task}-{datetime.now():%Y%m%d-%H%M%S}"


def _conversation(t: Task, item: Item, ctx: _Ctx) -> list[dict]:
    try:
        return t.conversation(item, ctx)
    except ValueError as e:  # e.g. an unreadable screenshot whose size the screenspot prompt needs
        raise EvalDataError(item.source, item.line, t.media_key, str(e)) from None


def _user_text(conv: list[dict]) -> str:
    """The text of the (last) user turn of a conversation."""
    for msg in reversed(conv):
        if msg["role"] == "user":
            c = msg["content"]
            return c if isinstance(c, str) else "\n".join(p["text"] for p in c if p.get("type") == "text")
    return ""


def _run_batch(vlm, t: Task, batch: list[Item], convs: list, answers: dict | None, options: dict,
               proc_opts: dict) -> list[tuple[str | None, list, dict]]:
    """(answer text or None, media infos, extra record fields) per item: generated, or replayed with the media
    sizes from the processor."""
    proc = vlm.processor
    if answers is None:
        try:
            gens = vlm.generate(convs, **options)
        except ValueError as e:
            raise _find_bad_item(batch, convs, proc, proc_opts, t, e) from None
        return [(g.text, list(g.media), {"finish_reason": g.finish_reason, "usage": g.usage.to_dict()})
                for g in gens]
    out = []
    for it, conv in zip(batch, convs):
        try:
            media = proc(conv, **proc_opts).media[0]
        except ValueError as e:
            raise EvalDataError(it.source, it.line, t.media_key, str(e)) from None
        text = answers.get(str(it.id))
        out.append((text, list(media), {} if text is not None else {"error": "no recorded answer for this id"}))
    return out
