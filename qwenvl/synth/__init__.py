"""Synthetic, seeded training/evaluation tasks for the embedded default model (issue 7, item 1).

Every generator is a function `fn(ctx, rng, name) -> record` that renders its media under `ctx.out_dir` and
returns one training record in the JSONL "messages" format of `qwenvl.train.data`:

    {"messages": [{"role": "user", "content": [{"type": "text", ...}, {"type": "image", "image": "media/..png",
                   "min_pixels": ..., "max_pixels": ...}]}, {"role": "assistant", "content": "..."}],
     "meta": {"task": ..., "original": [h, w], "resized": [h, w], "min_pixels": ..., "max_pixels": ..., ...}}

Answers are in the model frame (absolute pixels of the smart_resize'd image, capabilities.md §1.1), converted with
`FrameMap` from the rendered size to the resized size the processor produces for the pixel limits that ride on
the media part; `meta` keeps the ground truth in ORIGINAL pixels so an evaluator can score. Same seed, same
records and the same media bytes (on the same Pillow/PyAV/FFmpeg build). `build_dataset` (qwenvl.synth.build)
writes whole splits; train and held-out records come from disjoint seed ranges (`record_seed`).
"""
from __future__ import annotations

import functools
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFont

from ..media.common import smart_resize
from ..tasks.coords import FrameMap

__all__ = ["Ctx", "COLOURS", "generate", "record_seed", "frame_map",
           "image_size", "background", "font", "FONT_FAMILIES", "fenced_json", "image_record", "base_meta",
           "SPLIT_OFFSET", "SEED_STRIDE", "DEFAULT_MIN_PIXELS", "DEFAULT_MAX_PIXELS"]

DEFAULT_MIN_PIXELS = 4 * 28 * 28  # 3136: the processor's own minimum
DEFAULT_MAX_PIXELS = 256 * 28 * 28  # 200704 = 448 x 448: every generated image keeps (about) its size
SPLITS = ("train", "heldout")
SPLIT_OFFSET = {"train": 0, "heldout": 1 << 62}  # record seeds of the two splits never meet
SEED_STRIDE = 10_000_000  # records per (split, seed); index must stay below it

# Named colours (RGB) for shapes, text and widgets: saturated enough to read on the pale backgrounds.
COLOURS = {
    "red": (220, 30, 30), "green": (30, 150, 50), "blue": (30, 70, 220), "yellow": (225, 185, 0),
    "orange": (245, 125, 0), "purple": (135, 45, 180), "black": (25, 25, 25), "brown": (125, 75, 30),
    "pink": (240, 95, 170), "cyan": (0, 165, 190),
}


@dataclass(frozen=True)
class Ctx:
    """Where and how a generator renders: output dir, split, curriculum level, pixel limits, video format."""
    out_dir: Path
    split: str = "train"
    curriculum: int = 0
    min_pixels: int = DEFAULT_MIN_PIXELS
    max_pixels: int = DEFAULT_MAX_PIXELS
    video_format: str = "mp4"  # "mp4" or "frames" (a list of PNG frames sampled at the record's fps)
    extra: dict = field(default_factory=dict, compare=False)
    media_dir: str | None = None  # folder under media/ (default: the split); a named file gets its own

    def media(self, task: str, name: str, ext: str) -> tuple[str, Path]:
        """(path relative to out_dir as written in the record, absolute path with its folder created)."""
        rel = f"media/{self.media_dir or self.split}/{task}/{name}.{ext}"
        full = Path(self.out_dir) / rel
        full.parent.mkdir(parents=True, exist_ok=True)
        return rel, full


def record_seed(split: str, seed: int, index: int) -> int:
    """The seed of record `index` of a split: disjoint integer ranges per split and per base seed."""
    if split not in SPLIT_OFFSET:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 0 <= index < SEED_STRIDE or not 0 <= seed < (1 << 62) // SEED_STRIDE:
        raise ValueError(f"index must be in [0, {SEED_STRIDE}) and seed in [0, {(1 << 62) // SEED_STRIDE}) "
                         f"(got index={index}, seed={seed})")
    return SPLIT_OFFSET[split] + seed * SEED_STRIDE + index


def task_rng(task: str, rseed: int) -> random.Random:
    """A per-record random stream (string seeding is stable across Python runs and versions)."""
    return random.Random(f"qwenvl.synth/{task}/{rseed}")


def np_rng(rng: random.Random) -> np.random.Generator:
    return np.random.default_rng(rng.getrandbits(63))


def generate(task: str, ctx: Ctx, seed: int = 0, index: int = 0) -> dict:
    """One record of `task` (a key of TASKS), its media written under ctx.out_dir."""
    from .build import TASKS

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
    rseed = record_seed(ctx.split, seed, index)
    rec = TASKS[task](ctx, task_rng(task, rseed), f"{seed}-{index:06d}")
    rec["meta"] = {"task": task, "id": f"{ctx.split}/{task}/{seed}-{index:06d}", "split": ctx.split, "seed": rseed,
                   "curriculum": ctx.curriculum, **rec["meta"]}
    return rec


# ------------------------------------------------------------------------------------------------ geometry


def frame_map(h: int, w: int, ctx: Ctx) -> FrameMap:
    """original (h, w) -> the resized frame the processor will use for ctx's pixel limits."""
    return FrameMap((h, w), smart_resize(h, w, 28, ctx.min_pixels, ctx.max_pixels))


RATIOS = (1.0, 4 / 3, 3 / 4, 3 / 2, 2 / 3, 16 / 9, 9 / 16, 2.0, 0.5)


def max_side(curriculum: int) -> int:
    return (224, 336, 448)[min(max(curriculum, 0), 2)]


def image_size(rng: random.Random, curriculum: int, lo: int = 112, hi: int | None = None,
               ratios=RATIOS) -> tuple[int, int]:
    """(h, w), both in [lo, hi] (hi from the curriculum: 224, 336, then 448), aspect ratio from `ratios`; sizes are
    plain integers, rarely multiples of 28, so the processor's resize is exercised."""
    hi = max(lo, hi or max_side(curriculum))
    for _ in range(50):
        r = rng.choice(ratios)  # w / h
        if r >= 1:
            w = rng.randint(min(hi, round(lo * r)), hi)
            h = round(w / r)
        else:
            h = rng.randint(min(hi, round(lo / r)), hi)
            w = round(h * r)
        if lo <= h <= hi and lo <= w <= hi:
            return h, w
    s = rng.randint(lo, hi)
    return s, s


def jitter(rgb, rng: random.Random, amount: int = 15) -> tuple[int, int, int]:
    return tuple(min(255, max(0, c + rng.randint(-amount, amount))) for c in rgb)


def pale(rng: random.Random) -> tuple[int, int, int]:
    return tuple(rng.randint(205, 255) for _ in range(3))


def background(rng: random.Random, h: int, w: int, kinds=("plain", "gradient", "noise")) -> tuple[Image.Image, str]:
    """A pale background: a plain colour, a linear gradient between two pale colours, or light noise."""
    kind = rng.choice(kinds)
    a = np.array(pale(rng), np.float32)
    if kind == "plain":
        arr = np.broadcast_to(a, (h, w, 3))
    elif kind == "gradient":
        b = np.array(pale(rng), np.float32)
        ang = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        t = xx * np.cos(ang) / max(w, 1) + yy * np.sin(ang) / max(h, 1)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        arr = a + (b - a) * t[..., None]
    else:
        arr = a + np_rng(rng).normal(0, rng.uniform(3, 9), (h, w, 3)).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB"), kind


# ------------------------------------------------------------------------------------------------ fonts

_DEJAVU = {"dejavu-sans": "DejaVuSans.ttf", "dejavu-serif": "DejaVuSerif.ttf", "dejavu-mono": "DejaVuSansMono.ttf",
           "dejavu-sans-bold": "DejaVuSans-Bold.ttf"}
_FONT_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/dejavu", "/usr/share/fonts/TTF",
              "/usr/local/share/fonts", "/Library/Fonts")


def _font_files() -> dict[str, str]:
    found = {}
    for name, file in _DEJAVU.items():
        for d in _FONT_DIRS:
            if (Path(d) / file).is_file():
                found[name] = str(Path(d) / file)
                break
    return found


_FILES = _font_files()
# "default" is Pillow's bundled scalable font (the same on every machine); DejaVu where the system has it.
FONT_FAMILIES = ("default", *[k for k in _DEJAVU if k in _FILES and not k.endswith("bold")])


@functools.lru_cache(maxsize=256)
def font(size: int, family: str = "default") -> ImageFont.FreeTypeFont:
    if family != "default" and family in _FILES:
        return ImageFont.truetype(_FILES[family], size)
    if family == "dejavu-sans-bold" and "dejavu-sans" in _FILES:
        return ImageFont.truetype(_FILES["dejavu-sans"], size)
    return ImageFont.load_default(size=size)


def bold_family(family: str) -> str:
    return "dejavu-sans-bold" if family.startswith("dejavu") and "dejavu-sans-bold" in _FILES else family


# ------------------------------------------------------------------------------------------------ records


def fenced_json(value, list_items: bool = True) -> str:
    """A ```json fence as Qwen2.5-VL writes it: a list with one tab-indented object per line, or an object with
    4-space indentation."""
    if list_items and isinstance(value, list):
        body = "[\n" + ",\n".join("\t" + json.dumps(v, ensure_ascii=False) for v in value) + "\n]"
    else:
        body = json.dumps(value, ensure_ascii=False, indent=4)
    return f"```json\n{body}\n```"


def save_png(img: Image.Image, path: Path) -> None:
    img.save(path, format="PNG", compress_level=6)


def base_meta(fm: FrameMap, ctx: Ctx) -> dict:
    return {"original": list(fm.original), "resized": list(fm.resized), "min_pixels": ctx.min_pixels,
            "max_pixels": ctx.max_pixels}


def image_record(ctx: Ctx, rel: str, text: str, answer: str, meta: dict, *, system: str | None = None,
                 image_first: bool = False) -> dict:
    """A one-turn record: user [text, image] (or [image, text]) -> assistant answer, with the pixel limits on the
    image part so the processor resizes it to meta['resized'] whatever its defaults."""
    image = {"type": "image", "image": rel, "min_pixels": ctx.min_pixels, "max_pixels": ctx.max_pixels}
    text_part = {"type": "text", "text": text}
    msgs = [] if system is None else [{"role": "system", "content": system}]
    msgs.append({"role": "user", "content": [image, text_part] if image_first else [text_part, image]})
    msgs.append({"role": "assistant", "content": answer})
    return {"messages": msgs, "meta": meta}


def __getattr__(name: str):
    """TASKS, build_dataset and corpus_text live in .build (imported on first use, so that
    `python -m qwenvl.synth.build` does not import the module twice)."""
    if name in ("TASKS", "build_dataset", "corpus_text"):
        from . import build

        return getattr(build, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
