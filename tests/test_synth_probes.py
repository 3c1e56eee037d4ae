"""Learnability probes (qwenvl.synth.probes): records agree with their pictures, go through the training data path
at 16 visual tokens, score exactly, and the CLI fails in one line on a missing file."""
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qwenvl.synth import COLOURS
from qwenvl.synth.probes import BACKGROUND, SIZE, SIZES, axis_accuracy, build, centre_guess, make_record, score


@pytest.mark.parametrize("task", ["colour", "side", "cell", "point", "point_sizes"])
def test_records_match_their_pictures(tmp_path, task):
    path = build(tmp_path, task, 30, seed=2, split="train")
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(recs) == 30
    for r in recs:
        m = r["meta"]
        img = np.asarray(Image.open(tmp_path / r["messages"][0]["content"][1]["image"]).convert("RGB"))
        W, H = m["picture"]
        assert img.shape == (H, W, 3) and (W, H) in (SIZES if task == "point_sizes" else [(SIZE, SIZE)])
        ys, xs = np.nonzero((img != np.array(BACKGROUND)).any(-1))  # the square's pixels
        assert (xs.max() - xs.min() + 1) == m["size"] == (ys.max() - ys.min() + 1)
        assert tuple(img[ys[0], xs[0]]) == COLOURS[m["colour"]]
        cx, cy = m["centre"]
        assert xs.min() + m["size"] // 2 == cx and ys.min() + m["size"] // 2 == cy
        answer = r["messages"][1]["content"]
        if task == "cell":  # the square fills exactly one merged token's 28 x 28 cell
            assert m["size"] == 28 and xs.min() % 28 == 0 and ys.min() % 28 == 0
        if task in ("side", "cell"):
            word = answer.removeprefix("It is ").rstrip(".")
            truth = {"left": cx < SIZE // 2, "right": cx >= SIZE // 2, "top": cy < SIZE // 2,
                     "bottom": cy >= SIZE // 2}
            assert truth[word] and min(abs(cx - SIZE // 2), abs(cy - SIZE // 2)) > 10
        elif task in ("point", "point_sizes"):
            assert answer == f"[{cx}, {cy}]"
        else:
            assert answer == f"It is {m['colour']}."


def test_point_sizes_vary_the_token_grid(tmp_path):
    """Every size is a whole number of merged tokens the processor keeps (no resize), at most 16 of them, and the
    pictures really vary: the probe exists to move the answer's distance from the picture."""
    from qwenvl.tiny import make_random_checkpoint
    import qwenvl
    from qwenvl.train.data import SFTData

    assert all(w % 28 == 0 and h % 28 == 0 and (w // 28) * (h // 28) <= 16 for w, h in SIZES)
    path = build(tmp_path, "point_sizes", 40, seed=0, split="train")
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    assert len({tuple(r["meta"]["picture"]) for r in recs}) >= 5
    vlm = qwenvl.load(make_random_checkpoint(tmp_path / "m", seed=0), pack=False)
    data = SFTData([path], vlm.processor)
    for i in range(5):
        W, H = recs[i]["meta"]["picture"]
        assert data[i].image_grid_thw.tolist() == [[1, H // 14, W // 14]]
    # a blind model answering each picture's own centre: the error is measured from that picture's centre
    rec = {"meta": {"centre": [10, 30], "picture": [56, 84]}}
    assert centre_guess([rec]) == (abs(10 - 28) + abs(30 - 42)) / 2


def test_train_and_heldout_differ_and_seeds_repeat(tmp_path):
    a = build(tmp_path / "a", "point", 5, seed=1, split="train").read_text()
    b = build(tmp_path / "b", "point", 5, seed=1, split="train").read_text()
    h = build(tmp_path / "h", "point", 5, seed=1, split="heldout").read_text()
    assert a.replace("/a/", "/") == b.replace("/b/", "/") and a != h


def test_records_load_as_16_visual_tokens(tmp_path):
    from qwenvl.tiny import make_random_checkpoint
    import qwenvl
    from qwenvl.train.data import SFTData

    vlm = qwenvl.load(make_random_checkpoint(tmp_path / "m", seed=0), pack=False)
    s = SFTData([build(tmp_path, "side", 3, seed=0, split="train")], vlm.processor)[0]
    assert s.image_grid_thw.tolist() == [[1, 8, 8]]  # 112 px = 8 patches = 4 x 4 merged tokens
    assert int((s.labels != -100).sum()) > 0


def test_score(tmp_path):
    (tmp_path / "media").mkdir()
    rng = random.Random(0)
    rec = make_record("side", rng, tmp_path, "x")
    while "left" not in rec["meta"]["answer"]:
        rec = make_record("side", rng, tmp_path, "x")
    assert score(rec, "It is left.") == 1.0 and score(rec, "It is right.") == 0.0
    assert score(rec, "It is leftish") == 0.0
    pt = {"meta": {"task": "probe_point", "centre": [10, 20]}}
    assert score(pt, "[14, 18]") == 3.0 and score(pt, "no idea") == SIZE


def test_cli_missing_file_is_one_line_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "qwenvl.synth.probes", "score", "-m", str(tmp_path), "--data",
                        str(tmp_path / "nope.jsonl")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "probes build" in r.stderr


def test_axis_accuracy_splits_columns_from_rows():
    recs = [{"meta": {"answer": f"It is {w}."}} for w in ("left", "right", "top", "bottom", "top")]
    assert axis_accuracy(recs, [1.0, 0.0, 1.0, 1.0, 0.0]) == {"accuracy_left_right": 0.5, "accuracy_top_bottom": 2 / 3}
    assert axis_accuracy(recs[2:], [1.0, 1.0, 1.0]) == {"accuracy_top_bottom": 1.0}


def test_when_clips_show_the_square_in_the_answered_second_only(tmp_path):
    """`when`: frames at 2 fps, the square in frames 2k and 2k + 1 only, the answer names k; the clip loads as one
    temporal patch per second with temporal MRoPE ids 2 apart; the score is the error in seconds."""
    from qwenvl.tiny import make_random_checkpoint
    import qwenvl
    from qwenvl.train.data import SFTData

    path = build(tmp_path, "when", 12, seed=4, split="train")
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    assert len({r["meta"]["seconds"] for r in recs}) > 3
    for r in recs:
        m, video = r["meta"], r["messages"][0]["content"][0]
        assert len(video["video"]) == 2 * m["seconds"] and video["fps"] == 2.0
        shown = [i for i, f in enumerate(video["video"])
                 if (np.asarray(Image.open(tmp_path / f).convert("RGB")) != np.array(BACKGROUND)).any()]
        assert shown == [2 * m["second"], 2 * m["second"] + 1]
        assert r["messages"][1]["content"] == f"It appears at {m['second']} seconds."
    vlm = qwenvl.load(make_random_checkpoint(tmp_path / "m", seed=0), pack=False)
    s = SFTData([path], vlm.processor)[0]
    assert s.video_grid_thw.tolist() == [[recs[0]["meta"]["seconds"], 4, 4]]  # 56 px frames: 2 x 2 merged tokens
    t = s.position_ids[0, s.input_ids == vlm.config.video_token_id].unique()
    assert (t[1:] - t[:-1]).tolist() == [2] * (recs[0]["meta"]["seconds"] - 1)
    rec = {"meta": {"task": "probe_when", "second": 7, "seconds": 12}}
    assert score(rec, "It appears at 9 seconds.") == 2.0 and score(rec, "It appears at 7 seconds.") == 0.0
    assert score(rec, "soon") == 12.0


def test_when_clips_are_scored_from_their_frame_lists(tmp_path):
    """Frame-list videos in a JSONL resolve against its directory (as single media paths do), so `score` runs on
    `when` clips end to end and reports the blind middle-of-the-clip error beside the model's."""
    from qwenvl.tiny import make_random_checkpoint
    import qwenvl
    from qwenvl.synth.evaluate import _absolute
    from qwenvl.synth.probes import evaluate

    path = build(tmp_path / "p", "when", 3, seed=1, split="heldout")
    rec = json.loads(path.read_text().splitlines()[0])
    video = _absolute(rec["messages"], path.parent)[0]["content"][0]["video"]
    assert all(Path(f).is_absolute() and Path(f).is_file() for f in video)
    assert _absolute([{"role": "user", "content": [{"type": "image", "image": "https://x/y.png"}]}],
                     tmp_path)[0]["content"][0]["image"] == "https://x/y.png"
    vlm = qwenvl.load(make_random_checkpoint(tmp_path / "m", seed=0))
    out = evaluate(vlm, path, n=3)
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    assert out["task"] == "probe_when" and out["n"] == 3 and 0.0 <= out["accuracy"] <= 1.0
    assert out["middle_guess_s"] == pytest.approx(
        sum(abs(r["meta"]["second"] - (r["meta"]["seconds"] - 1) / 2) for r in recs) / 3)
    assert out["mean_abs_error_s"] >= 0.0


def test_span_clips_show_the_square_over_the_answered_patches(tmp_path):
    """`span`: at 1, 2 or 4 fps the square fills whole temporal patches i..j-1, the answer (in the video-grounding
    task's words) gives their start and end in seconds, the temporal MRoPE ids step 2 per second at every rate, and
    the score is the temporal IoU; `evaluate` reports the blind middle-60 % answer beside the model's."""
    from qwenvl.tiny import make_random_checkpoint
    import qwenvl
    from qwenvl.synth.probes import evaluate
    from qwenvl.train.data import SFTData

    path = build(tmp_path, "span", 24, seed=6, split="train")
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    assert {r["meta"]["fps"] for r in recs} == {1.0, 2.0, 4.0}
    for r in recs:
        m, video = r["meta"], r["messages"][0]["content"][0]
        assert video["fps"] == m["fps"] and len(video["video"]) == m["duration"] * m["fps"]
        assert len(video["video"]) % 2 == 0 and 4 <= m["duration"] <= 24
        shown = [k for k, f in enumerate(video["video"])
                 if (np.asarray(Image.open(tmp_path / f).convert("RGB")) != np.array(BACKGROUND)).any()]
        t1, t2 = m["span"]
        assert shown == list(range(round(t1 * m["fps"]), round(t2 * m["fps"])))  # frame k shows at k / fps s
        assert shown[0] % 2 == 0 and len(shown) % 2 == 0 and 0 < t2 - t1 <= max(2 / m["fps"], m["duration"] / 2)
        assert r["messages"][1]["content"] == f"The given query happens in {t1:.1f} - {t2:.1f} seconds."
        assert f"'a {m['colour']} square appears'" in r["messages"][0]["content"][1]["text"]
    vlm = qwenvl.load(make_random_checkpoint(tmp_path / "m", seed=0), pack=False)
    data = SFTData([path], vlm.processor)
    for k in range(6):
        t = data[k].position_ids[0, data[k].input_ids == vlm.config.video_token_id].unique()
        patch_s = 2 / recs[k]["meta"]["fps"]
        assert (t[1:] - t[:-1]).tolist() == [round(2 * patch_s)] * (len(t) - 1)
    m = {"task": "probe_span", "span": [2.0, 6.0], "duration": 10.0}
    assert score({"meta": m}, "The given query happens in 2.0 - 6.0 seconds.") == 1.0
    assert score({"meta": m}, "The given query happens in 4.0 - 8.0 seconds.") == pytest.approx(2 / 6)
    assert score({"meta": m}, "soon") == 0.0
    held = build(tmp_path / "h", "span", 3, seed=1, split="heldout")
    out = evaluate(qwenvl.load(make_random_checkpoint(tmp_path / "m2", seed=0)), held, n=3)
    hrecs = [json.loads(x)["meta"] for x in held.read_text().splitlines()]
    blind = [score({"meta": h}, f"{0.2 * h['duration']} - {0.8 * h['duration']}") for h in hrecs]
    assert out["task"] == "probe_span" and out["blind_mean_iou"] == pytest.approx(sum(blind) / 3)
    assert 0.0 <= out["exact"] <= out["mean_iou"] + 1e-9 <= 1.0 + 1e-9


def test_span_named_clips_keep_the_other_square_in_every_frame(tmp_path):
    """`span_named`: a square of another colour, in the other half of the frame, shows in every frame; the named
    square shows over the answered span only, on either side."""
    path = build(tmp_path, "span_named", 16, seed=2, split="train")
    sides = set()
    for r in (json.loads(x) for x in path.read_text().splitlines()):
        m, video = r["meta"], r["messages"][0]["content"][0]
        assert m["other"] in COLOURS and m["other"] != m["colour"]
        for k, f in enumerate(video["video"]):
            img = np.asarray(Image.open(tmp_path / f).convert("RGB"))
            has = lambda c: (img == np.array(COLOURS[c])).all(-1)  # noqa: E731
            assert has(m["other"]).any()
            assert has(m["colour"]).any() == (m["span"][0] <= k / m["fps"] < m["span"][1])
            if has(m["colour"]).any():
                xs_named, xs_other = np.nonzero(has(m["colour"]))[1], np.nonzero(has(m["other"]))[1]
                assert xs_named.max() < xs_other.min() or xs_other.max() < xs_named.min()
                sides.add(bool(xs_named.max() < xs_other.min()))
    assert sides == {True, False}
