"""The report's claims in miniature (issue 7, item 6): score several trained arms on several held-out files and
write one markdown table (rows: the files, e.g. sampling rates or picture sizes; columns: metric × arm); and make
an arm's starting checkpoint: a copy of one that differs only in the setting under test.

    python -m qwenvl.synth.claims variant runs/embedded/a/export runs/claims/time/init-frame --time-positions frame_index
    python -m qwenvl.synth.claims variant runs/embedded/a/export runs/claims/window/init-full --full-attention
    python -m qwenvl.synth.claims table --title "Absolute time vs frame index" --row-name "sampling fps" \
        --arm absolute=runs/claims/time/absolute/export --arm frame-index=runs/claims/time/frame/export \
        --data 0.5=runs/claims/time/heldout-fps0.5.jsonl --data 1=runs/claims/time/heldout-fps1.jsonl \
        --seen 1 --metric temporal_miou --metric temporal_r50 --out docs/embedded-runs/claim-time.md

The metrics are `qwenvl.synth.report`'s (same parsing, same definitions); every record of each file is scored
with greedy decoding. The table names the command that made it, so rerunning it reproduces the numbers.
"""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import shutil
import sys
from pathlib import Path

from .evaluate import generate_answers, load_records, select
from .report import METRICS, aggregate, observe

log = logging.getLogger("qwenvl.synth.claims")
TITLES = {key: title for key, title, *_ in METRICS}


def _pair(text: str, what: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise SystemExit(f"error: --{what} {text!r} must be NAME=PATH (e.g. --{what} absolute=runs/x/export)")
    return name, value


PRIOR = "blind prior"


def fit_prior(records: list[dict]) -> dict:
    """A blind baseline fitted on training records (it never sees the picture or the frames): for video grounding
    the span [a·duration, b·duration] (a, b on a 0.05 grid) with the best mean temporal IoU; for refer / point the
    mean target box relative to the picture (its centre for point)."""
    from ..tasks.metrics import temporal_iou

    out: dict = {}
    vids = [r["meta"] for r in records if r["meta"]["task"] == "video_grounding"]
    if vids:
        grid = [i / 20 for i in range(21)]
        out["span"] = max(((a, b) for a in grid for b in grid if b > a), key=lambda ab: sum(
            temporal_iou((ab[0] * m["duration"], ab[1] * m["duration"]), tuple(m["span"])) for m in vids))
    boxes = []
    for r in records:
        m = r["meta"]
        if m["task"] in ("refer", "point"):
            (h, w), b = m["original"], m["objects"][m["target"]]["box"]
            boxes.append((b[0] / w, b[1] / h, b[2] / w, b[3] / h))
    if boxes:
        out["box"] = tuple(sum(b[i] for b in boxes) / len(boxes) for i in range(4))
    return out


def prior_answer(record: dict, prior: dict) -> str:
    """The blind baseline's answer to `record`, in the task's answer format and the model's frame."""
    from ..tasks.coords import FrameMap
    from .video import answer_text

    m = record["meta"]
    if m["task"] == "video_grounding" and "span" in prior:
        return answer_text(prior["span"][0] * m["duration"], prior["span"][1] * m["duration"])
    if m["task"] in ("refer", "point") and "box" in prior:
        (h, w), f = m["original"], FrameMap(tuple(m["original"]), tuple(m["resized"]))
        x1, y1, x2, y2 = f.box_to_model((prior["box"][0] * w, prior["box"][1] * h, prior["box"][2] * w,
                                         prior["box"][3] * h))
        if m["task"] == "refer":
            return json.dumps([{"bbox_2d": [round(x1), round(y1), round(x2), round(y2)], "label": "shape"}])
        return json.dumps([{"point_2d": [round((x1 + x2) / 2), round((y1 + y2) / 2)], "label": "shape"}])
    return ""


def score_grid(arms: list[tuple[str, str]], data: list[tuple[str, str]], per_task: int | None = None,
               max_new_tokens: int = 64, batch_size: int = 4, prior: dict | None = None) -> dict:
    """{arm: {row: {metric: value, "n": records}}} for every arm on every held-out file (and the blind prior's
    answers under PRIOR when `prior` is given)."""
    import qwenvl

    def row(agg: dict, n: int) -> dict:
        return {k: v for k, (v, _) in agg.items()} | {"n": n}

    files = [(name, Path(file).parent, select(load_records(file), per_task)) for name, file in data]
    out: dict = {}
    if prior is not None:
        out[PRIOR] = {name: row(aggregate([observe(r, prior_answer(r, prior)) for r in recs]), len(recs))
                      for name, _, recs in files}
    for arm, path in arms:
        vlm = qwenvl.load(path)
        out[arm] = {}
        for name, base, recs in files:
            gens = generate_answers(vlm, recs, base, max_new_tokens, batch_size)
            out[arm][name] = row(aggregate([observe(r, g.text) for r, g in zip(recs, gens)]), len(recs))
            log.info("%s on %s: %s", arm, name, out[arm][name])
        del vlm
    return out


def make_variant(src: str | Path, dst: str | Path, time_positions: str | None = None,
                 full_attention: bool = False) -> Path:
    """Copy checkpoint `src` to `dst` changing only config.json: `time_positions` ("absolute" | "frame_index") and/or
    full attention in every vision block (the Qwen2-VL tower) instead of windows."""
    from ..config import QwenVLConfig

    src, dst = Path(src), Path(dst)
    cfg = QwenVLConfig.from_file(src)
    if dst.exists():
        raise FileExistsError(f"{dst} exists; remove it or choose another directory")
    if time_positions is not None:
        cfg = cfg.replace(time_positions=time_positions)
    if full_attention:
        from dataclasses import replace

        cfg = cfg.replace(vision=replace(cfg.vision, fullatt_block_indexes=tuple(range(cfg.vision.depth))))
    cfg.validate()
    shutil.copytree(src, dst)
    (dst / "config.json").write_text(json.dumps(cfg.to_hf(), indent=2) + "\n")  # unknown keys ride in cfg.extra
    return dst


def table(grid: dict, rows: list[str], metrics: list[str], row_name: str, seen: set[str]) -> list[str]:
    arms = [a for a in grid if a != PRIOR] + [a for a in grid if a == PRIOR]  # the prior last
    head = [row_name, "n"] + [f"{TITLES.get(m, m)}: {a}" for m in metrics for a in arms]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        label = f"{r} (seen in training)" if r in seen else f"{r} (unseen)" if seen else r
        cells = [label, str(grid[arms[0]][r]["n"])]
        cells += [f"{grid[a][r].get(m, float('nan')):.3f}" for m in metrics for a in arms]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _variant(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m qwenvl.synth.claims variant", description=make_variant.__doc__)
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--time-positions", choices=("absolute", "frame_index"), default=None)
    ap.add_argument("--full-attention", action="store_true")
    a = ap.parse_args(argv)
    if a.time_positions is None and not a.full_attention:
        raise SystemExit("error: give --time-positions and/or --full-attention (otherwise the copy is the same model)")
    if not (Path(a.src) / "config.json").is_file():
        raise SystemExit(f"error: {a.src}: no config.json there; point it at a checkpoint directory")
    try:
        print(make_variant(a.src, a.dst, a.time_positions, a.full_attention))
    except FileExistsError as e:
        raise SystemExit(f"error: {e}") from None
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["variant"]:
        return _variant(argv[1:])
    if argv[:1] != ["table"]:
        raise SystemExit("usage: python -m qwenvl.synth.claims {table,variant} ... (--help after either)")
    argv = argv[1:]
    ap = argparse.ArgumentParser(prog="python -m qwenvl.synth.claims table", description=__doc__.split("\n\n")[0])
    ap.add_argument("--arm", action="append", required=True, help="NAME=checkpoint directory (repeatable)")
    ap.add_argument("--data", action="append", required=True, help="ROW=held-out JSONL (repeatable, in row order)")
    ap.add_argument("--metric", action="append", required=True, choices=sorted(TITLES),
                    help="a qwenvl.synth.report metric key (repeatable)")
    ap.add_argument("--title", default="Claim")
    ap.add_argument("--row-name", default="held-out file")
    ap.add_argument("--seen", nargs="*", default=[], help="rows whose setting was seen in training")
    ap.add_argument("--per-task", type=int, default=None, help="first N records of each task per file (default all)")
    ap.add_argument("--prior", default=None, help="training JSONL: add a blind-prior column fitted on its first "
                    "5,000 records (fit_prior)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--out", required=True, help="markdown file to write")
    ap.add_argument("--json", default=None, help="also write the scores as JSON here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    arms = [_pair(a, "arm") for a in args.arm]
    data = [_pair(d, "data") for d in args.data]
    for _, p in arms:
        if not (Path(p) / "config.json").is_file():
            raise SystemExit(f"error: --arm {p}: no config.json there; point it at a trained export directory")
    for _, p in data:
        if not Path(p).is_file():
            raise SystemExit(f"error: --data {p}: no such file; build it with python -m qwenvl.synth.build")
    prior = None
    if args.prior:
        if not Path(args.prior).is_file():
            raise SystemExit(f"error: --prior {args.prior}: no such file; give the arms' training JSONL")
        prior = fit_prior(select(load_records(args.prior)[:5000], None))
        log.info("blind prior: %s", prior)
    grid = score_grid(arms, data, args.per_task, args.max_new_tokens, prior=prior)
    rows = [r for r, _ in data]
    text = [f"#### {args.title}", "", f"Command: `python -m qwenvl.synth.claims table {shlex.join(argv)}`", "",
            *table(grid, rows, args.metric, args.row_name, set(args.seen)), ""]
    if prior is not None:
        text[-1:-1] = ["", f"{PRIOR}: answers fitted on `{args.prior}` without looking at any picture or frame "
                       f"({json.dumps({k: [round(v, 3) for v in x] for k, x in prior.items()})}: span as fractions "
                       "of the clip, box as fractions of the picture)."]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(text), encoding="utf-8")
    if args.json:
        Path(args.json).write_text(json.dumps(grid, indent=2) + "\n")
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
