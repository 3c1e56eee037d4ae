"""Benchmark metrics for the Qwen2.5-VL report: grounding, detection, counting, temporal grounding, DocVQA,
OmniDocBench text and ScreenSpot.

Conventions shared by every function here:
- Boxes are (x1, y1, x2, y2) in continuous pixel coordinates; area = (x2 - x1) * (y2 - y1) (the COCO convention,
  no "+1" as in old VOC code). A box with x2 <= x1 or y2 <= y1 has zero area; it is not swapped.
- A box, point or span argument may also be a `Detection` (its .bbox / .point is used) or None (a missing answer).
- Scores are fractions in [0, 1] (the report prints most of them x100). Aggregates over an empty list are 0.0.
- Paired lists (predictions, ground truths) must have equal length, else ValueError.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from qwenvl.tasks.types import Box, Detection, Point

__all__ = [
    "COCO_IOU_THRESHOLDS", "COCO_RECALL_THRESHOLDS", "box_iou", "box_iou_matrix", "refcoco_accuracy", "coco_map",
    "counting_accuracy", "temporal_iou", "charades_scores", "levenshtein", "anls", "anls_score",
    "normalized_edit_distance", "mean_ned", "click_accuracy",
]

# Built exactly as pycocotools builds them (np.linspace), so float quirks such as 0.8999999999999999 match.
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
COCO_RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)


def _check_pairs(preds: Sequence, gts: Sequence) -> None:
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predictions for {len(gts)} ground truths")


def _as_box(x: Any) -> Box | None:
    if x is None:
        return None
    if isinstance(x, Detection):
        x = x.bbox
        if x is None:
            return None
    x1, y1, x2, y2 = (float(v) for v in x)
    return (x1, y1, x2, y2)


# ----------------------------------------------------------------------------------------------- boxes


def box_iou(a: Box | Detection | None, b: Box | Detection | None) -> float:
    """IoU of two (x1, y1, x2, y2) boxes, continuous coordinates (area = w * h, no +1).

    Zero-area, inverted (x2 < x1) or missing boxes give 0.0, never NaN."""
    a, b = _as_box(a), _as_box(b)
    if a is None or b is None:
        return 0.0
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    area_a = max(a[2] - a[0], 0.0) * max(a[3] - a[1], 0.0)
    area_b = max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)
    union = area_a + area_b - inter
    return float(inter / union) if union > 0 else 0.0


def box_iou_matrix(a: Sequence[Box] | np.ndarray, b: Sequence[Box] | np.ndarray) -> np.ndarray:
    """(len(a), len(b)) float64 matrix of `box_iou` for every pair; same conventions (degenerate -> 0)."""
    A = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    B = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    iw = np.minimum(A[:, None, 2], B[None, :, 2]) - np.maximum(A[:, None, 0], B[None, :, 0])
    ih = np.minimum(A[:, None, 3], B[None, :, 3]) - np.maximum(A[:, None, 1], B[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_a = np.clip(A[:, 2] - A[:, 0], 0, None) * np.clip(A[:, 3] - A[:, 1], 0, None)
    area_b = np.clip(B[:, 2] - B[:, 0], 0, None) * np.clip(B[:, 3] - B[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=(union > 0) & (inter > 0))
    return out


def refcoco_accuracy(preds: Sequence[Box | Detection | None], gts: Sequence[Box | Detection],
                     threshold: float = 0.5) -> dict[str, float]:
    """RefCOCO/+/g referring-expression accuracy: a prediction is correct when IoU(pred, gt) >= threshold
    (Acc@0.5, as the Qwen-VL grounding evaluation counts it). Returns {acc, miou, n}; a None prediction has IoU 0."""
    _check_pairs(preds, gts)
    ious = [box_iou(p, g) for p, g in zip(preds, gts)]
    n = len(ious)
    if n == 0:
        return {"acc": 0.0, "miou": 0.0, "n": 0}
    return {"acc": sum(i >= threshold for i in ious) / n, "miou": sum(ious) / n, "n": n}


# ----------------------------------------------------------------------------------------------- COCO mAP


def _as_pred(p: Any) -> tuple[str, Box, float | None]:
    if isinstance(p, Detection):
        s = p.extra.get("score")
        return p.label, _as_box(p.bbox), None if s is None else float(s)
    label, box, *rest = p
    s = rest[0] if rest else None
    return label, _as_box(box), None if s is None else float(s)


def _as_gt(g: Any) -> tuple[str, Box]:
    if isinstance(g, Detection):
        return g.label, _as_box(g.bbox)
    label, box = g
    return label, _as_box(box)


def _match_image(dt: list[Box], gt: list[Box], thresholds: np.ndarray) -> np.ndarray:
    """Greedy COCO matching of score-sorted `dt` to `gt`: (T, len(dt)) bool, True where a detection is a TP."""
    tp = np.zeros((len(thresholds), len(dt)), dtype=bool)
    if not gt or not dt:
        return tp
    ious = box_iou_matrix(dt, gt)
    for ti, t in enumerate(thresholds):
        taken = np.zeros(len(gt), dtype=bool)
        for d in range(len(dt)):
            best, best_iou = -1, min(float(t), 1 - 1e-10)
            for g in range(len(gt)):
                # like pycocotools: skip matched gts; ties on IoU go to the later gt
                if taken[g] or ious[d, g] < best_iou:
                    continue
                best, best_iou = g, ious[d, g]
            if best >= 0:
                taken[best] = True
                tp[ti, d] = True
    return tp


def _average_precision(tp: np.ndarray, n_gt: int) -> np.ndarray:
    """Per-threshold 101-point interpolated AP from score-sorted TP flags (T, N) and the number of gts."""
    out = np.zeros(tp.shape[0])
    if tp.shape[1] == 0:
        return out
    tps = np.cumsum(tp, axis=1, dtype=np.float64)
    fps = np.cumsum(~tp, axis=1, dtype=np.float64)
    for ti in range(tp.shape[0]):
        rc = tps[ti] / n_gt
        pr = tps[ti] / (tps[ti] + fps[ti])
        pr = np.maximum.accumulate(pr[::-1])[::-1]  # precision envelope: max precision at recall >= r
        idx = np.searchsorted(rc, COCO_RECALL_THRESHOLDS, side="left")
        q = np.where(idx < len(pr), pr[np.minimum(idx, len(pr) - 1)], 0.0)
        out[ti] = q.mean()
    return out


def coco_map(predictions: Sequence[Sequence[Any]], ground_truths: Sequence[Sequence[Any]],
             max_dets: int = 100) -> dict[str, Any]:
    """COCO-style box mAP@[.50:.05:.95] as pycocotools computes it (used for ODinW), plus AP50 and AP75.

    predictions[i] / ground_truths[i] belong to image i. A prediction is (label, box, score), (label, box) or a
    Detection (score from .extra["score"]); a ground truth is (label, box) or a Detection. Labels match by exact
    string equality (normalise them before). A prediction without a score gets 1.0; ties keep the given order
    (stable sort: within an image first, then by image index), like pycocotools' mergesort.

    Per image and category the top `max_dets` detections by score are matched greedily in descending score: each
    goes to the unmatched gt with the highest IoU >= threshold, each gt at most once, so a duplicate is a false
    positive. Per category and IoU threshold, precision is made monotone and sampled at the 101 recall points
    0:0.01:1 (0 beyond the reached recall). AP per category = mean over the 10 thresholds; mAP = mean over
    categories that have at least one gt (a category with predictions but no gt is ignored, as in COCO; a
    category with gt but no predictions has AP 0). No crowd/area handling. No gt at all -> 0.0.
    Returns {map, ap50, ap75, per_category: {label: AP}, n_categories}."""
    _check_pairs(predictions, ground_truths)
    gt_by = [{} for _ in ground_truths]  # image -> label -> [box]
    labels: dict[str, int] = {}  # labels with gt -> gt count, in first-seen order
    for i, gts in enumerate(ground_truths):
        for g in gts:
            label, box = _as_gt(g)
            if box is None:
                continue
            gt_by[i].setdefault(label, []).append(box)
            labels[label] = labels.get(label, 0) + 1
    dt_by = [{} for _ in predictions]
    for i, preds in enumerate(predictions):
        for p in preds:
            label, box, score = _as_pred(p)
            if label in labels and box is not None:
                dt_by[i].setdefault(label, []).append((1.0 if score is None else score, box))

    T = len(COCO_IOU_THRESHOLDS)
    per_t: dict[str, np.ndarray] = {}
    for label, n_gt in labels.items():
        scores, flags = [], []
        for i in range(len(ground_truths)):
            dts = sorted(dt_by[i].get(label, []), key=lambda sb: -sb[0])[:max_dets]  # sorted() is stable
            if not dts:
                continue
            scores.extend(s for s, _ in dts)
            flags.append(_match_image([b for _, b in dts], gt_by[i].get(label, []), COCO_IOU_THRESHOLDS))
        if not flags:
            per_t[label] = np.zeros(T)
            continue
        order = np.argsort(-np.asarray(scores), kind="mergesort")
        per_t[label] = _average_precision(np.concatenate(flags, axis=1)[:, order], n_gt)

    if not per_t:
        return {"map": 0.0, "ap50": 0.0, "ap75": 0.0, "per_category": {}, "n_categories": 0}
    table = np.stack(list(per_t.values()))  # (K, T)
    i75 = int(np.argmin(np.abs(COCO_IOU_THRESHOLDS - 0.75)))
    return {"map": float(table.mean()), "ap50": float(table[:, 0].mean()), "ap75": float(table[:, i75].mean()),
            "per_category": {k: float(v.mean()) for k, v in per_t.items()}, "n_categories": len(per_t)}


# ----------------------------------------------------------------------------------------------- counting, video


def counting_accuracy(pred_counts: Sequence[int | float | None], gt_counts: Sequence[int]) -> float:
    """CountBench accuracy: fraction of exact matches (3.0 == 3 == "3"; None or anything non-numeric is wrong)."""
    _check_pairs(pred_counts, gt_counts)
    if not gt_counts:
        return 0.0
    return sum(_same_count(p, g) for p, g in zip(pred_counts, gt_counts)) / len(gt_counts)


def _same_count(p: Any, g: Any) -> bool:
    if p is None or isinstance(p, bool):
        return False
    try:
        return float(p) == float(g)
    except (TypeError, ValueError):
        return False


def temporal_iou(pred_span: Sequence[float] | None, gt_span: Sequence[float] | None) -> float:
    """IoU of two time spans (start, end[, description]) in seconds: overlap / (union of the two).

    For overlapping spans the union equals max(end) - min(start) as Charades-STA scripts compute it; disjoint
    spans give 0. Convention for degenerate spans: a zero-length span scores 1.0 only against the identical
    zero-length span, else 0.0; a reversed span (end < start) or None scores 0.0. Never NaN."""
    if pred_span is None or gt_span is None:
        return 0.0
    s1, e1, s2, e2 = float(pred_span[0]), float(pred_span[1]), float(gt_span[0]), float(gt_span[1])
    if e1 < s1 or e2 < s2:
        return 0.0
    if e1 == s1 or e2 == s2:
        return 1.0 if (s1, e1) == (s2, e2) else 0.0
    inter = min(e1, e2) - max(s1, s2)
    if inter <= 0:
        return 0.0
    return float(inter / (max(e1, e2) - min(s1, s2)))


def charades_scores(preds: Sequence[Sequence[float] | None], gts: Sequence[Sequence[float]],
                    thresholds: Sequence[float] = (0.3, 0.5, 0.7)) -> dict[str, float]:
    """Charades-STA: mean temporal IoU and R@1 at each IoU threshold (IoU >= t counts), one prediction per query.

    Keys: "miou", "r@0.3", "r@0.5", "r@0.7" (one per threshold, formatted with :g), "n". None predictions have
    IoU 0. The report's Charades-STA number is miou x 100."""
    _check_pairs(preds, gts)
    ious = [temporal_iou(p, g) for p, g in zip(preds, gts)]
    n = len(ious)
    out: dict[str, float] = {"miou": sum(ious) / n if n else 0.0}
    for t in thresholds:
        out[f"r@{t:g}"] = sum(i >= t for i in ious) / n if n else 0.0
    out["n"] = n
    return out


# ----------------------------------------------------------------------------------------------- text


def _levenshtein_py(a: str, b: str) -> int:
    """Two-row dynamic programme; `b` should be the shorter string."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _levenshtein_np(a: str, b: str) -> int:
    """Row-vectorised DP: one numpy pass per character of `b` (the shorter) over a row as long as `a`.

    Deletion/substitution come from the previous row; the in-row insertion chain cur[j] = min(cur[j-1] + 1, ...)
    is solved in closed form as cur[j] = min_k<=j (tmp[k] + j - k) with a running minimum."""
    A = np.frombuffer(a.encode("utf-32-le"), dtype="<u4")
    idx = np.arange(len(a) + 1, dtype=np.int64)
    prev = idx.copy()
    tmp = np.empty_like(prev)
    for i, cb in enumerate(b, 1):
        tmp[0] = i
        np.minimum(prev[1:] + 1, prev[:-1] + (A != ord(cb)), out=tmp[1:])
        prev = np.minimum.accumulate(tmp - idx) + idx
    return int(prev[-1])


def levenshtein(a: str, b: str) -> int:
    """Levenshtein distance (unit-cost insert/delete/substitute) over Unicode code points.

    Pure Python two-row DP for short strings, a numpy row-vectorised DP for long ones (page-length text)."""
    if a == b:
        return 0
    p = 0  # common prefix and suffix never change the distance
    while p < len(a) and p < len(b) and a[p] == b[p]:
        p += 1
    a, b = a[p:], b[p:]
    s = 0
    while s < len(a) and s < len(b) and a[-1 - s] == b[-1 - s]:
        s += 1
    if s:
        a, b = a[:-s], b[:-s]
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    return _levenshtein_py(a, b) if len(a) * len(b) <= 2500 else _levenshtein_np(a, b)


def _docvqa_norm(s: str | None) -> str:
    return " ".join(("" if s is None else str(s)).strip().lower().split())


def anls(prediction: str | None, answers: Sequence[str], tau: float = 0.5) -> float:
    """DocVQA/InfoVQA ANLS for one question: max over gt answers of 1 - NL, where NL = Levenshtein / max length.

    Both strings are normalised as the official RRC script does: lower-cased, stripped, and inner whitespace
    runs collapsed to one space (lengths are taken after normalisation). A score below 1 - tau becomes 0, i.e.
    NL > tau -> 0 (the script's `if score < threshold: score = 0`; NL exactly tau keeps 1 - tau). Two empty
    strings match (1.0). None prediction = "", empty answer list -> 0.0."""
    pred = _docvqa_norm(prediction)
    best = 0.0
    for ans in answers:
        gt = _docvqa_norm(ans)
        length = max(len(gt), len(pred))
        score = 1.0 - (levenshtein(gt, pred) / length if length else 0.0)
        if score < 1.0 - tau:
            score = 0.0
        best = max(best, score)
    return best


def anls_score(preds: Sequence[str | None], answers_list: Sequence[Sequence[str]], tau: float = 0.5) -> float:
    """Mean `anls` over questions (the DocVQA/InfoVQA benchmark number, x100 in the report)."""
    _check_pairs(preds, answers_list)
    if not preds:
        return 0.0
    return sum(anls(p, a, tau) for p, a in zip(preds, answers_list)) / len(preds)


def normalized_edit_distance(pred: str | None, gt: str) -> float:
    """OmniDocBench text edit distance: Levenshtein(pred, gt) / max(len(pred), len(gt)); 0.0 when both are empty.

    No normalisation is applied (lower is better; None = "")."""
    pred = "" if pred is None else pred
    length = max(len(pred), len(gt))
    return levenshtein(pred, gt) / length if length else 0.0


def mean_ned(preds: Sequence[str | None], gts: Sequence[str]) -> float:
    """Mean `normalized_edit_distance` over samples (the report's OmniDocBench 'edit' number); empty -> 0.0."""
    _check_pairs(preds, gts)
    if not preds:
        return 0.0
    return sum(normalized_edit_distance(p, g) for p, g in zip(preds, gts)) / len(preds)


# ----------------------------------------------------------------------------------------------- GUI


def _as_point(p: Any) -> Point | None:
    if p is None:
        return None
    if isinstance(p, Detection):
        if p.point is not None:
            p = p.point
        elif p.bbox is not None:
            x1, y1, x2, y2 = p.bbox
            return ((x1 + x2) / 2, (y1 + y2) / 2)
        else:
            return None
    return (float(p[0]), float(p[1]))


def click_accuracy(points: Sequence[Point | Detection | None], boxes: Sequence[Box | Detection]) -> float:
    """ScreenSpot accuracy: fraction of predicted click points inside their gt box, edges inclusive
    (x1 <= x <= x2 and y1 <= y <= y2). A Detection clicks its .point, else its box centre; None is a miss."""
    _check_pairs(points, boxes)
    if not points:
        return 0.0
    hits = 0
    for p, b in zip(points, boxes):
        pt, box = _as_point(p), _as_box(b)
        if pt is not None and box is not None:
            hits += box[0] <= pt[0] <= box[2] and box[1] <= pt[1] <= box[3]
    return hits / len(points)
