"""Scoring a model on held-out synthetic records: parse each answer with `qwenvl.tasks` and compare it with the
record's ground truth (`meta`, original pixels) using the task's benchmark-style metric.

    python -m qwenvl.synth.evaluate -m runs/embedded/train/export --data runs/embedded/data/heldout.jsonl --per-task 10

Scores per task (mean over records, each in [0, 1]): detect F1 at IoU ≥ 0.5 with matching labels; refer Acc@0.5;
point and computer_use click inside the target box; count exact; read_text / spot_text / document 1 − normalised
edit distance of the text; key_values exact field matches; video_grounding temporal IoU ≥ 0.5; the GUI naming rungs
(gui_name_at, gui_exists, gui_list, gui_name_one, gui_name_kind, gui_is_one, gui_copy) exact answers. Beside them,
`label_words`: how often a detect / count answer names each shape's colour and kind, which
separates naming from placing (detect F1 needs both).
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from ..tasks.coords import FrameMap
from ..tasks.metrics import box_iou, normalized_edit_distance, temporal_iou
from ..tasks.types import ParseError
from .gui import RUNGS, TEXT_ONLY, rung_score


def _f1(pred, gt) -> float:
    used, hits = set(), 0
    for p in pred:
        best, bj = 0.0, None
        for j, g in enumerate(gt):
            if j in used or p.label != g["label"]:
                continue
            iou = box_iou(p.bbox, g["box"])
            if iou >= 0.5 and iou > best:
                best, bj = iou, j
        if bj is not None:
            used.add(bj)
            hits += 1
    if not pred or not gt:
        return float(not pred and not gt)
    prec, rec = hits / len(pred), hits / len(gt)
    return 0.0 if hits == 0 else 2 * prec * rec / (prec + rec)


def _inside(pt, box) -> float:
    return float(box[0] <= pt[0] <= box[2] and box[1] <= pt[1] <= box[3])


def click_outcome(meta: dict, xy) -> str:
    """Where a click (original pixels) lands: on the target, on another element of the target's kind (the layout
    was read, the label not), on an element of another kind, or on no element (qwenvl.synth.report counts them)."""
    if _inside(xy, meta["box"]):
        return "target"
    hit = [e for e in meta.get("elements") or [] if _inside(xy, e["box"])]
    if not hit:
        return "no element"
    return "same kind" if hit[0]["type"] == target_kind(meta) else "other kind"


def target_kind(meta: dict) -> str | None:
    """The kind (button, field, menu, checkbox) of a computer_use record's target element."""
    els = meta.get("elements") or []
    return els[meta["target"]]["type"] if els else None


def score(record: dict, text: str) -> tuple[float, str | None]:
    """(score in [0, 1], parse error or None) of one answer against its record's ground truth."""
    from ..tasks.document import parse_document
    from ..tasks.parse import (parse_count, parse_grounding, parse_key_values, parse_ocr_lines, parse_text_spotting,
                               parse_time_spans, parse_tool_calls)

    m = record["meta"]
    task = m["task"]
    if task in TEXT_ONLY:  # a text-only rung (gui_copy): no frame to map
        return rung_score(m, text), None
    f = FrameMap(tuple(m["original"]), tuple(m["resized"]))
    try:
        if task in ("detect", "refer", "point"):
            dets = f.detections_to_original(parse_grounding(text))
            if task == "detect":
                return _f1([d for d in dets if d.bbox], m["objects"]), None
            target = m["objects"][m["target"]]["box"]
            if task == "refer":
                return float(bool(dets) and dets[0].bbox is not None and box_iou(dets[0].bbox, target) >= 0.5), None
            return float(bool(dets) and dets[0].point is not None and _inside(dets[0].point, target)), None
        if task == "count":
            return float(parse_count(text) == m["count"]), None
        if task == "read_text":
            got = "\n".join(parse_ocr_lines(text))
            return 1 - normalized_edit_distance(got, "\n".join(x["text"] for x in m["lines"])), None
        if task == "spot_text":
            got = "\n".join(t.text for t in parse_text_spotting(text))
            return 1 - normalized_edit_distance(got, "\n".join(x["text"] for x in m["lines"])), None
        if task == "key_values":
            vals = parse_key_values(text, m["keys"])
            return sum(vals.get(k) == v for k, v in m["values"].items()) / len(m["values"]), None
        if task == "document":
            got = "\n".join(b.text for b in parse_document(text))
            return 1 - normalized_edit_distance(got, "\n".join(b["text"] for b in m["blocks"])), None
        if task == "video_grounding":
            spans = parse_time_spans(text)
            return float(temporal_iou(spans[0], tuple(m["span"])) >= 0.5), None
        if task == "computer_use":
            calls = parse_tool_calls(text)
            xy = calls[0].arguments.get("coordinate")
            if not (isinstance(xy, list) and len(xy) == 2):
                return 0.0, "no coordinate"
            return _inside(f.point_to_original(xy), m["box"]), None
        if task in RUNGS:
            return rung_score(m, text), None
    except ParseError as e:
        return 0.0, e.reason
    raise ValueError(f"unknown synthetic task {task!r} in {m.get('id')}")


def label_words(record: dict, text: str) -> tuple[int, int, int]:
    """(colour words right, shape words right, objects) of a detect / count answer: each true object takes the
    answer's box of highest IoU with it (any overlap), whose label must hold the object's colour / shape word.
    An answer that does not parse names nothing."""
    from ..tasks.parse import parse_grounding

    m = record["meta"]
    objects = m["objects"]
    try:
        f = FrameMap(tuple(m["original"]), tuple(m["resized"]))
        dets = [d for d in f.detections_to_original(parse_grounding(text)) if d.bbox is not None]
    except ParseError:
        dets = []
    colour = shape = 0
    for o in objects:
        if not dets:
            break
        best = max(dets, key=lambda d: box_iou(d.bbox, o["box"]))
        words = (best.label or "").lower().split() if box_iou(best.bbox, o["box"]) > 0 else []
        colour += o["colour"] in words
        shape += o["shape"] in words
    return colour, shape, len(objects)


def load_records(data: str | Path) -> list[dict]:
    """The records of a held-out JSONL file, in file order."""
    return [json.loads(line) for line in Path(data).read_text(encoding="utf-8").splitlines() if line.strip()]


def select(records: list[dict], per_task: int | None) -> list[dict]:
    """The first `per_task` records of each task (all when None), keeping file order."""
    chosen, count = [], defaultdict(int)
    for r in records:
        t = r["meta"]["task"]
        if per_task is None or count[t] < per_task:
            count[t] += 1
            chosen.append(r)
    return chosen


def generate_answers(vlm, records: list[dict], base: str | Path, max_new_tokens: int = 384, batch_size: int = 4,
                     progress=None) -> list:
    """Greedy `Generation`s for the records' prompts (all but the last message), in fixed batches; media paths
    are relative to `base`. `progress(done, total)` is called after each batch."""
    out = []
    for i in range(0, len(records), batch_size):
        part = records[i:i + batch_size]
        convs = [_absolute(r["messages"][:-1], Path(base)) for r in part]
        out += vlm.generate(convs, max_new_tokens=max_new_tokens, temperature=0)
        if progress is not None:
            progress(len(out), len(records))
    return out


def evaluate(vlm, data: str | Path, per_task: int = 10, max_new_tokens: int = 384, batch_size: int = 4) -> dict:
    """Generate answers for up to `per_task` held-out records of each task and score them."""
    data = Path(data)
    chosen = select(load_records(data), per_task)
    scores, errors = defaultdict(list), defaultdict(int)
    named = [0, 0, 0]  # colour words right, shape words right, objects (detect / count answers)
    for r, g in zip(chosen, generate_answers(vlm, chosen, data.parent, max_new_tokens, batch_size)):
        s, err = score(r, g.text)
        scores[r["meta"]["task"]].append(s)
        errors[r["meta"]["task"]] += err is not None
        if r["meta"]["task"] in ("detect", "count"):
            named = [a + b for a, b in zip(named, label_words(r, g.text))]
    out = {t: {"score": sum(v) / len(v), "n": len(v), "parse_errors": errors[t]} for t, v in sorted(scores.items())}
    out["mean"] = sum(v["score"] for v in out.values()) / max(1, len(out))
    if named[2]:
        out["label_words"] = {"colour": named[0] / named[2], "shape": named[1] / named[2], "objects": named[2]}
    return out


def _absolute(messages: list[dict], base: Path) -> list[dict]:
    """Media paths in the JSONL are relative to its directory (a video may be a list of frame paths)."""
    def fix(v):
        if isinstance(v, str) and not Path(v).is_absolute() and "://" not in v and not v.startswith("data:"):
            return str(base / v)
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v

    out = []
    for msg in messages:
        content = msg["content"]
        if isinstance(content, list):
            content = [{**p, **{k: fix(p[k]) for k in ("image", "video") if k in p}} for p in content]
        out.append({**msg, "content": content})
    return out


def main(argv=None) -> None:
    import qwenvl

    ap = argparse.ArgumentParser(prog="python -m qwenvl.synth.evaluate", description=__doc__.split("\n")[0])
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--per-task", type=int, default=10)
    ap.add_argument("--max-new-tokens", type=int, default=384)
    args = ap.parse_args(argv)
    print(json.dumps(evaluate(qwenvl.load(args.model), args.data, args.per_task, args.max_new_tokens), indent=2))


if __name__ == "__main__":
    main()
