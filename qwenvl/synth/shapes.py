"""Grounding scenes: 1-8 non-overlapping coloured shapes on pale backgrounds -> detect, refer, point, count.

Answers follow capabilities.md §1.3: a ```json fenced list of {"bbox_2d": [x1, y1, x2, y2], "label": ...}
(or {"point_2d": [x, y], "label": ...}) in model-frame pixels; counting is "detect then count" (the list, then
"There are N items in the image."). Objects are listed in reading order (top to bottom, then left to right).
A box is the shape's extent in continuous pixel edges: the shape's pixels are columns x1..x2-1, rows y1..y2-1.
"""
from __future__ import annotations

import math
import random

from PIL import ImageDraw

from ..tasks import prompts
from . import COLOURS, Ctx, background, base_meta, fenced_json, frame_map, image_record, image_size, jitter, save_png

SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon", "pentagon", "cross")
POSITIONS = {  # phrase -> (axis of the centre, +1: largest wins / -1: smallest wins)
    "on the left": (0, -1), "on the right": (0, 1), "at the top": (1, -1), "at the bottom": (1, 1)}


def max_objects(curriculum: int) -> int:
    return (1, 3, 5, 8)[min(max(curriculum, 0), 3)]


def _normalised(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, y0, dx, dy = min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)
    return [((x - x0) / dx, (y - y0) / dy) for x, y in points]


def _regular(n: int, start_deg: float, inner: float | None = None) -> list[tuple[float, float]]:
    pts = []
    k = 2 * n if inner else n
    for i in range(k):
        r = inner if inner and i % 2 else 1.0
        a = math.radians(start_deg + 360.0 * i / k)
        pts.append((r * math.cos(a), r * math.sin(a)))
    return _normalised(pts)


_T = 1 / 3
OUTLINES = {  # unit-square polygons that touch all four sides
    "square": [(0, 0), (1, 0), (1, 1), (0, 1)],
    "triangle": [(0.5, 0), (1, 1), (0, 1)],
    "diamond": [(0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)],
    "hexagon": _regular(6, 0),
    "pentagon": _regular(5, -90),
    "star": _regular(5, -90, inner=0.45),
    "cross": [(_T, 0), (2 * _T, 0), (2 * _T, _T), (1, _T), (1, 2 * _T), (2 * _T, 2 * _T), (2 * _T, 1), (_T, 1),
              (_T, 2 * _T), (0, 2 * _T), (0, _T), (_T, _T)],
}


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box, fill) -> None:
    """Fill `shape` so that its pixels cover exactly columns x1..x2-1 and rows y1..y2-1 of the int box."""
    x1, y1, x2, y2 = box
    if shape == "circle":
        draw.ellipse([x1, y1, x2 - 1, y2 - 1], fill=fill)
        return
    w, h = x2 - 1 - x1, y2 - 1 - y1
    draw.polygon([(x1 + u * w, y1 + v * h) for u, v in OUTLINES[shape]], fill=fill)


def place_boxes(rng: random.Random, h: int, w: int, n: int, lo: int, hi: int, gap: int = 4,
                margin: int = 3) -> list[list[int]]:
    """Up to n non-overlapping square boxes [x1, y1, x2, y2] (sides in [lo, hi], `gap` px apart)."""
    boxes: list[list[int]] = []
    for _ in range(n):
        for _ in range(200):
            s = rng.randint(lo, hi)
            if s + 2 * margin > min(h, w):
                continue
            x, y = rng.randint(margin, w - margin - s), rng.randint(margin, h - margin - s)
            b = [x, y, x + s, y + s]
            if all(b[0] >= o[2] + gap or o[0] >= b[2] + gap or b[1] >= o[3] + gap or o[1] >= b[3] + gap
                   for o in boxes):
                boxes.append(b)
                break
    return boxes


def scene(ctx: Ctx, rng: random.Random, n: int | None = None, size: tuple[int, int] | None = None):
    """Render a scene: (image, objects [{shape, colour, label, box}] in reading order, background kind)."""
    # ctx.extra: "image_size" (h, w) renders every scene at one size (a one-size-first curriculum stage);
    # "max_side" caps the curriculum's largest side.
    h, w = size or ctx.extra.get("image_size") or image_size(rng, ctx.curriculum, hi=ctx.extra.get("max_side"))
    n = n or rng.randint(1, max_objects(ctx.curriculum))
    fm = frame_map(h, w, ctx)
    scale = max(fm.sx, fm.sy)  # original px per model px: keep shapes >= 14 model px
    m = min(h, w)
    lo = max(16, math.ceil(14 * scale), int(0.08 * m))
    hi = max(lo, int(m * (0.45 if n == 1 else 0.32 if n <= 3 else 0.24 if n <= 5 else 0.2)))
    boxes = place_boxes(rng, h, w, n, lo, hi) or place_boxes(rng, h, w, 1, min(lo, m - 8), min(lo, m - 8))
    # A small palette per scene makes repeated colours and shapes (and so positional expressions) common.
    colours = rng.sample(sorted(COLOURS), rng.choice([2, 3, 4, len(COLOURS)]))
    shapes = rng.sample(SHAPES, rng.choice([2, 3, 4, len(SHAPES)]))
    img, bg = background(rng, h, w)
    draw = ImageDraw.Draw(img)
    objs = []
    for b in boxes:
        c, s = rng.choice(colours), rng.choice(shapes)
        draw_shape(draw, s, b, jitter(COLOURS[c], rng))
        objs.append({"shape": s, "colour": c, "label": f"{c} {s}", "box": b})
    objs.sort(key=lambda o: (o["box"][1], o["box"][0]))
    return img, objs, bg, fm


def centre(box) -> tuple[float, float]:
    return ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)


# ------------------------------------------------------------------------------------------- referring expressions


def resolve(expr: dict, objects: list[dict], size: tuple[int, int]) -> list[int]:
    """Indices of the objects a referring expression {colour, shape, position} picks out. A position selects the
    extreme member of the colour/shape group along its axis, and only when the group has >= 2 members and the
    extreme one leads the next by a clear margin (>= 8 px and 8 % of the image side); otherwise nothing."""
    group = [i for i, o in enumerate(objects)
             if expr.get("colour") in (None, o["colour"]) and expr.get("shape") in (None, o["shape"])]
    pos = expr.get("position")
    if pos is None:
        return group
    if len(group) < 2:
        return []
    axis, sign = POSITIONS[pos]
    ranked = sorted(group, key=lambda i: -sign * centre(objects[i]["box"])[axis])
    a, b = (centre(objects[i]["box"])[axis] for i in ranked[:2])
    side = size[1] if axis == 0 else size[0]
    return [ranked[0]] if abs(a - b) >= max(8.0, 0.08 * side) else []


def phrase(expr: dict) -> str:
    words = [expr["colour"]] if expr.get("colour") else []
    words.append(expr.get("shape") or "shape")
    if expr.get("position"):
        words.append(expr["position"])
    return "the " + " ".join(words)


def expressions(target: int, objects: list[dict], size: tuple[int, int]) -> list[dict]:
    """Every expression form that resolves to exactly `target`, simplest forms first."""
    o = objects[target]
    out = []
    for pos in (None, *POSITIONS):
        for colour, shape in ((o["colour"], o["shape"]), (None, o["shape"]), (o["colour"], None), (None, None)):
            e = {"colour": colour, "shape": shape, "position": pos}
            if resolve(e, objects, size) == [target]:
                out.append(e)
    return out


def pick_referent(rng: random.Random, objects: list[dict], size) -> tuple[int, dict] | None:
    order = list(range(len(objects)))
    rng.shuffle(order)
    for t in order:
        exprs = expressions(t, objects, size)
        if exprs:
            # Prefer expressions that name the colour and/or shape; fall back to whatever is unique.
            named = [e for e in exprs if e["colour"] or e["shape"]] or exprs
            return t, rng.choice(named)
    return None


# ------------------------------------------------------------------------------------------------------ tasks


def _objects_meta(objs):
    return [{"label": o["label"], "shape": o["shape"], "colour": o["colour"], "box": o["box"]} for o in objs]


def _save(ctx, task, name, img):
    rel, full = ctx.media(task, name, "png")
    save_png(img, full)
    return rel


def detect(ctx: Ctx, rng: random.Random, name: str) -> dict:
    img, objs, bg, fm = scene(ctx, rng)
    answer = fenced_json([{"bbox_2d": fm.box_label(o["box"]), "label": o["label"]} for o in objs])
    meta = {**base_meta(fm, ctx), "background": bg, "objects": _objects_meta(objs), "category": "shape"}
    return image_record(ctx, _save(ctx, "detect", name, img), prompts.detect("shape"), answer, meta)


def count(ctx: Ctx, rng: random.Random, name: str) -> dict:
    img, objs, bg, fm = scene(ctx, rng)
    n = len(objs)
    tail = "There is 1 item in the image." if n == 1 else f"There are {n} items in the image."
    answer = fenced_json([{"bbox_2d": fm.box_label(o["box"]), "label": o["label"]} for o in objs]) + "\n" + tail
    meta = {**base_meta(fm, ctx), "background": bg, "objects": _objects_meta(objs), "count": n}
    return image_record(ctx, _save(ctx, "count", name, img), prompts.count(), answer, meta)


def _referred(ctx: Ctx, rng: random.Random):
    for _ in range(20):
        img, objs, bg, fm = scene(ctx, rng)
        got = pick_referent(rng, objs, fm.original)
        if got is not None:
            return img, objs, bg, fm, got[0], got[1]
    raise RuntimeError("could not build a scene with a unique referring expression")  # pragma: no cover


def refer(ctx: Ctx, rng: random.Random, name: str) -> dict:
    img, objs, bg, fm, t, expr = _referred(ctx, rng)
    text = phrase(expr)
    label = text[len("the "):]
    answer = fenced_json([{"bbox_2d": fm.box_label(objs[t]["box"]), "label": label}])
    meta = {**base_meta(fm, ctx), "background": bg, "objects": _objects_meta(objs), "target": t,
            "expression": text, "expr": expr, "box": objs[t]["box"]}
    return image_record(ctx, _save(ctx, "refer", name, img), prompts.refer(text), answer, meta)


def point(ctx: Ctx, rng: random.Random, name: str) -> dict:
    img, objs, bg, fm, t, expr = _referred(ctx, rng)
    text = phrase(expr)
    label = text[len("the "):]
    c = centre(objs[t]["box"])
    answer = fenced_json([{"point_2d": fm.point_label(c), "label": label}])
    meta = {**base_meta(fm, ctx), "background": bg, "objects": _objects_meta(objs), "target": t,
            "expression": text, "expr": expr, "box": objs[t]["box"], "point": list(c)}
    return image_record(ctx, _save(ctx, "point", name, img), prompts.point(text, xml=False), answer, meta)


TASKS = {"detect": detect, "refer": refer, "point": point, "count": count}
