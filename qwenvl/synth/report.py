"""The embedded model's evaluation report (issue 7, item 5): held-out metrics, targets, examples and the training
curve, written as one markdown file by one command.

    python -m qwenvl.synth.report -m runs/emb-run1 --heldout runs/embedded/data/heldout.jsonl \\
        --metrics runs/embedded/train/metrics.jsonl --out docs/embedded-model.md [--per-task N] [--notes FILE]

Greedy decoding over a fixed record order (the first N records of each task per file, grouped by task) and
batch size, so rerunning the command reproduces the numbers (on the same machine and software).
Ground truth comes from each record's `meta` (original pixels); answers are parsed with `qwenvl.tasks`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import re
import shlex
import struct
import sys
from collections import defaultdict
from pathlib import Path

from ..tasks.coords import FrameMap
from ..tasks.metrics import box_iou, charades_scores, click_accuracy, coco_map, counting_accuracy, \
    normalized_edit_distance, temporal_iou
from ..tasks.types import ParseError
from .curve import curve_section, plot_curve
from .curve import mean as _mean
from .evaluate import (_f1, _inside, click_outcome, generate_answers, label_words, load_records, select,
                       target_kind)

log = logging.getLogger("qwenvl.synth.report")

# key, title, task, target (None: reported only), higher is better
METRICS = [
    ("grounding_acc", "Grounding Acc@0.5", "refer", 0.8, True),
    ("grounding_miou", "Grounding mean IoU", "refer", None, True),
    ("detect_map", "Detection mAP@[.5:.95]", "detect", None, True),
    ("detect_ap50", "Detection AP50", "detect", None, True),
    ("detect_f1", "Detection F1@0.5", "detect", None, True),
    ("label_colour", "Boxes named with the right colour (chance 0.1)", "detect, count", None, True),
    ("label_shape", "Boxes named with the right shape (chance 0.125)", "detect, count", None, True),
    ("point_acc", "Point accuracy", "point", None, True),
    ("count_acc", "Counting accuracy", "count", 0.8, True),
    ("ocr_exact", "OCR exact match", "read_text", 0.8, True),
    ("ocr_1ned", "OCR 1 − NED", "read_text", None, True),
    ("spot_f1", "Text spotting F1@0.5 (text must match)", "spot_text", None, True),
    ("kv_acc", "Key-value field accuracy", "key_values", None, True),
    ("doc_ned", "Document edit distance (lower is better)", "document", None, False),
    ("temporal_miou", "Temporal mIoU", "video_grounding", 0.5, True),
    ("temporal_r50", "Temporal R@0.5", "video_grounding", None, True),
    ("click_acc", "Click accuracy", "computer_use", 0.8, True),
    ("click_kind", "Clicks on an element of the named kind", "computer_use", None, True),
]
CLICK_OUTCOMES = ("target", "same kind", "other kind", "no element", "no answer")
# A blind video answer: the middle 60 % of every clip (the time claim's prior, fitted on its training clips by
# qwenvl.synth.claims.fit_prior). Above its mIoU, the event's time is read from the frames.
BLIND_SPAN = (0.2, 0.8)
TASK_ORDER = ["detect", "refer", "point", "count", "read_text", "spot_text", "key_values", "document",
              "video_grounding", "computer_use"]


def _norm(s: str) -> str:
    return " ".join(s.split())


def _match_count(pred: list, gt: list, same) -> int:
    """Greedy one-to-one matches at IoU >= 0.5 where `same(p, g)` holds; pred/gt are (key, box) pairs."""
    used, hits = set(), 0
    for pk, pb in pred:
        best, bj = 0.5, None
        for j, (gk, gb) in enumerate(gt):
            if j not in used and same(pk, gk) and pb is not None and (iou := box_iou(pb, gb)) >= best:
                best, bj = iou, j
        if bj is not None:
            used.add(bj)
            hits += 1
    return hits


def observe(record: dict, text: str) -> dict:
    """The raw per-record quantities behind the report's metrics (see `aggregate`), plus `error` (parse
    failure reason or None) and `score` (the record's own figure, shown with the examples)."""
    from ..tasks.document import parse_document
    from ..tasks.parse import (parse_count, parse_grounding, parse_key_values, parse_ocr_lines, parse_text_spotting,
                               parse_time_spans, parse_tool_calls)

    m = record["meta"]
    task = m["task"]
    f = FrameMap(tuple(m["original"]), tuple(m["resized"]))
    o = _failed(m)
    try:
        if task in ("detect", "count"):
            o["named"] = label_words(record, text)
        if task in ("detect", "refer", "point"):
            dets = f.detections_to_original(parse_grounding(text))
            target = m["objects"][m["target"]]["box"] if task != "detect" else None
            if task == "detect":
                o["pred"] = [(d.label, list(d.bbox)) for d in dets if d.bbox is not None]
                o["score"] = _f1([d for d in dets if d.bbox], m["objects"])
            elif task == "refer":
                o["score"] = o["iou"] = box_iou(dets[0].bbox, target) if dets else 0.0
            else:
                o["score"] = float(bool(dets) and dets[0].point is not None and _inside(dets[0].point, target))
        elif task == "count":
            o["pred"] = parse_count(text)
            o["score"] = float(o["pred"] == m["count"])
        elif task == "read_text":
            got, want = "\n".join(parse_ocr_lines(text)), "\n".join(x["text"] for x in m["lines"])
            o["exact"] = float(_norm(got) == _norm(want))
            o["ned"] = normalized_edit_distance(got, want)
            o["score"] = o["exact"]
        elif task == "spot_text":
            items = f.text_items_to_original(parse_text_spotting(text))
            o["n_pred"] = len(items)
            o["hits"] = _match_count([(_norm(t.text), t.bbox) for t in items],
                                     [(_norm(x["text"]), x["box"]) for x in m["lines"]], lambda a, b: a == b)
            o["score"] = _f1_counts(o["hits"], o["n_pred"], o["n_gt"])
        elif task == "key_values":
            vals = parse_key_values(text, m["keys"])
            o["right"] = sum(vals.get(k) is not None and _norm(str(vals[k])) == _norm(str(v))
                             for k, v in m["values"].items())
            o["score"] = o["right"] / max(1, o["total"])
        elif task == "document":
            got = "\n".join(b.text for b in parse_document(text))
            o["ned"] = normalized_edit_distance(got, "\n".join(b["text"] for b in m["blocks"]))
            o["score"] = 1 - o["ned"]
        elif task == "video_grounding":
            spans = parse_time_spans(text)
            o["pred"] = [float(spans[0][0]), float(spans[0][1])] if spans else None
            o["score"] = temporal_iou(o["pred"], o["gt"])
        elif task == "computer_use":
            calls = parse_tool_calls(text)
            xy = calls[0].arguments.get("coordinate") if calls else None
            if not (isinstance(xy, list) and len(xy) == 2):
                raise ParseError("no click coordinate", text)
            o["pred"] = list(f.point_to_original(xy))
            o["score"] = _inside(o["pred"], m["box"])
            o["outcome"] = click_outcome(m, o["pred"])
        else:
            raise ValueError(f"unknown synthetic task {task!r} in {m.get('id')}")
    except ParseError as e:
        o = {**_failed(m), "error": e.reason}
    return o


def _failed(m: dict) -> dict:
    """The observation of an unparsable answer: every metric scores it as wrong."""
    task = m["task"]
    o = {"task": task, "id": m.get("id"), "error": None, "score": 0.0}
    if task in ("detect", "count"):
        o["named"] = (0, 0, len(m["objects"]))  # (colour words right, shape words right, objects)
    if task == "detect":
        o.update(pred=[], gt=[(x["label"], x["box"]) for x in m["objects"]])
    elif task == "refer":
        o["iou"] = 0.0
    elif task == "count":
        o.update(pred=None, gt=m["count"])
    elif task == "read_text":
        o.update(exact=0.0, ned=1.0)
    elif task == "spot_text":
        o.update(hits=0, n_pred=0, n_gt=len(m["lines"]))
    elif task == "key_values":
        o.update(right=0, total=len(m["values"]))
    elif task == "document":
        o["ned"] = 1.0
    elif task == "video_grounding":
        o.update(pred=None, gt=list(m["span"]), duration=float(m["duration"]),
                 blind=temporal_iou(blind_span(m), list(m["span"])))
    elif task == "computer_use":
        kind = target_kind(m)
        o.update(pred=None, box=list(m["box"]), outcome="no answer",
                 kind_chance=1 / max(1, sum(e["type"] == kind for e in m.get("elements") or [])))
    return o


def blind_span(meta: dict) -> list[float]:
    """The blind answer for a video record: BLIND_SPAN's fractions of its clip, in seconds."""
    return [BLIND_SPAN[0] * meta["duration"], BLIND_SPAN[1] * meta["duration"]]


def partial_r(x: list[float], y: list[float], z: list[float]) -> float | None:
    """Pearson r of x and y once z is regressed out of each (least squares with an intercept): how far the
    predicted times `x` follow the true ones `y` beyond what the clip's length `z` explains. None when either
    residual has no spread (e.g. answers that are a function of the clip's length alone) or n < 3."""
    n = len(x)
    if n < 3 or len(y) != n or len(z) != n:
        return None

    def resid(v):
        mz, mv = sum(z) / n, sum(v) / n
        szz = sum((a - mz) ** 2 for a in z)
        b = sum((a - mz) * (c - mv) for a, c in zip(z, v)) / szz if szz > 0 else 0.0
        return [c - mv - b * (a - mz) for a, c in zip(z, v)]

    rx, ry = resid(x), resid(y)
    sx, sy = math.sqrt(sum(a * a for a in rx)), math.sqrt(sum(a * a for a in ry))
    scale = max(1.0, max(abs(a) for a in x + y))
    if sx <= 1e-9 * scale * math.sqrt(n) or sy <= 1e-9 * scale * math.sqrt(n):
        return None
    return sum(a * b for a, b in zip(rx, ry)) / (sx * sy)


def span_following(videos: list[dict]) -> tuple[float | None, float | None, int]:
    """(partial r of the predicted start, of the predicted end, answers used): each side against the truth with
    the clip's duration regressed out (`partial_r`), over the video observations that parsed."""
    got = [o for o in videos if o["pred"] is not None]
    dur = [o["duration"] for o in got]
    return (partial_r([o["pred"][0] for o in got], [o["gt"][0] for o in got], dur),
            partial_r([o["pred"][1] for o in got], [o["gt"][1] for o in got], dur), len(got))


def _f1_counts(hits: int, n_pred: int, n_gt: int) -> float:
    if n_pred == 0 and n_gt == 0:
        return 1.0
    return 0.0 if hits == 0 else 2 * hits / (n_pred + n_gt)


def aggregate(obs: list[dict]) -> dict:
    """{metric key: (value, n records)} for the tasks present in `obs` (see METRICS)."""
    by = defaultdict(list)
    for o in obs:
        by[o["task"]].append(o)
    out = {}
    if r := by["refer"]:
        out["grounding_acc"] = (_mean(o["iou"] >= 0.5 for o in r), len(r))
        out["grounding_miou"] = (_mean(o["iou"] for o in r), len(r))
    if d := by["detect"]:
        cm = coco_map([o["pred"] for o in d], [o["gt"] for o in d])
        out["detect_map"], out["detect_ap50"] = (cm["map"], len(d)), (cm["ap50"], len(d))
        out["detect_f1"] = (_mean(o["score"] for o in d), len(d))
    if named := [o["named"] for o in by["detect"] + by["count"]]:
        total = max(1, sum(x[2] for x in named))
        out["label_colour"] = (sum(x[0] for x in named) / total, len(named))
        out["label_shape"] = (sum(x[1] for x in named) / total, len(named))
    if p := by["point"]:
        out["point_acc"] = (_mean(o["score"] for o in p), len(p))
    if c := by["count"]:
        out["count_acc"] = (counting_accuracy([o["pred"] for o in c], [o["gt"] for o in c]), len(c))
    if t := by["read_text"]:
        out["ocr_exact"] = (_mean(o["exact"] for o in t), len(t))
        out["ocr_1ned"] = (1 - _mean(o["ned"] for o in t), len(t))
    if s := by["spot_text"]:
        out["spot_f1"] = (_f1_counts(*(sum(o[k] for o in s) for k in ("hits", "n_pred", "n_gt"))), len(s))
    if k := by["key_values"]:
        out["kv_acc"] = (sum(o["right"] for o in k) / max(1, sum(o["total"] for o in k)), len(k))
    if doc := by["document"]:
        out["doc_ned"] = (_mean(o["ned"] for o in doc), len(doc))
    if v := by["video_grounding"]:
        ch = charades_scores([o["pred"] for o in v], [o["gt"] for o in v])
        out["temporal_miou"], out["temporal_r50"] = (ch["miou"], len(v)), (ch["r@0.5"], len(v))
    if g := by["computer_use"]:
        out["click_acc"] = (click_accuracy([o["pred"] for o in g], [o["box"] for o in g]), len(g))
        out["click_kind"] = (_mean(o["outcome"] in ("target", "same kind") for o in g), len(g))
    return out


def _verdict(value: float, target: float | None, higher: bool) -> str:
    if target is None:
        return ""
    if (value >= target) if higher else (value <= target):
        return "yes"
    return f"no — missed by {abs(target - value):.3f}"


def metrics_table(agg: dict, with_targets: bool = True) -> list[str]:
    head = "| metric | task | n | value | target | met? |" if with_targets else "| metric | task | n | value |"
    rows = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for key, title, task, target, higher in METRICS:
        if key not in agg:
            continue
        v, n = agg[key]
        cells = [title, f"`{task}`", str(n), f"{v:.3f}"]
        if with_targets:
            cells += ["" if target is None else f"{'≥' if higher else '≤'} {target:g}", _verdict(v, target, higher)]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


# ------------------------------------------------------------------------------------------- the report


def model_info(path: Path) -> str:
    """Parameter count, dtype and size of the checkpoint's safetensors (read from their headers)."""
    n, size, dtypes, h = 0, 0, set(), hashlib.sha256()
    for f in sorted(path.glob("*.safetensors")):
        raw = f.read_bytes()
        size += len(raw)
        h.update(raw)
        k = struct.unpack("<Q", raw[:8])[0]
        for name, t in json.loads(raw[8:8 + k]).items():
            if name != "__metadata__":
                n += math.prod(t["shape"])
                dtypes.add(t["dtype"])
    return (f"{n / 1e6:.2f} M parameters ({n:,}), {'/'.join(sorted(dtypes))}, weights {size / 1e6:.1f} MB, "
            f"sha256 {h.hexdigest()[:16]}")


def _short(s: str, n: int = 160) -> str:
    s = _norm(re.sub(r"```\w*", " ", s)).replace("`", "'").replace("|", "\\|")
    return s if len(s) <= n else s[:n - 1] + "…"


def machine() -> str:
    """Where the answers were computed: greedy bf16 answers can differ by an answer or two between CPU kinds
    (native AVX512-BF16 / AMX kernels against AVX2 emulation), so the report names the kind."""
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", CUDA {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (f"{cpu} ({torch.backends.cpu.get_cpu_capability()}), {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}{gpu}")


def build_report(command: str, model_dir: str, info: str, files: list[tuple[str, list, list]], curve: list[str],
                 notes: str | None, examples: int = 2, plot: str | None = None,
                 claims: list[str] | None = None, computed_on: str | None = None, gaps: str | None = None) -> str:
    """Markdown from per-file (name, records, observations with answers)."""
    all_obs = [o for _, _, obs in files for o in obs]
    agg = aggregate(all_obs)
    L = ["# Embedded model: held-out evaluation", "",
         "Produced by (rerun it on the same kind of CPU to reproduce every number; greedy decoding, fixed record "
         "order):", "", "```bash", command, "```", "", f"- Model: `{model_dir}` — {info}"]
    if computed_on:
        L.append(f"- Computed on: {computed_on}")
    for name, recs, _ in files:
        L.append(f"- Held-out: `{name}` — {len(recs)} records, sha256 {_file_sha(name)}")
    L += ["", "## Metrics (all held-out files)", ""] + metrics_table(agg) + [""]
    missed = [f"{t} by {abs(tg - agg[k][0]):.3f} ({agg[k][0]:.3f} vs {tg:g})" for k, t, _, tg, hb in METRICS
              if k in agg and tg is not None and _verdict(agg[k][0], tg, hb) != "yes"]
    see = " What would close each gap: below." if gaps else " What would close each gap: see Notes." if notes else ""
    L += ([f"Targets missed: {'; '.join(missed)}.{see}" if missed else "All targets met.", ""])
    if clicks := [o for o in all_obs if o["task"] == "computer_use"]:
        where = ", ".join(f"{sum(o['outcome'] == k for o in clicks)} {k}" for k in CLICK_OUTCOMES)
        L += [f"Where the {len(clicks)} clicks land: {where}. A click that finds the named kind of element and "
              f"then picks one of that kind at random would be right {_mean(o['kind_chance'] for o in clicks):.3f} "
              "of the time: above that, the labels are read.", ""]
    if videos := [o for o in all_obs if o["task"] == "video_grounding"]:
        L += [f"A blind answer to the {len(videos)} videos, the middle {100 * (BLIND_SPAN[1] - BLIND_SPAN[0]):.0f} % "
              f"of every clip, would score temporal mIoU {_mean(o['blind'] for o in videos):.3f}: above that, the "
              "event's time is read from the frames.", ""]
        rs, re_, n = span_following(videos)
        fmt = lambda r: "undefined" if r is None else f"{r:.2f}"  # noqa: E731
        L += [f"Do the spans follow the event? With each clip's length regressed out of both sides, the predicted "
              f"start and end correlate with the true ones at r = {fmt(rs)} / {fmt(re_)} ({n} answers; by chance "
              f"about ±{1 / math.sqrt(max(1, n)):.2f}). Near 0, the spans are sized to the clip, not placed on the "
              "event.", ""]
    L += ["Parse errors and truncations per task:", "", "| task | n | parse errors | hit max_new_tokens |",
          "|---|---|---|---|"]
    for t in TASK_ORDER:
        obs = [o for o in all_obs if o["task"] == t]
        if obs:
            L.append(f"| `{t}` | {len(obs)} | {sum(o['error'] is not None for o in obs)} | "
                     f"{sum(o.get('finish') == 'length' for o in obs)} |")
    if gaps and missed:
        L += ["", "### What would close each gap", "", gaps.rstrip()]
    if len(files) > 1:
        for name, _, obs in files:
            L += ["", f"### `{name}`", ""] + metrics_table(aggregate(obs), with_targets=False)
    L += [""] + curve
    if plot:
        L += [f"![training loss]({plot})", ""]
    if claims:
        L += ["## The report's claims in miniature", ""]
        for part in claims:
            L += [part.rstrip(), ""]
    if notes:
        L += ["## Notes", "", notes.rstrip(), ""]
    L += ["## Example answers", "", "First records of each task, shortened, fences removed; score = the record's own figure (IoU for "
          "refer, F1 for detect / spot_text, 1 − NED for document, temporal IoU, field share, else hit or miss).", "",
          "| task | record | truth | model | score |", "|---|---|---|---|---|"]
    for t in TASK_ORDER:
        for r, o in [(r, o) for _, recs, obs in files for r, o in zip(recs, obs) if o["task"] == t][:examples]:
            err = f" (parse error: {o['error']})" if o["error"] else ""
            L.append(f"| `{t}` | `{o['id']}` | `{_short(r['messages'][-1]['content'])}` | "
                     f"`{_short(o['answer']) or '∅'}`{err} | {o['score']:.2f} |")
    return "\n".join(L) + "\n"


def _file_sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def run(args: argparse.Namespace, argv: list[str]) -> Path:
    import qwenvl

    notes, gaps = _markdown(args.notes, "--notes"), _markdown(args.gaps, "--gaps")  # before minutes of answers
    claims = [_markdown(c, "--claims") for c in args.claims or []]
    vlm = qwenvl.load(args.model, dtype=args.dtype)
    model_dir = args.model or "qwenvl/embedded (the embedded default model)"
    files = []
    for name in args.heldout:
        recs = select(load_records(name), args.per_task)
        recs.sort(key=lambda r: TASK_ORDER.index(r["meta"]["task"]) if r["meta"]["task"] in TASK_ORDER else 99)
        log.info("%s: %d records", name, len(recs))
        gens = generate_answers(vlm, recs, Path(name).parent, args.max_new_tokens, args.batch_size,
                                progress=lambda d, n: log.info("  %d/%d answered", d, n))
        obs = [{**observe(r, g.text), "answer": g.text, "finish": g.finish_reason} for r, g in zip(recs, gens)]
        files.append((name, recs, obs))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot = None
    if args.metrics and not args.no_plot:
        png = plot_curve(args.metrics, out.with_name(out.stem + "-curve.png"))
        plot = png.name if png else None
    command = "python -m qwenvl.synth.report " + shlex.join(argv)
    text = build_report(command, model_dir, model_info(Path(vlm.path)), files, curve_section(args.metrics or []),
                        notes, args.examples, plot, claims, computed_on=machine(), gaps=gaps)
    out.write_text(text, encoding="utf-8")
    if args.json:
        every = [o for f in files for o in f[2]]
        res = {"overall": aggregate(every), "files": {n: aggregate(obs) for n, _, obs in files}}
        res["records"] = [{"file": n, "id": o["id"], "task": o["task"], "score": o["score"]}
                          for n, _, obs in files for o in obs]
        if videos := [o for o in every if o["task"] == "video_grounding"]:
            res["span_following"] = dict(zip(("start_r", "end_r", "n"), span_following(videos)))
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return out


def _markdown(path: str | None, flag: str) -> str | None:
    """The text of a markdown file the report includes verbatim (None when not given)."""
    if path is None:
        return None
    if not Path(path).is_file():
        raise SystemExit(f"error: {flag} {path}: no such file; give a markdown file to include in the report")
    return Path(path).read_text(encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m qwenvl.synth.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", default=None, help="checkpoint directory (default: the embedded model)")
    ap.add_argument("--heldout", action="append", required=True, help="held-out JSONL of qwenvl.synth records "
                    "(repeatable)")
    ap.add_argument("--metrics", action="append", default=None, help="a training run's metrics.jsonl (repeatable, "
                    "in run order)")
    ap.add_argument("--per-task", type=int, default=None, help="first N records of each task per file (default all)")
    ap.add_argument("--out", default="docs/embedded-model.md")
    ap.add_argument("--notes", default=None, help="markdown included verbatim (run settings)")
    ap.add_argument("--gaps", default=None, help="markdown included verbatim under \"What would close each gap\", "
                    "right after the missed targets")
    ap.add_argument("--claims", action="append", default=None, help="markdown of a claim's table (python -m "
                    "qwenvl.synth.claims table), included verbatim under \"The report's claims\" (repeatable)")
    ap.add_argument("--max-new-tokens", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--dtype", default=None, help="weights dtype (default: the checkpoint's)")
    ap.add_argument("--examples", type=int, default=2, help="example answers shown per task")
    ap.add_argument("--json", default=None, help="also write the metrics and each record's score as JSON here (compare two "
                    "models with python -m qwenvl.synth.compare A.json B.json)")
    ap.add_argument("--no-plot", action="store_true", help="skip the PNG of the training curve")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out = run(args, argv)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
