"""Learnability probes: the smallest picture tasks, to test a from-scratch training recipe in minutes.

One coloured square on a plain 112 x 112 picture (16 visual tokens), and one question whose answer needs exactly
one skill:

- `colour`: "What colour is the square?" -> "It is red." (content: the picture's colour reaches the answer);
- `side`: "Is the square on the left or on the right?" / "... at the top or at the bottom?" -> "It is left."
  (one bit of position; the square is never within 10 px of the middle);
- `cell`: as `side`, but the square is 28 x 28 px and fills exactly one merged token's cell, so one visual token
  holds all of it (position without the clutter of a square split across tokens);
- `point`: "Where is the square?" -> "[x, y]", its centre in pixels (full position);
- `point_sizes`: `point` on pictures of 2-5 x 2-5 merged tokens (56-140 px a side, at most 16 tokens). The width
  in tokens varies, and so does the answer's distance from the picture (the text after a picture starts at its
  largest row/column index + 1); a model that found the square through a shortcut for one size fails here.
- `when`: a clip of 4-24 s (56 x 56 px frames at 2 fps: one temporal patch, 2 x 2 visual tokens, per second)
  in which the square shows during one second only -> "It appears at 13 seconds." (time: every frame but two is
  blank, so the answer must find the patch by content and read its time from the temporal MRoPE ids, 2 per s).

A recipe that cannot learn `side` cannot learn boxes, points, clicks or time spans. The embedded model's notes
(docs/embedded-runs/notes.md) table what the 10.5M-parameter model learns from each and after how many samples.

    python -m qwenvl.synth.probes build --out runs/probe --task side --n 4000 --seed 5
    python -m qwenvl.synth.probes score -m CHECKPOINT --data runs/probe/side-heldout.jsonl
    bash scripts/probes_time.sh runs/probe-time    # the time rungs (`when`, then `span`) from the shipped model
"""
from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
from pathlib import Path

from PIL import Image, ImageDraw

from . import COLOURS, DEFAULT_MIN_PIXELS, SPLIT_OFFSET, save_png

TASKS = ("colour", "side", "cell", "point", "point_sizes", "when", "span", "span_named")
POINT_TASKS = ("probe_point", "probe_point_sizes")  # scored by pixel error
CELL = 28  # pixels per merged visual token (patch 14 x merge 2)
SIZE = 112  # pixels: 4 x 4 merged visual tokens; the processor keeps this size
SIZES = [(w, h) for w in range(56, 141, CELL) for h in range(56, 141, CELL) if w * h <= SIZE * SIZE]  # point_sizes
LIMITS = {"min_pixels": DEFAULT_MIN_PIXELS, "max_pixels": SIZE * SIZE}
WHEN_SIDE, WHEN_FPS, WHEN_SECONDS = 56, 2.0, (4, 24)  # `when`: frame size, sampling rate, clip length range (s)
SPAN_FPS = (1.0, 2.0, 4.0)  # `span`: sampling rates (the clip length range is WHEN_SECONDS)
BACKGROUND = (245, 245, 240)


def save_frames(out: Path, name: str, **frames: Image.Image) -> dict[str, str]:
    """Save each frame once as out/media/<name>-<key>.png; return the paths relative to out, by key."""
    paths = {k: f"media/{name}-{k}.png" for k in frames}
    for k, img in frames.items():
        save_png(img, out / paths[k])
    return paths


def when_record(rng: random.Random, out: Path, name: str) -> dict:
    """A `when` clip as a list of PNG frames (sampled at WHEN_FPS) and its record."""
    colour = rng.choice(sorted(COLOURS))
    seconds = rng.randint(*WHEN_SECONDS)
    k = rng.randrange(seconds)  # the second (= temporal patch) in which the square shows
    s = rng.randint(18, 26)
    x, y = rng.randint(0, WHEN_SIDE - s), rng.randint(0, WHEN_SIDE - s)
    blank = Image.new("RGB", (WHEN_SIDE, WHEN_SIDE), BACKGROUND)
    shown = blank.copy()
    ImageDraw.Draw(shown).rectangle([x, y, x + s - 1, y + s - 1], fill=COLOURS[colour])
    per_s = round(WHEN_FPS)
    paths = save_frames(out, name, blank=blank, shown=shown)  # the clip's frames repeat these two files
    frames = [paths["shown" if i // per_s == k else "blank"] for i in range(seconds * per_s)]
    a = f"It appears at {k} seconds."
    video = {"type": "video", "video": frames, "fps": WHEN_FPS, "min_pixels": WHEN_SIDE ** 2,
             "max_pixels": WHEN_SIDE ** 2}
    return {"messages": [{"role": "user", "content": [video, {"type": "text", "text": "When does the square appear?"}]},
                         {"role": "assistant", "content": a}],
            "meta": {"task": "probe_when", "answer": a, "colour": colour, "second": k, "seconds": seconds}}


def span_record(rng: random.Random, out: Path, name: str, named: bool = False) -> dict:
    """A `span` clip as a list of PNG frames and its record: the square shows in patches i..j-1 of P (with
    `named`, beside a square of another colour that shows in every frame)."""
    colour = rng.choice(sorted(COLOURS))
    fps = rng.choice(SPAN_FPS)
    patch_s = 2 / fps  # seconds per temporal patch (2 frames)
    P = rng.randint(math.ceil(WHEN_SECONDS[0] / patch_s), math.floor(WHEN_SECONDS[1] / patch_s))
    i = rng.randrange(P)
    j = rng.randint(i + 1, min(P, i + max(1, P // 2)))  # at most half the clip, at least one patch
    s = rng.randint(18, 26)
    x, y = rng.randint(0, WHEN_SIDE - s), rng.randint(0, WHEN_SIDE - s)
    blank = Image.new("RGB", (WHEN_SIDE, WHEN_SIDE), BACKGROUND)
    other = None
    if named:  # the other square sits in the opposite half, so the two never touch
        other = rng.choice(sorted(set(COLOURS) - {colour}))
        x = rng.randint(0, WHEN_SIDE // 2 - s)
        ox, oy = rng.randint(WHEN_SIDE // 2, WHEN_SIDE - s), rng.randint(0, WHEN_SIDE - s)
        if rng.random() < 0.5:
            x, ox = ox, x
        ImageDraw.Draw(blank).rectangle([ox, oy, ox + s - 1, oy + s - 1], fill=COLOURS[other])
    shown = blank.copy()
    ImageDraw.Draw(shown).rectangle([x, y, x + s - 1, y + s - 1], fill=COLOURS[colour])
    paths = save_frames(out, name, blank=blank, shown=shown)
    frames = [paths["shown" if i <= f // 2 < j else "blank"] for f in range(2 * P)]
    span = [i * patch_s, j * patch_s]
    a = f"The given query happens in {span[0]:.1f} - {span[1]:.1f} seconds."
    q = f"Give the query: 'a {colour} square appears', when does the described content occur in the video?"
    video = {"type": "video", "video": frames, "fps": fps, "min_pixels": WHEN_SIDE ** 2, "max_pixels": WHEN_SIDE ** 2}
    return {"messages": [{"role": "user", "content": [video, {"type": "text", "text": q}]},
                         {"role": "assistant", "content": a}],
            "meta": {"task": "probe_span", "answer": a, "colour": colour, "span": span, "duration": P * patch_s,
                     "fps": fps, "other": other}}


def make_record(task: str, rng: random.Random, out: Path, name: str) -> dict:
    """Render one picture (a clip for `when` and `span`) under out/media/ and return its record (meta keeps the ground
    truth)."""
    if task == "when":
        return when_record(rng, out, name)
    if task in ("span", "span_named"):
        return span_record(rng, out, name, named=task == "span_named")
    colour = rng.choice(sorted(COLOURS))
    W, H = rng.choice(SIZES) if task == "point_sizes" else (SIZE, SIZE)
    if task == "cell":
        s = CELL
        x, y = CELL * rng.randrange(SIZE // CELL), CELL * rng.randrange(SIZE // CELL)
    else:
        s = rng.randint(16, 32)
        while True:  # `side` needs a clear answer: the centre stays 10 px away from both middle lines
            x, y = rng.randint(0, W - s), rng.randint(0, H - s)
            if task != "side" or (abs(x + s // 2 - SIZE // 2) > 10 and abs(y + s // 2 - SIZE // 2) > 10):
                break
    cx, cy = x + s // 2, y + s // 2
    img = Image.new("RGB", (W, H), BACKGROUND)
    ImageDraw.Draw(img).rectangle([x, y, x + s - 1, y + s - 1], fill=COLOURS[colour])
    rel = f"media/{name}.png"
    save_png(img, out / rel)
    if task == "colour":
        q, a = "What colour is the square?", f"It is {colour}."
    elif task in ("side", "cell") and rng.random() < 0.5:
        q, a = "Is the square on the left or on the right?", "It is " + ("left." if cx < SIZE // 2 else "right.")
    elif task in ("side", "cell"):
        q, a = "Is the square at the top or at the bottom?", "It is " + ("top." if cy < SIZE // 2 else "bottom.")
    else:
        q, a = "Where is the square?", f"[{cx}, {cy}]"
    image = {"type": "image", "image": rel, **LIMITS}
    return {"messages": [{"role": "user", "content": [{"type": "text", "text": q}, image]},
                         {"role": "assistant", "content": a}],
            "meta": {"task": f"probe_{task}", "answer": a, "colour": colour, "centre": [cx, cy], "size": s,
                     "picture": [W, H]}}


def build(out: Path, task: str, n: int, seed: int, split: str) -> Path:
    """Write `n` records of one probe to out/<task>-<split>.jsonl (pictures under out/media/)."""
    if task not in TASKS:
        raise ValueError(f"unknown probe task {task!r}; choose one of {', '.join(TASKS)}")
    (out / "media").mkdir(parents=True, exist_ok=True)
    rng = random.Random(SPLIT_OFFSET[split] + seed)
    rows = [make_record(task, rng, out, f"{task}-{split}-{seed}-{i:06d}") for i in range(n)]
    path = out / f"{task}-{split}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def answer_word(meta: dict) -> str:
    """The expected word of a `colour` / `side` / `cell` answer ("It is left." -> "left")."""
    return meta["answer"].removeprefix("It is ").rstrip(".")


def score(record: dict, text: str) -> float:
    """1/0 for `colour` and `side` (the expected word is in the answer); for `point`, the mean absolute error of
    the centre in pixels (SIZE when no "[x, y]" is found); for `when`, the error in seconds; for `span`, the
    temporal IoU of the first "a - b" span (0 when none is found)."""
    m = record["meta"]
    if m["task"] == "probe_span":
        from ..tasks.metrics import temporal_iou
        from ..tasks.parse import parse_time_spans
        from ..tasks.types import ParseError

        try:
            return temporal_iou(parse_time_spans(text)[0], m["span"])
        except ParseError:
            return 0.0
    if m["task"] == "probe_when":  # seconds off (the clip's length when no number is found)
        nums = re.findall(r"\d+", text)
        return float(abs(int(nums[0]) - m["second"])) if nums else float(m["seconds"])
    if m["task"] in POINT_TASKS:
        nums = [int(v) for v in re.findall(r"\d+", text)[:2]]
        if len(nums) < 2:
            return float(SIZE)
        return (abs(nums[0] - m["centre"][0]) + abs(nums[1] - m["centre"][1])) / 2
    word = answer_word(m)
    return float(re.search(rf"\b{word}\b", text) is not None)


def evaluate(vlm, data: Path, n: int = 60) -> dict:
    """Greedy answers for the first `n` records; accuracy (or mean pixel error for `point`)."""
    from .evaluate import generate_answers, load_records

    recs = load_records(data)[:n]
    long = recs[0]["meta"]["task"] == "probe_span"  # "The given query happens in 12.5 - 14.0 seconds."
    gens = generate_answers(vlm, recs, data.parent, max_new_tokens=32 if long else 12, batch_size=12)
    vals = [score(r, g.text) for r, g in zip(recs, gens)]
    task = recs[0]["meta"]["task"]
    out = {"task": task, "n": len(vals), "examples": [g.text for g in gens[:4]]}
    if task == "probe_when":
        out["accuracy"] = sum(v == 0 for v in vals) / len(vals)
        out["mean_abs_error_s"] = sum(vals) / len(vals)
        out["middle_guess_s"] = sum(abs(r["meta"]["second"] - (r["meta"]["seconds"] - 1) / 2) for r in recs) / len(recs)
    elif task == "probe_span":  # and the blind answer, the middle 60 % of every clip (the report's BLIND_SPAN)
        from ..tasks.metrics import temporal_iou
        from .report import blind_span

        out["mean_iou"] = sum(vals) / len(vals)
        out["exact"] = sum(v == 1.0 for v in vals) / len(vals)
        out["blind_mean_iou"] = sum(temporal_iou(blind_span(r["meta"]), r["meta"]["span"]) for r in recs) / len(recs)
    elif task in POINT_TASKS:
        out["mean_abs_error_px"] = sum(vals) / len(vals)
        out["centre_guess_px"] = centre_guess(recs)
    else:
        out["accuracy"] = sum(vals) / len(vals)
    if task in ("probe_side", "probe_cell"):
        out.update(axis_accuracy(recs, vals))
    return out


def centre_guess(recs: list[dict]) -> float:
    """The mean pixel error of always answering each picture's centre (what a model blind to position scores)."""
    err = 0.0
    for r in recs:
        W, H = r["meta"].get("picture", (SIZE, SIZE))
        cx, cy = r["meta"]["centre"]
        err += (abs(cx - W // 2) + abs(cy - H // 2)) / 2
    return err / len(recs)


def axis_accuracy(recs: list[dict], vals: list[float]) -> dict[str, float]:
    """`side` / `cell` accuracy per question (columns: left/right, rows: top/bottom); the two can differ a lot."""
    out = {}
    for axis, words in (("left_right", ("left", "right")), ("top_bottom", ("top", "bottom"))):
        v = [x for r, x in zip(recs, vals) if answer_word(r["meta"]) in words]
        if v:
            out[f"accuracy_{axis}"] = sum(v) / len(v)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m qwenvl.synth.probes", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write train and held-out records of one probe")
    b.add_argument("--out", required=True)
    b.add_argument("--task", required=True, choices=TASKS)
    b.add_argument("--n", type=int, default=4000, help="training records (held-out: 60)")
    b.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("score", help="greedy answers of a checkpoint on a probe's held-out file")
    s.add_argument("-m", "--model", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--n", type=int, default=60)
    a = ap.parse_args(argv)
    if a.cmd == "build":
        for split, n in (("train", a.n), ("heldout", 60)):
            print(build(Path(a.out), a.task, n, a.seed, split))
        return 0
    import qwenvl

    data = Path(a.data)
    if not data.is_file():
        print(f"error: held-out file {data} does not exist; make it with `python -m qwenvl.synth.probes build`",
              file=sys.stderr)
        return 2
    print(json.dumps(evaluate(qwenvl.load(a.model), data, a.n), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
