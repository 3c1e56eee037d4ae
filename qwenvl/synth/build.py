"""Write synthetic splits: `build_dataset(out_dir, n_per_task=..., split=..., seed=..., curriculum=...)` ->
`out_dir/<split>.jsonl` + `out_dir/media/<split>/<task>/...`, and `corpus_text(records)` for tokenizer training.

    python -m qwenvl.synth.build --out data/synth --n 1000 --split train [--tasks detect,refer] [--curriculum 1]

Records are written round-robin over the tasks (task k's record i after every task's record i-1), so a prefix of
the file is a balanced mix. Record i of a task always has the same content for a (split, seed) whatever the other
tasks or counts, and train / held-out records come from disjoint seed ranges.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Iterable, Mapping

from . import documents, gui, shapes, text, video
from . import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, SPLITS, Ctx, generate

# the capabilities' tasks: what a build without --tasks writes (and the report scores)
DEFAULT_TASKS = (*shapes.TASKS, *text.TASKS, *documents.TASKS, *video.TASKS, *gui.TASKS)
# every task a build can write: the default ones and the GUI naming rungs (asked for by name or `gui_rungs`)
TASKS = {**shapes.TASKS, **text.TASKS, **documents.TASKS, **video.TASKS, **gui.TASKS, **gui.RUNGS}
GROUPS = {"grounding": tuple(shapes.TASKS), "text": tuple(text.TASKS), "documents": tuple(documents.TASKS),
          "video": tuple(video.TASKS), "gui": tuple(gui.TASKS), "gui_rungs": gui.RUNG_GROUP}


def _work(args) -> tuple[str, int, str]:
    task, ctx_kw, seed, i = args
    ctx = Ctx(**ctx_kw)
    return task, i, json.dumps(generate(task, ctx, seed, i), ensure_ascii=False)


def build_dataset(out_dir: str | os.PathLike, *, n_per_task: Mapping[str, int] | int, split: str = "train",
                  seed: int = 0, curriculum: int = 0, min_pixels: int = DEFAULT_MIN_PIXELS,
                  max_pixels: int = DEFAULT_MAX_PIXELS, video_format: str = "mp4", workers: int = 1,
                  extra: Mapping | None = None, file_name: str | None = None, progress: bool = False) -> list[dict]:
    """Generate `n_per_task` records per task (an int for every task, or {task: n}) and write them to
    `out_dir/<file_name or split>.jsonl`, media under `out_dir/media/<file_name or split>/` (paths in the records
    relative to out_dir). Returns the records (in file order).
    `workers` > 1 renders in that many processes (same output). `extra` goes to Ctx.extra (e.g. video
    "fps_range" / "fps_choices")."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if video_format not in ("mp4", "frames"):
        raise ValueError("video_format must be 'mp4' or 'frames'")
    counts = {t: int(n_per_task) for t in DEFAULT_TASKS} if isinstance(n_per_task, int) else dict(n_per_task)
    unknown = set(counts) - set(TASKS)
    if unknown:
        raise ValueError(f"unknown task(s) {sorted(unknown)}; tasks: {', '.join(TASKS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ctx_kw = dict(out_dir=out, split=split, curriculum=int(curriculum), min_pixels=int(min_pixels),
                  max_pixels=int(max_pixels), video_format=video_format, extra=dict(extra or {}),
                  # a named file keeps its media apart: two builds into one folder (same seed, other settings)
                  # must not overwrite each other's pictures
                  media_dir=file_name if file_name and file_name != split else None)
    order = [(t, i) for i in range(max(counts.values(), default=0)) for t in TASKS if i < counts.get(t, 0)]
    jobs = [(t, ctx_kw, seed, i) for t, i in order]
    lines: dict[tuple[str, int], str] = {}
    t0, done = time.perf_counter(), 0
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            for t, i, line in pool.imap_unordered(_work, jobs, chunksize=8):
                lines[(t, i)] = line
                done += 1
                _progress(progress, done, len(jobs), t0)
    else:
        for job in jobs:
            t, i, line = _work(job)
            lines[(t, i)] = line
            done += 1
            _progress(progress, done, len(jobs), t0)
    path = out / f"{file_name or split}.jsonl"
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for key in order:
            fh.write(lines[key] + "\n")
    os.replace(tmp, path)
    return [json.loads(lines[key]) for key in order]


def _progress(on: bool, done: int, total: int, t0: float) -> None:
    if on and (done == total or done % 100 == 0):
        dt = time.perf_counter() - t0
        print(f"  {done}/{total} records, {dt:.1f} s", file=sys.stderr, flush=True)


def _texts(content) -> Iterable[str]:
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for p in content:
            if isinstance(p, dict) and isinstance(p.get("text"), str):
                yield p["text"]


def corpus_text(records: Iterable[dict], *, unique: bool = False) -> str:
    """The text of every prompt (system and user) and answer, one message per paragraph (blank-line separated);
    `unique` keeps only the first occurrence of each text (e.g. the repeated system prompts)."""
    seen, out = set(), []
    for rec in records:
        for msg in rec.get("messages", []):
            for t in _texts(msg.get("content")):
                if unique:
                    if t in seen:
                        continue
                    seen.add(t)
                out.append(t)
    return "\n\n".join(out) + ("\n" if out else "")


def _task_list(spec: str | None) -> list[str]:
    if not spec:
        return list(DEFAULT_TASKS)
    names = []
    for s in spec.split(","):
        s = s.strip()
        names += list(GROUPS.get(s, (s,)))
    return names


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m qwenvl.synth.build", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output directory (the JSONL and media/ go here)")
    ap.add_argument("--n", type=int, default=1000, help="records per task (default 1000)")
    ap.add_argument("--split", choices=SPLITS, default="train")
    ap.add_argument("--tasks", default=None,
                    help=f"comma-separated tasks or groups (default: all but the gui_rungs). Tasks: {', '.join(TASKS)}; "
                         f"groups: {', '.join(GROUPS)}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--curriculum", type=int, default=0, help="0: one object, small images; up to 3")
    ap.add_argument("--min-pixels", type=int, default=DEFAULT_MIN_PIXELS)
    ap.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS)
    ap.add_argument("--video-format", choices=("mp4", "frames"), default="mp4")
    ap.add_argument("--fps-range", type=float, nargs=2, metavar=("LO", "HI"), default=None,
                    help="video sampling fps range (default 0.5 4)")
    ap.add_argument("--fps-choices", type=float, nargs="+", default=None, help="video sampling fps values")
    ap.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                    help="grounding scenes: render every picture at this one size (a curriculum's first stage)")
    ap.add_argument("--max-side", type=int, default=None,
                    help="grounding scenes: largest picture side (default: the curriculum's, 224 at level 0)")
    ap.add_argument("--gui-prompt", choices=("tool", "short"), default="tool",
                    help="computer_use records: the official tool prompt (default), or a short system text with the "
                         "same answer format (training data at 1/6 of the tokens)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--name", default=None, help="JSONL file name without .jsonl (default: the split)")
    ap.add_argument("--corpus", default=None, help="also write corpus_text(records) to this file")
    a = ap.parse_args(argv)
    tasks = _task_list(a.tasks)
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        ap.error(f"unknown task(s) {bad}; tasks: {', '.join(TASKS)}; groups: {', '.join(GROUPS)}")
    extra = {}
    if a.fps_range:
        extra["fps_range"] = tuple(a.fps_range)
    if a.fps_choices:
        extra["fps_choices"] = list(a.fps_choices)
    if a.image_size:
        if min(a.image_size) < 28:
            ap.error(f"--image-size {a.image_size[0]} {a.image_size[1]}: both sides must be at least 28 px")
        extra["image_size"] = tuple(a.image_size)
    if a.max_side is not None:
        if a.max_side < 112:
            ap.error(f"--max-side {a.max_side}: must be at least 112 px (the smallest scene side)")
        extra["max_side"] = a.max_side
    if a.gui_prompt != "tool":
        extra["gui_prompt"] = a.gui_prompt
    t0 = time.perf_counter()
    recs = build_dataset(a.out, n_per_task={t: a.n for t in tasks}, split=a.split, seed=a.seed,
                         curriculum=a.curriculum, min_pixels=a.min_pixels, max_pixels=a.max_pixels,
                         video_format=a.video_format, workers=a.workers, extra=extra, file_name=a.name, progress=True)
    dt = time.perf_counter() - t0
    if a.corpus:
        Path(a.corpus).write_text(corpus_text(recs), encoding="utf-8")
    print(f"wrote {len(recs)} records ({len(tasks)} tasks x {a.n}) to {Path(a.out) / ((a.name or a.split) + '.jsonl')}"
          f" in {dt:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
