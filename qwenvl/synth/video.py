"""Video grounding clips: 4-60 s at a native 10-30 fps in which an event happens during [t1, t2] (capabilities.md §3.2).

Events: a shape appears (visible only during the span), a shape moves (still, then moving, then still), a shape
changes colour (during the span). The record's video part carries the sampling rate `fps` F (0.5-4 by default;
`ctx.extra["fps_range"]` = (lo, hi) or `ctx.extra["fps_choices"]` = [rates] override it) and the pixel limits;
the answer is "The given query happens in {t1:.1f} - {t2:.1f} seconds." with t1, t2 on a 0.1 s grid.

Output is an mp4 (H.264 via libx264, else MPEG-4 part 2) of small frames, or with ctx.video_format == "frames" a
list of PNG frames already sampled at F (frame i shows time i / F), which the processor takes as a sampled clip.
`meta` has the span, duration, native and sampling fps, the frame count the processor will sample and the
resized frame size.
"""
from __future__ import annotations

import math
import random
from fractions import Fraction

import numpy as np
from PIL import Image, ImageDraw

from ..media import video as vid
from ..media.common import smart_resize
from ..tasks import prompts
from . import COLOURS, Ctx, background, jitter, save_png
from .shapes import SHAPES, draw_shape, place_boxes

FRAME_SIZES = ((112, 112), (112, 140), (140, 112), (112, 168), (168, 112))  # (h, w), even for yuv420p
NATIVE_FPS = (10, 12, 15, 20, 24, 25, 30)
EVENTS = ("appear", "move", "colour")


def max_duration(curriculum: int) -> float:
    return (12.0, 30.0, 60.0)[min(max(curriculum, 0), 2)]


def answer_text(t1: float, t2: float) -> str:
    return f"The given query happens in {t1:.1f} - {t2:.1f} seconds."


def sample_fps(ctx: Ctx, rng: random.Random) -> float:
    """The sampling rate F: one of ctx.extra["fps_choices"] if given, else uniform in ctx.extra["fps_range"]
    (default 0.5-4), rounded to 0.01."""
    if ctx.extra.get("fps_choices"):
        return float(rng.choice(list(ctx.extra["fps_choices"])))
    lo, hi = ctx.extra.get("fps_range", (0.5, 4.0))
    return round(rng.uniform(float(lo), float(hi)), 2)


def plan(ctx: Ctx, rng: random.Random) -> dict:
    """The clip: size, native fps, frame count, sampling fps, event kind and span, subject and distractors."""
    h, w = rng.choice(FRAME_SIZES)
    native = rng.choice(NATIVE_FPS)
    dur = rng.uniform(4.0, max_duration(ctx.curriculum))
    n_total = max(round(dur * native), 4 * native)
    dur = n_total / native
    f = sample_fps(ctx, rng)
    # The span holds >= 1.5 sampling periods (so a sampled frame sees it) and leaves video on at least one side.
    lo = min(max(1.0, 1.5 / f), 0.75 * dur)
    hi = max(lo, 0.6 * dur)
    length = rng.uniform(lo, hi)
    grid = math.floor(dur * 10 + 1e-6)  # last 0.1 s step inside the clip
    t1 = round(rng.uniform(0.0, max(0.0, dur - length)) * 10)
    t2 = min(grid, max(t1 + 1, round((t1 / 10 + length) * 10)))
    if t1 == 0 and t2 == grid:
        t1 = round(min(0.5 * dur, 1.0) * 10)
    kind = rng.choice(EVENTS)
    colours = sorted(COLOURS)
    subject = {"shape": rng.choice(SHAPES), "colour": rng.choice(colours)}
    other = rng.choice([c for c in colours if c != subject["colour"]])
    n_dis = rng.randint(0, min(ctx.curriculum, 3))
    m = min(h, w)
    boxes = place_boxes(rng, h, w, 1 + n_dis, int(0.2 * m), int(0.3 * m), gap=6)
    distractors = []
    for b in boxes[1:]:  # distractors never share the subject's shape, so every query names one thing
        distractors.append({"shape": rng.choice([s for s in SHAPES if s != subject["shape"]]),
                            "colour": rng.choice(colours), "box": b})
    start = boxes[0]
    s = start[2] - start[0]
    end = start
    if kind == "move":
        for _ in range(50):
            x, y = rng.randint(2, w - 2 - s), rng.randint(2, h - 2 - s)
            if math.hypot(x - start[0], y - start[1]) >= 0.3 * m:
                end = [x, y, x + s, y + s]
                break
        else:
            end = [w - 2 - s, h - 2 - s, w - 2, h - 2] if start[0] < w / 2 else [2, 2, 2 + s, 2 + s]
    query = {"appear": f"a {subject['colour']} {subject['shape']} appears",
             "move": f"the {subject['colour']} {subject['shape']} moves",
             "colour": f"the {subject['shape']} turns {other}"}[kind]
    return {"size": [h, w], "native_fps": native, "n_total": n_total, "duration": dur, "fps": f, "kind": kind,
            "span": [t1 / 10, t2 / 10], "subject": subject, "other_colour": other, "start": start, "end": end,
            "distractors": distractors, "query": query}


class _Painter:
    """Frames of a planned clip as RGB arrays; identical states share one rendered array."""

    def __init__(self, p: dict, rng: random.Random):
        h, w = p["size"]
        self.p = p
        base, self.bg = background(rng, h, w, kinds=("plain", "gradient"))
        draw = ImageDraw.Draw(base)
        for d in p["distractors"]:
            draw_shape(draw, d["shape"], d["box"], jitter(COLOURS[d["colour"]], rng))
        self.base = base
        self.fill = jitter(COLOURS[p["subject"]["colour"]], rng)
        self.fill2 = jitter(COLOURS[p["other_colour"]], rng)
        self.cache: dict = {}

    def state(self, t: float):
        p = self.p
        t1, t2 = p["span"]
        active = t1 <= t + 1e-9 < t2
        if p["kind"] == "appear":
            return (p["start"], self.fill) if active else None
        if p["kind"] == "colour":
            return p["start"], self.fill2 if active else self.fill
        a = min(max((t - t1) / (t2 - t1), 0.0), 1.0)
        box = [round(u + (v - u) * a) for u, v in zip(p["start"], p["end"])]
        return box, self.fill

    def frame(self, t: float) -> np.ndarray:
        st = self.state(t)
        key = None if st is None else (tuple(st[0]), st[1])
        if key not in self.cache:
            img = self.base.copy()
            if st is not None:
                draw_shape(ImageDraw.Draw(img), self.p["subject"]["shape"], st[0], st[1])
            self.cache[key] = np.asarray(img)
        return self.cache[key]


def write_mp4(path, frames, fps: int, size) -> str:
    """Encode RGB frames (an iterable of (h, w, 3) uint8) at `fps`; returns the codec used."""
    import av

    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    h, w = size
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=Fraction(fps, 1))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "20", "preset": "ultrafast", "threads": "1"}
        else:
            stream.bit_rate = 400_000
        stream.thread_count = 1
        for k, arr in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            frame.pts = k
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return codec


def sampled_frames(duration: float, fps: float) -> int:
    """Frames of a frame-list clip sampled at `fps`: times i / fps inside [0, duration)."""
    return max(2, math.floor(duration * fps - 1e-6) + 1)


def video_grounding(ctx: Ctx, rng: random.Random, name: str) -> dict:
    p = plan(ctx, rng)
    painter = _Painter(p, rng)
    h, w = p["size"]
    native, f = p["native_fps"], p["fps"]
    part = {"type": "video", "fps": f, "min_pixels": ctx.min_pixels, "max_pixels": ctx.max_pixels}
    if ctx.video_format == "frames":
        n = sampled_frames(p["duration"], f)
        paths = []
        for i in range(n):
            rel, full = ctx.media("video_grounding", f"{name}/{i:04d}", "png")
            save_png(Image.fromarray(painter.frame(i / f)), full)
            paths.append(rel)
        part["video"] = paths
        nframes = n + n % 2
        resized = smart_resize(h, w, 28, ctx.min_pixels, ctx.max_pixels)
        codec, times = "png", [i / f for i in range(n)]
    else:
        rel, full = ctx.media("video_grounding", name, "mp4")
        codec = write_mp4(full, (painter.frame(k / native) for k in range(p["n_total"])), native, (h, w))
        part["video"] = rel
        ele = {"fps": f, "min_pixels": ctx.min_pixels, "max_pixels": ctx.max_pixels}
        nframes = vid.smart_nframes(ele, p["n_total"], native)
        mn, mx = vid.video_max_pixels(ele, nframes)
        resized = smart_resize(h, w, 28, min_pixels=mn, max_pixels=mx)
        times = [i / native for i in vid.frame_indices(0, p["n_total"] - 1, nframes)]
    t1, t2 = p["span"]
    meta = {"original": [h, w], "resized": list(resized), "min_pixels": ctx.min_pixels, "max_pixels": ctx.max_pixels,
            "span": [t1, t2], "duration": p["duration"], "native_fps": native, "n_frames_total": p["n_total"],
            "fps": f, "nframes": nframes, "frame_times": [round(t, 4) for t in times], "event": p["kind"],
            "query": p["query"], "subject": p["subject"], "start_box": p["start"], "end_box": p["end"],
            "distractors": p["distractors"], "background": painter.bg, "format": ctx.video_format, "codec": codec}
    msgs = [{"role": "user", "content": [part, {"type": "text", "text": prompts.video_grounding(p["query"])}]},
            {"role": "assistant", "content": answer_text(t1, t2)}]
    return {"messages": msgs, "meta": meta}


TASKS = {"video_grounding": video_grounding}
