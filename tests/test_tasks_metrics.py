"""Benchmark metrics against hand-computed examples (the arithmetic is in the comments)."""
import random

import numpy as np
import pytest

from qwenvl.tasks.metrics import (
    COCO_IOU_THRESHOLDS, _levenshtein_np, _levenshtein_py, anls, anls_score, box_iou, box_iou_matrix,
    charades_scores, click_accuracy, coco_map, counting_accuracy, levenshtein, mean_ned, normalized_edit_distance,
    refcoco_accuracy, temporal_iou,
)
from qwenvl.tasks.types import Detection, TimeSpan

approx = pytest.approx

# ------------------------------------------------------------------------------------------- box IoU


def test_box_iou_hand_computed():
    # overlap 5x10 = 50; union 100 + 100 - 50 = 150
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == approx(1 / 3)
    # continuous convention: inter 1x1 = 1, union 4 + 4 - 1 = 7 (the +1 convention would give 4/14)
    assert box_iou((0, 0, 2, 2), (1, 1, 3, 3)) == approx(1 / 7)
    assert box_iou((1, 2, 3, 4), (1, 2, 3, 4)) == 1.0
    # contained: 25 / 100
    assert box_iou((0, 0, 10, 10), (0, 0, 5, 5)) == approx(0.25)


def test_box_iou_degenerate_never_nan():
    assert box_iou((5, 5, 5, 5), (5, 5, 5, 5)) == 0.0  # zero-area identical points
    assert box_iou((0, 0, 0, 10), (0, 0, 10, 10)) == 0.0  # zero-width line
    assert box_iou((10, 10, 0, 0), (0, 0, 10, 10)) == 0.0  # inverted box is not swapped
    assert box_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0  # touching edges
    assert box_iou((0, 0, 1, 1), (5, 5, 6, 6)) == 0.0
    assert box_iou(None, (0, 0, 1, 1)) == 0.0
    assert box_iou(Detection("a"), (0, 0, 1, 1)) == 0.0  # Detection without bbox
    assert box_iou(Detection("a", bbox=(0, 0, 10, 10)), (5, 0, 15, 10)) == approx(1 / 3)


def test_box_iou_matrix_matches_scalar():
    a = [(0, 0, 10, 10), (5, 5, 5, 5), (10, 10, 0, 0), (0, 0, 2, 2)]
    b = [(5, 0, 15, 10), (1, 1, 3, 3), (5, 5, 5, 5)]
    m = box_iou_matrix(a, b)
    assert m.shape == (4, 3) and not np.isnan(m).any()
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            assert m[i, j] == approx(box_iou(x, y))
    assert box_iou_matrix([], b).shape == (0, 3)
    assert box_iou_matrix(a, []).shape == (4, 0)


def test_refcoco_accuracy():
    gt = (0, 0, 10, 10)
    # IoU 1, IoU 50/100 = 0.5 (counts: >= 0.5), IoU 49/100 = 0.49 (miss), None -> 0
    preds = [(0, 0, 10, 10), (0, 0, 10, 5), (0, 0, 10, 4.9), None]
    r = refcoco_accuracy(preds, [gt] * 4)
    assert r["n"] == 4
    assert r["acc"] == approx(2 / 4)
    assert r["miou"] == approx((1 + 0.5 + 0.49 + 0) / 4)  # = 0.4975
    assert refcoco_accuracy(preds, [gt] * 4, threshold=0.4)["acc"] == approx(3 / 4)
    assert refcoco_accuracy([Detection("x", bbox=gt)], [gt])["acc"] == 1.0
    assert refcoco_accuracy([], []) == {"acc": 0.0, "miou": 0.0, "n": 0}
    with pytest.raises(ValueError):
        refcoco_accuracy([gt], [])


# ------------------------------------------------------------------------------------------- COCO mAP

A, B = (0, 0, 10, 10), (20, 20, 30, 30)
FAR = (50, 50, 60, 60)  # overlaps nothing


def test_coco_perfect():
    gts = [[("cat", A), ("dog", B)], [("cat", B)]]
    preds = [[("cat", A, 0.9), ("dog", B, 0.8)], [("cat", B, 0.7)]]
    r = coco_map(preds, gts)
    assert r["map"] == approx(1.0) and r["ap50"] == approx(1.0) and r["ap75"] == approx(1.0)
    assert r["per_category"] == {"cat": approx(1.0), "dog": approx(1.0)}
    assert r["n_categories"] == 2


def test_coco_one_of_two_found_right_order():
    # sorted by score: TP (0.9), FP (0.1). recall [.5, .5], precision [1, .5] (already monotone).
    # recall points 0.00..0.50 (51 of 101) -> first index with recall >= r is 0 -> precision 1; 0.51..1.00 -> 0.
    # AP = 51/101 at every IoU threshold (the TP has IoU 1).
    r = coco_map([[("a", A, 0.9), ("a", FAR, 0.1)]], [[("a", A), ("a", B)]])
    assert r["map"] == approx(51 / 101)
    assert r["ap50"] == approx(51 / 101) and r["ap75"] == approx(51 / 101)


def test_coco_score_order_changes_ap():
    # sorted: FP (0.9), TP (0.1). recall [0, .5], precision [0, .5] -> envelope [.5, .5].
    # r = 0 -> index 0 -> .5; r in (0, .5] -> index 1 -> .5; r > .5 -> 0.  AP = 51 * .5 / 101 = 25.5/101.
    r = coco_map([[("a", A, 0.1), ("a", FAR, 0.9)]], [[("a", A), ("a", B)]])
    assert r["map"] == approx(25.5 / 101)


def test_coco_order_across_images():
    # image 0: TP at 0.6; image 1: FP at 0.9 -> global order FP, TP; 2 gts -> same as above: 25.5/101
    r = coco_map([[("a", A, 0.6)], [("a", FAR, 0.9)]], [[("a", A)], [("a", B)]])
    assert r["map"] == approx(25.5 / 101)


def test_coco_iou_between_thresholds():
    # gt 100x100, pred 62x100 inside it: IoU = 6200 / 10000 = 0.62 -> TP at 0.50, 0.55, 0.60 (AP 1 each),
    # a lone FP at 0.65..0.95 (AP 0 each). mAP = 3/10; AP50 = 1; AP75 = 0.
    r = coco_map([[("a", (0, 0, 62, 100), 0.5)]], [[("a", (0, 0, 100, 100))]])
    assert r["map"] == approx(3 / 10)
    assert r["ap50"] == 1.0 and r["ap75"] == 0.0


def test_coco_iou_exactly_half_counts_at_050():
    # IoU = 5000 / 10000 = 0.5 >= 0.5 -> TP at the first threshold only: mAP = 1/10
    assert COCO_IOU_THRESHOLDS[0] == 0.5
    r = coco_map([[("a", (0, 0, 50, 100), 0.5)]], [[("a", (0, 0, 100, 100))]])
    assert r["map"] == approx(1 / 10) and r["ap50"] == 1.0


def test_coco_duplicate_is_false_positive():
    gts = [[("a", A), ("a", B)]]
    # sorted: A (TP), A again (gt taken -> FP), B (TP). recall [.5, .5, 1], precision [1, .5, 2/3]
    # envelope [1, 2/3, 2/3]. r in [0, .5] (51 points) -> index 0 -> 1; r in (.5, 1] (50 points) -> index 2 -> 2/3.
    # AP = (51 + 50 * 2/3) / 101 = 253/303 ~ 0.835, below the 1.0 without the duplicate.
    dup = coco_map([[("a", A, 0.9), ("a", A, 0.8), ("a", B, 0.7)]], gts)
    assert dup["map"] == approx(253 / 303)
    assert coco_map([[("a", A, 0.9), ("a", B, 0.7)]], gts)["map"] == approx(1.0)
    # a duplicate ranked after full recall costs nothing (COCO's interpolation): recall [1, 1], envelope [1, .5]
    assert coco_map([[("a", A, 0.9), ("a", A, 0.8)]], [[("a", A)]])["map"] == approx(1.0)


def test_coco_empty_predictions_and_missing_categories():
    gts = [[("a", A)], [("b", B)]]
    r = coco_map([[], []], gts)
    assert r["map"] == 0.0 and r["per_category"] == {"a": 0.0, "b": 0.0}
    # category "b" has gt but no prediction: AP 0 -> mean over {a: 1, b: 0} = 0.5
    assert coco_map([[("a", A, 1.0)], []], gts)["map"] == approx(0.5)
    # a predicted category with no gt anywhere ("zebra") is ignored, as in COCO
    r = coco_map([[("a", A, 1.0), ("zebra", B, 0.99)], [("b", B, 1.0)]], gts)
    assert r["map"] == approx(1.0) and r["n_categories"] == 2 and "zebra" not in r["per_category"]
    # nothing at all
    assert coco_map([[]], [[]]) == {"map": 0.0, "ap50": 0.0, "ap75": 0.0, "per_category": {}, "n_categories": 0}
    assert coco_map([], [])["map"] == 0.0
    with pytest.raises(ValueError):
        coco_map([[]], [])


def test_coco_missing_scores_keep_given_order():
    gts = [[("a", A), ("a", B)]]
    # no scores -> all 1.0, stable order: FP then TP -> 25.5/101; TP then FP -> 51/101
    assert coco_map([[("a", FAR), ("a", A)]], gts)["map"] == approx(25.5 / 101)
    assert coco_map([[("a", A), ("a", FAR)]], gts)["map"] == approx(51 / 101)
    # Detection inputs: score from extra, label from .label
    dets = [Detection("a", bbox=FAR, extra={"score": 0.2}), Detection("a", bbox=A, extra={"score": 0.8})]
    assert coco_map([dets], [[Detection("a", bbox=A), Detection("a", bbox=B)]])["map"] == approx(51 / 101)


def test_coco_max_dets_and_greedy_best_iou():
    # only the top-1 detection (the FP at 0.9) is kept: AP 0
    preds = [[("a", FAR, 0.9), ("a", A, 0.5)]]
    assert coco_map(preds, [[("a", A)]], max_dets=1)["map"] == 0.0
    # one detection overlapping two gts goes to the one with the higher IoU (the exact one): AP = 51/101
    r = coco_map([[("a", (0, 0, 10, 10), 0.9)]], [[("a", (0, 0, 10, 12)), ("a", (0, 0, 10, 10))]])
    assert r["map"] == approx(51 / 101)


# ------------------------------------------------------------------------------------------- counting, video


def test_counting_accuracy():
    # 3==3 yes, 5!=4, None wrong, 2.0==2 yes -> 2/4
    assert counting_accuracy([3, 5, None, 2.0], [3, 4, 2, 2]) == 0.5
    # "3" parses, "three" and True do not count -> 1/3
    assert counting_accuracy(["3", "three", True], [3, 3, 1]) == approx(1 / 3)
    assert counting_accuracy([], []) == 0.0
    with pytest.raises(ValueError):
        counting_accuracy([1], [1, 2])


def test_temporal_iou():
    assert temporal_iou((0, 10), (5, 15)) == approx(5 / 15)  # overlap 5, union 0..15
    assert temporal_iou((2, 4), (0, 10)) == approx(0.2)  # contained: 2 / 10
    assert temporal_iou((0, 1), (2, 3)) == 0.0  # disjoint
    assert temporal_iou((0, 1), (1, 2)) == 0.0  # touching
    assert temporal_iou((3, 3), (3, 3)) == 1.0  # identical zero-length spans
    assert temporal_iou((3, 3), (0, 10)) == 0.0  # a point inside a span
    assert temporal_iou((3, 3), (4, 4)) == 0.0
    assert temporal_iou((5, 3), (3, 5)) == 0.0  # reversed
    assert temporal_iou(None, (0, 1)) == 0.0
    assert temporal_iou(TimeSpan(0, 10, "a person opens a door"), TimeSpan(5, 15)) == approx(1 / 3)


def test_charades_scores():
    gts = [(0, 10), (5, 15), (0, 20), (0, 5)]
    preds = [(0, 10), (0, 10), (0, 10), None]
    # IoUs: 1, 5/15 = 1/3, 10/20 = 0.5, 0 -> mIoU = (1 + 1/3 + 0.5 + 0) / 4 = 11/24
    r = charades_scores(preds, gts)
    assert r["miou"] == approx(11 / 24)
    assert r["r@0.3"] == 0.75 and r["r@0.5"] == 0.5 and r["r@0.7"] == 0.25 and r["n"] == 4
    assert charades_scores([], [])["miou"] == 0.0
    assert set(charades_scores(preds, gts, thresholds=(0.1,))) == {"miou", "r@0.1", "n"}


# ------------------------------------------------------------------------------------------- text


def _naive_levenshtein(a, b):
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
    return d[-1][-1]


def test_levenshtein_examples():
    assert levenshtein("kitten", "sitting") == 3  # k->s, e->i, +g
    assert levenshtein("flaw", "lawn") == 2  # -f, +n
    assert levenshtein("", "abc") == 3 and levenshtein("abc", "") == 3
    assert levenshtein("same", "same") == 0 and levenshtein("", "") == 0
    assert levenshtein("日本語", "日本人") == 1


def test_levenshtein_paths_agree():
    rng = random.Random(0)
    for _ in range(60):
        a = "".join(rng.choice("abcé ") for _ in range(rng.randint(0, 30)))
        b = "".join(rng.choice("abcé ") for _ in range(rng.randint(0, 30)))
        want = _naive_levenshtein(a, b)
        assert levenshtein(a, b) == want
        if a and b:
            long, short = (a, b) if len(a) >= len(b) else (b, a)
            assert _levenshtein_py(long, short) == want and _levenshtein_np(long, short) == want
    # page-length strings take the numpy path. 30 substitutions by "Z" and an inserted "INSERT", none of whose
    # letters occur in `a`: each of those 36 characters needs its own edit, and 36 edits suffice -> exactly 36.
    a = "".join(rng.choice("abcdefgh \n") for _ in range(3000))
    b = "".join("Z" if i % 100 == 0 else c for i, c in enumerate(a))
    b = b[:1500] + "INSERT" + b[1500:]
    assert levenshtein(a, b) == 36 and normalized_edit_distance(b, a) == approx(36 / 3006)
    a, b = a[:700], "".join(rng.choice("abcdefgh \n") for _ in range(650))
    assert _levenshtein_np(a, b) == _levenshtein_py(a, b)


def test_anls():
    # case and whitespace are normalised (lower, strip, collapse runs)
    assert anls("  Denver   BRONCOS \n", ["denver broncos"]) == 1.0
    # 1 substitution over 8 chars: 1 - 1/8
    assert anls("12/15/89", ["12/15/88"]) == approx(0.875)
    # several variants, max wins: "dr. lobo" vs "dear dr. lobo" -> 5 edits / 13 -> 0.615;
    # vs "dr lobo" -> 1 edit / 8 -> 0.875
    assert anls("Dr. Lobo", ["Dear Dr. Lobo", "dr lobo"]) == approx(0.875)
    assert anls("abcde", ["abxyz"]) == 0.0  # NL = 3/5 = 0.6 > 0.5 -> 0
    assert anls("ab", ["ac"]) == approx(0.5)  # NL exactly 0.5: the official script keeps 1 - 0.5
    assert anls("ab", ["ac"], tau=0.4) == 0.0
    assert anls("", [""]) == 1.0
    assert anls("", ["a"]) == 0.0 and anls(None, ["a"]) == 0.0
    assert anls("a", []) == 0.0
    # mean: (1 + 0.875 + 0) / 3
    assert anls_score(["Yes", "12/15/89", "no"], [["yes"], ["12/15/88"], ["maybe"]]) == approx(1.875 / 3)
    assert anls_score([], []) == 0.0


def test_normalized_edit_distance():
    assert normalized_edit_distance("kitten", "sitting") == approx(3 / 7)
    assert normalized_edit_distance("", "") == 0.0
    assert normalized_edit_distance("", "abc") == 1.0
    assert normalized_edit_distance("same text", "same text") == 0.0
    assert normalized_edit_distance("Same", "same") == approx(1 / 4)  # no case folding
    # (3/7 + 0 + 1) / 3
    assert mean_ned(["kitten", "x", None], ["sitting", "x", "abc"]) == approx((3 / 7 + 1) / 3)
    assert mean_ned([], []) == 0.0


# ------------------------------------------------------------------------------------------- GUI


def test_click_accuracy():
    box = (10, 10, 20, 20)
    pts = [(10, 10), (20, 15), (20.01, 15), None, (15, 9.99)]
    # corner and right edge are inside (inclusive); just outside, None and above are misses -> 2/5
    assert click_accuracy(pts, [box] * 5) == approx(2 / 5)
    dets = [Detection("btn", point=(12, 12)), Detection("btn", bbox=(0, 0, 30, 30)), Detection("btn")]
    # point inside; box centre (15, 15) inside; nothing -> miss: 2/3
    assert click_accuracy(dets, [box] * 3) == approx(2 / 3)
    assert click_accuracy([], []) == 0.0
