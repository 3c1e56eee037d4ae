"""The benchmark runner (qwenvl.tasks.evaluate, `qwenvl eval`): every task re-scored from recorded answers against
hand-computed values, with coordinates mapped back from the resized frame; end to end on a tiny random model;
one-line CLI errors."""
import json
import math
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from qwenvl import cli_eval
from qwenvl.tasks import evaluate as E
from qwenvl.tiny import make_random_checkpoint

# 1000 x 700 (w x h) is not a multiple of 28; with max_pixels = 256*28*28 smart_resize gives 532 x 364 (w x h):
# h: 700 / sqrt(700000 / 200704) = 374.8 -> floor to 13 * 28 = 364; w: 535.5 -> 19 * 28 = 532.
BIG = (1000, 700)
RESIZED = (364, 532)  # (h, w)
OPTS = {"max_pixels": 256 * 28 * 28}
SX, SY = 1000 / 532, 700 / 364


def orig_box(x1, y1, x2, y2):
    """A model-frame box as original pixels."""
    return [x1 * SX, y1 * SY, x2 * SX, y2 * SY]


def jbox(*b):
    return '```json\n[{"bbox_2d": [%s], "label": "x"}]\n```' % ", ".join(map(str, b))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return str(make_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", seed=0))


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (BIG[1], BIG[0], 3), dtype=np.uint8)).save(d / "big.png")
    Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)).save(d / "small.png")
    write_video(d / "clip.mp4", nframes=40, fps=10)  # 4 s
    return d


def write_video(path, nframes, fps, w=64, h=48):
    c = av.open(str(path), "w")
    s = c.add_stream("libx264", rate=Fraction(fps))
    s.width, s.height, s.pix_fmt = w, h, "yuv420p"
    s.options = {"crf": "0", "preset": "ultrafast"}
    for i in range(nframes):
        a = np.full((h, w, 3), (37 * i) % 200 + 20, np.uint8)
        for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def replay_run(ckpt, media, task, rows, answers, **kw):
    """Write data + answers next to the media, replay, return (scores, predictions by id)."""
    data = write_jsonl(media / f"{task}.jsonl", rows)
    rec = write_jsonl(media / f"{task}-answers.jsonl", [{"id": k, "text": v} for k, v in answers.items()])
    out = media / f"out-{task}"
    scores = E.evaluate(ckpt, task, data, out_dir=out, replay=rec, batch_size=3, progress=False,
                        generate_options=kw.pop("generate_options", OPTS), **kw)
    assert json.loads((out / "scores.json").read_text()) == scores
    preds = [json.loads(ln) for ln in (out / "predictions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in preds] == [r.get("id") for r in rows]
    return scores, {p["id"]: p for p in preds}


# ---------------------------------------------------------------------------------------------- replayed tasks


def test_refcoco_replay_maps_boxes_to_the_original(ckpt, media):
    rows = [{"id": "exact", "image": "big.png", "expression": "the cat", "bbox": orig_box(100, 50, 300, 200)},
            # shifted by half its width in the model frame: IoU 1/3 (scaling both axes keeps IoU)
            {"id": "third", "image": str(media / "big.png"), "expression": "a dog", "bbox": orig_box(200, 50, 400, 200)},
            {"id": "wrong", "image": "big.png", "expression": "the sky", "bbox": [600, 400, 900, 650]},
            {"id": "junk", "image": "big.png", "expression": "a cup", "bbox": [10, 10, 20, 20]}]
    answers = {"exact": jbox(100, 50, 300, 200), "third": '[{"bbox_2d": [100, 50, 300, 200]}]',
               "wrong": jbox(0, 0, 50, 50), "junk": "I cannot find it."}
    scores, p = replay_run(ckpt, media, "refcoco", rows, answers)
    assert scores["task"] == "refcoco" and scores["n"] == 4 and scores["failed"] == 1
    assert scores["metrics"]["acc@0.5"] == 0.25
    assert scores["metrics"]["miou"] == pytest.approx((1 + 1 / 3) / 4)
    assert p["exact"]["media"][0]["original_size"] == [700, 1000] and p["exact"]["media"][0]["resized_size"] == [364, 532]
    assert p["exact"]["parsed"]["bbox"] == pytest.approx(orig_box(100, 50, 300, 200), abs=0.01)
    assert p["exact"]["score"] == pytest.approx(1.0) and p["third"]["score"] == pytest.approx(1 / 3)
    assert p["junk"]["error"] == "no valid boxes or points found" and p["junk"]["parsed"] is None
    assert p["junk"]["text"] == "I cannot find it." and p["exact"]["prompt"] == \
        "Locate the cat in this image and output the bbox coordinates in JSON format."
    assert scores["model"] == ckpt and scores["settings"]["max_pixels"] == OPTS["max_pixels"]


def test_detection_replay_coco_map(ckpt, media):
    rows = [{"id": 1, "image": "big.png", "categories": ["cat", "dog"],
             "objects": [{"label": "cat", "bbox": orig_box(100, 50, 300, 200)},
                         {"label": "dog", "bbox": orig_box(350, 100, 450, 300)}]},
            {"id": 2, "image": "big.png", "categories": ["cat", "dog"],
             "objects": [{"label": "cat", "bbox": [10, 10, 200, 200]}]}]
    answers = {1: '[{"bbox_2d": [100, 50, 300, 200], "label": "cats"}, {"bbox_2d": [350, 100, 450, 300], '
                  '"label": "Dog"}]', 2: "nothing here"}
    scores, p = replay_run(ckpt, media, "detection", rows, answers)
    # cat: 2 gts, one found at precision 1 -> recall 0.5 -> 51 of the 101 recall points; dog: AP 1
    m = scores["metrics"]
    assert m["map"] == pytest.approx((51 / 101 + 1) / 2) and m["ap50"] == m["map"] and m["ap75"] == m["map"]
    assert m["per_category"] == pytest.approx({"cat": 51 / 101, "dog": 1.0})
    assert [d["category"] for d in p[1]["parsed"]] == ["cat", "dog"] and p[2]["error"] and scores["failed"] == 1
    assert p[1]["prompt"] == "Outline the position of each cat, dog and output all the coordinates in JSON format."


def test_counting_replay(ckpt, media):
    rows = [{"id": "a", "image": "small.png", "category": "cats", "count": 3},
            {"id": "b", "image": "small.png", "category": "dogs", "count": 5},
            {"id": "c", "image": "small.png", "question": "How many birds are there?", "count": 2},
            {"id": "d", "image": "small.png", "category": "cups", "count": 1}]
    answers = {"a": '[{"bbox_2d": [1, 2, 3, 4], "label": "cat"}]\nThere are 3 cats in the image.',
               "b": "There are four dogs.", "c": '[{"bbox_2d": [1, 2, 3, 4]}, {"bbox_2d": [5, 6, 7, 8]}]',
               "d": "no idea"}
    scores, p = replay_run(ckpt, media, "counting", rows, answers)
    assert scores["metrics"] == {"accuracy": 0.5} and scores["failed"] == 1
    assert [p[k]["parsed"] for k in "abc"] == [{"count": 3}, {"count": 4}, {"count": 2}]
    assert p["c"]["prompt"] == "How many birds are there?" and p["a"]["prompt"].startswith(
        "Please first output bbox coordinates and names of every cats")


def test_temporal_replay(ckpt, media):
    rows = [{"id": "x", "video": "clip.mp4", "query": "a person opens a door", "span": [1.0, 3.0]},
            {"id": "y", "video": "clip.mp4", "query": "someone sits", "span": [0, 2], "fps": 4},
            {"id": "z", "video": "clip.mp4", "query": "lights go off", "span": [2, 4]}]
    answers = {"x": "The event happens from 1.0 to 3.0 seconds.", "y": "from 1 to 3 seconds", "z": "no clue"}
    scores, p = replay_run(ckpt, media, "temporal", rows, answers, generate_options={})
    assert scores["metrics"] == pytest.approx({"miou": 4 / 9, "r@0.3": 2 / 3, "r@0.5": 1 / 3, "r@0.7": 1 / 3})
    assert p["y"]["parsed"] == {"span": [1.0, 3.0]} and p["z"]["error"] and scores["failed"] == 1
    assert p["x"]["media"][0]["kind"] == "video" and p["y"]["media"][0]["sample_fps"] == pytest.approx(4.0)
    assert p["x"]["prompt"] == "Give the query: 'a person opens a door', when does the described content occur in the video?"


def test_docvqa_replay(ckpt, media):
    rows = [{"id": 1, "image": "small.png", "question": "What is the total?", "answers": ["42.50 USD"]},
            {"id": 2, "image": "small.png", "question": "Which city?", "answers": ["Paris", "paris france"]},
            {"id": 3, "image": "small.png", "question": "Title?", "answers": ["Total"]}]
    answers = {1: " 42.50  usd ", 2: "Pariss", 3: "Something else entirely"}
    scores, p = replay_run(ckpt, media, "docvqa", rows, answers)
    assert scores["metrics"]["anls"] == pytest.approx((1 + 5 / 6 + 0) / 3) and scores["failed"] == 0
    assert p[1]["prompt"] == "What is the total?\nAnswer the question using a single word or phrase."


def test_ocr_replay_and_missing_answers(ckpt, media):
    rows = [{"id": 1, "image": "small.png", "text": "Hello world\nLine two"},
            {"id": 2, "image": "small.png", "text": "abcd"},
            {"id": 3, "image": "small.png", "text": "never answered"}]
    answers = {1: "Hello world\n\n  Line two  ", 2: "```\nabce\n```"}
    scores, p = replay_run(ckpt, media, "ocr", rows, answers)
    assert scores["metrics"]["edit_distance"] == pytest.approx((0 + 1 / 4 + 1) / 3)
    assert p[3]["error"] == "no recorded answer for this id" and p[3]["text"] is None and scores["failed"] == 1


def test_screenspot_replay_clicks(ckpt, media):
    def click(x, y):
        return ('<tool_call>\n{"name": "computer_use", "arguments": {"action": "left_click", "coordinate": [%s, %s]}}'
                '\n</tool_call>' % (x, y))
    rows = [{"id": "ok", "image": "big.png", "instruction": "click OK", "bbox": [480, 330, 520, 370]},
            {"id": "miss", "image": "big.png", "instruction": "click X", "bbox": [0, 0, 100, 100],
             "bbox_format": "xywh"},
            {"id": "pt", "image": "big.png", "instruction": "click the logo", "bbox": [40, 30, 20, 10],
             "bbox_format": "xywh"},
            {"id": "none", "image": "big.png", "instruction": "click Y", "bbox": [0, 0, 10, 10]}]
    # model frame (266, 182) -> original (500, 350), inside [480, 330, 520, 370]; unmapped it would miss
    answers = {"ok": click(266, 182), "miss": click(100, 100), "pt": '{"point_2d": [26, 18]}', "none": "hmm"}
    scores, p = replay_run(ckpt, media, "screenspot", rows, answers)
    assert scores["metrics"] == {"accuracy": 0.5} and scores["failed"] == 1
    assert p["ok"]["parsed"] == {"point": [500.0, 350.0], "via": "tool_call"} and p["ok"]["score"] == 1.0
    assert p["pt"]["parsed"]["via"] == "grounding" and p["pt"]["score"] == 1.0 and p["miss"]["score"] == 0.0
    # the tool description states the frame the processor resizes the screenshot to
    from qwenvl.tasks.evaluate import TASKS, _Ctx, _ProcessorOnly, load_items
    item = load_items("screenspot", media / "screenspot.jsonl")[0]
    conv = TASKS["screenspot"].conversation(item, _Ctx(_ProcessorOnly(Path(ckpt)).processor, OPTS))
    assert "The screen's resolution is 532x364." in conv[0]["content"]
    assert conv[1]["content"][0] == {"type": "text", "text": "click OK"}


# ---------------------------------------------------------------------------------------------- validation, CLI


def test_task_names_match():
    assert tuple(E.TASKS) == cli_eval.TASK_NAMES


def test_match_label():
    cats = ["traffic light", "bus", "berry"]
    assert E.match_label("Traffic_Light", cats) == "traffic light"
    assert E.match_label("buses", cats) == "bus" and E.match_label("berries", cats) == "berry"
    assert E.match_label("cat", cats) is None and E.match_label("anything", ["fish"]) == "fish"


@pytest.mark.parametrize("row, field", [
    ({"id": 2, "image": "small.png", "expression": "x"}, "bbox"),
    ({"id": 2, "image": "nope.png", "expression": "x", "bbox": [1, 2, 3, 4]}, "image"),
    ({"id": 2, "image": "small.png", "expression": "", "bbox": [1, 2, 3, 4]}, "expression"),
    ({"id": 2, "image": "small.png", "expression": "x", "bbox": [3, 2, 1, 4]}, "bbox"),
    ({"id": 1, "image": "small.png", "expression": "x", "bbox": [1, 2, 3, 4]}, "id"),
])
def test_data_errors_name_file_line_and_field(media, row, field):
    good = {"id": 1, "image": "small.png", "expression": "x", "bbox": [1, 2, 3, 4]}
    f = write_jsonl(media / "bad.jsonl", [good, row])
    with pytest.raises(E.EvalDataError) as ei:
        E.load_items("refcoco", f)
    assert ei.value.line == 2 and ei.value.field == field and str(ei.value).startswith(f"{f}:2: field '{field}'")


def test_cli_errors_are_one_line(media, ckpt, capsys):
    good = {"id": 1, "image": "small.png", "expression": "x", "bbox": [1, 2, 3, 4]}
    f = write_jsonl(media / "bad.jsonl", [good, {"id": 2, "image": "small.png", "bbox": [1, 2, 3, 4]}])
    assert cli_eval.main(["-m", ckpt, "--task", "refcoco", "--data", str(f), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{f}:2: field 'expression': missing" in err
    assert cli_eval.main(["-m", ckpt, "--task", "vqa", "--data", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unknown task 'vqa'" in err
    (media / "notjson.jsonl").write_text(json.dumps(good) + "\n{oops\n")
    assert cli_eval.main(["-m", ckpt, "--task", "refcoco", "--data", str(media / "notjson.jsonl")]) == 2
    assert "notjson.jsonl:2: invalid JSON" in capsys.readouterr().err


def test_module_cli_when_registered(media, ckpt):
    from qwenvl import cli
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    if "eval" not in sub.choices:
        pytest.skip("qwenvl.cli does not register `eval` yet")
    r = subprocess.run([sys.executable, "-m", "qwenvl", "eval", "-m", ckpt, "--task", "nope", "--data",
                        str(media / "x.jsonl")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "unknown task 'nope'" in r.stderr


# ---------------------------------------------------------------------------------------------- end to end


def _in_unit(v):
    return isinstance(v, float) and math.isfinite(v) and 0.0 <= v <= 1.0


def test_end_to_end_refcoco_tiny_model(ckpt, media, tmp_path):
    rows = [{"id": i, "image": "small.png", "expression": e, "bbox": [5, 5, 40, 30]}
            for i, e in enumerate(["the red ball", "a blue square", "the cat"])]
    data = write_jsonl(media / "e2e-refcoco.jsonl", rows)
    scores = E.evaluate(ckpt, "refcoco", data, out_dir=tmp_path / "o", batch_size=2, progress=False,
                        generate_options={"max_new_tokens": 6})
    assert scores["n"] == 3 and all(_in_unit(v) for v in scores["metrics"].values())
    preds = [json.loads(ln) for ln in (tmp_path / "o" / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 3 and all(isinstance(p["text"], str) and p["finish_reason"] in ("stop", "length")
                                   for p in preds)
    assert scores["failed"] == sum(p["error"] is not None for p in preds)  # gibberish: recorded, not raised
    assert all(p["usage"]["completion_tokens"] <= 6 for p in preds)
    # replaying the recorded answers gives the same scores
    again = E.evaluate(ckpt, "refcoco", data, replay=tmp_path / "o" / "predictions.jsonl", progress=False)
    assert again["metrics"] == scores["metrics"] and again["failed"] == scores["failed"]


def test_end_to_end_temporal_cli(ckpt, media, tmp_path, capsys):
    rows = [{"id": "v1", "video": "clip.mp4", "query": "the screen flashes", "span": [0.5, 2.0], "fps": 2},
            {"id": "v2", "video": "clip.mp4", "query": "it gets darker", "span": [2.0, 4.0]}]
    data = write_jsonl(media / "e2e-temporal.jsonl", rows)
    out = tmp_path / "t"
    rc = cli_eval.main(["-m", ckpt, "--task", "temporal", "--data", str(data), "--out", str(out), "--max-new-tokens",
                        "6", "--max-pixels", str(128 * 28 * 28), "--batch-size", "2", "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    line = cap.out.strip()
    assert "\n" not in line
    scores = json.loads(line)
    assert scores == json.loads((out / "scores.json").read_text())
    assert scores["n"] == 2 and set(scores["metrics"]) == {"miou", "r@0.3", "r@0.5", "r@0.7"}
    assert all(_in_unit(v) for v in scores["metrics"].values())
    assert scores["settings"]["video_max_pixels"] == 128 * 28 * 28 and scores["settings"]["max_new_tokens"] == 6
    preds = [json.loads(ln) for ln in (out / "predictions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in preds] == ["v1", "v2"] and preds[0]["media"][0]["kind"] == "video"
