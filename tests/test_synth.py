"""qwenvl.synth: seeded synthetic tasks. Determinism, disjoint splits, answers that parse with qwenvl.tasks and map
back to the ground truth, unique referring expressions, processor acceptance (resized sizes as in meta), videos."""
import hashlib
import json
import math
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from qwenvl.synth import Ctx, generate, record_seed
from qwenvl.synth.build import TASKS, build_dataset, corpus_text, main
from qwenvl.synth.gui import TEXT_ONLY
from qwenvl.synth.shapes import phrase, resolve
from qwenvl.tasks import (FrameMap, parse_count, parse_document, parse_grounding, parse_key_values,
                          parse_ocr_lines, parse_points, parse_text_spotting, parse_time_spans, parse_tool_calls,
                          prompts)

ROOT = Path(__file__).resolve().parent.parent


def _tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    n = {t: 4 for t in TASKS}
    n["video_grounding"] = 3
    train = build_dataset(root, n_per_task=n, split="train", seed=0, curriculum=3)
    held = build_dataset(root, n_per_task=2, split="heldout", seed=0, curriculum=3)
    return root, train, held


def _by_task(records):
    out = {}
    for r in records:
        out.setdefault(r["meta"]["task"], []).append(r)
    return out


def _fm(meta) -> FrameMap:
    return FrameMap(tuple(meta["original"]), tuple(meta["resized"]))


def _user_text(rec) -> str:
    user = next(m for m in rec["messages"] if m["role"] == "user")
    return next(p["text"] for p in user["content"] if p["type"] == "text")


def _answer(rec) -> str:
    return rec["messages"][-1]["content"]


def _close(a, b, tol=1.0):
    assert len(a) == len(b) and all(abs(x - y) <= tol + 1e-9 for x, y in zip(a, b)), (a, b)


def _check_box(fm: FrameMap, label_box, gt_box):
    h, w = fm.resized
    x1, y1, x2, y2 = label_box
    assert 0 <= x1 < x2 <= w - 1 and 0 <= y1 < y2 <= h - 1, (label_box, fm.resized)
    _close(fm.box_to_model(gt_box, clip=False), label_box)  # the label is the gt in the model frame, +-1 px
    _close(fm.box_to_original(label_box), gt_box)  # and maps back to it (scales here are ~1)


# ------------------------------------------------------------------------------------------------ determinism


def test_same_seed_same_bytes(tmp_path):
    n = {t: 2 for t in TASKS}
    a = build_dataset(tmp_path / "a", n_per_task=n, split="train", seed=3, curriculum=1)
    b = build_dataset(tmp_path / "b", n_per_task=n, split="train", seed=3, curriculum=1)
    assert a == b
    ha, hb = _tree_hashes(tmp_path / "a"), _tree_hashes(tmp_path / "b")
    # one media file per record but the text-only ones (gui_copy), and the JSONL
    assert ha == hb and len(ha) == 1 + sum(r["meta"]["task"] not in TEXT_ONLY for r in a)
    # record i does not depend on how many records or which other tasks are built
    c = build_dataset(tmp_path / "c", n_per_task={"refer": 1, "video_grounding": 1}, split="train", seed=3,
                      curriculum=1)
    assert c == [r for r in a if r["meta"]["id"] in {"train/refer/3-000000", "train/video_grounding/3-000000"}]


def test_splits_disjoint(data):
    root, train, held = data
    assert {r["meta"]["seed"] for r in train}.isdisjoint({r["meta"]["seed"] for r in held})
    media = _tree_hashes(root / "media")
    tr = {h for k, h in media.items() if k.startswith("train/")}
    he = {h for k, h in media.items() if k.startswith("heldout/")}
    assert tr and he and tr.isdisjoint(he)
    assert record_seed("heldout", 0, 0) > record_seed("train", 10**6, 10**7 - 1)
    with pytest.raises(ValueError):
        record_seed("test", 0, 0)
    assert (root / "train.jsonl").read_text().count("\n") == len(train)


# ------------------------------------------------------------------------------------------------ answers


def test_grounding_answers(data):
    recs = _by_task(data[1] + data[2])
    for r in recs["detect"]:
        m, fm = r["meta"], _fm(r["meta"])
        assert _user_text(r) == prompts.detect("shape")
        dets = parse_grounding(_answer(r))
        assert [d.label for d in dets] == [o["label"] for o in m["objects"]]
        for d, o in zip(dets, m["objects"]):
            _check_box(fm, d.bbox, o["box"])
    for r in recs["count"]:
        m, fm = r["meta"], _fm(r["meta"])
        assert parse_count(_answer(r)) == m["count"] == len(m["objects"])
        for d, o in zip(parse_grounding(_answer(r)), m["objects"]):
            _check_box(fm, d.bbox, o["box"])
    assert any(len(r["meta"]["objects"]) > 2 for r in recs["detect"] + recs["count"])
    for r in recs["refer"]:
        m, fm = r["meta"], _fm(r["meta"])
        (d,) = parse_grounding(_answer(r))
        assert d.label == m["expression"][len("the "):] and _user_text(r) == prompts.refer(m["expression"])
        _check_box(fm, d.bbox, m["objects"][m["target"]]["box"])
    for r in recs["point"]:
        m, fm = r["meta"], _fm(r["meta"])
        (d,) = parse_points(_answer(r))
        h, w = fm.resized
        assert 0 <= d.point[0] <= w - 1 and 0 <= d.point[1] <= h - 1
        _close(fm.point_to_original(d.point), m["point"])
        x1, y1, x2, y2 = m["box"]
        assert x1 <= m["point"][0] <= x2 and y1 <= m["point"][1] <= y2


def test_referring_expressions_unique(data):
    recs = _by_task(data[1] + data[2])
    n_pos = 0
    for r in recs["refer"] + recs["point"]:
        m = r["meta"]
        assert phrase(m["expr"]) == m["expression"]
        assert resolve(m["expr"], m["objects"], tuple(m["original"])) == [m["target"]]
        n_pos += m["expr"]["position"] is not None
    # the resolver itself: two red circles side by side need a position word
    objs = [{"colour": "red", "shape": "circle", "box": [10, 10, 30, 30]},
            {"colour": "red", "shape": "circle", "box": [100, 10, 120, 30]},
            {"colour": "blue", "shape": "square", "box": [50, 80, 70, 100]}]
    assert resolve({"colour": "red", "shape": "circle", "position": None}, objs, (120, 160)) == [0, 1]
    assert resolve({"colour": "red", "shape": "circle", "position": "on the left"}, objs, (120, 160)) == [0]
    assert resolve({"colour": None, "shape": None, "position": "at the bottom"}, objs, (120, 160)) == [2]
    assert resolve({"colour": "red", "shape": "circle", "position": "at the top"}, objs, (120, 160)) == []


def test_text_answers(data):
    recs = _by_task(data[1] + data[2])
    for r in recs["read_text"]:
        assert parse_ocr_lines(_answer(r)) == [ln["text"] for ln in r["meta"]["lines"]]
        assert _user_text(r) == prompts.READ_TEXT
    for r in recs["spot_text"]:
        fm = _fm(r["meta"])
        items = parse_text_spotting(_answer(r))
        assert [t.text for t in items] == [ln["text"] for ln in r["meta"]["lines"]]
        for t, ln in zip(items, r["meta"]["lines"]):
            _check_box(fm, t.bbox, ln["box"])
    for r in recs["key_values"]:
        m = r["meta"]
        assert parse_key_values(_answer(r), m["keys"]) == m["values"]
        assert _user_text(r) == prompts.key_values({k: "" for k in m["keys"]})
        printed = {ln["text"] for ln in m["lines"]}
        assert {m["values"]["company"], m["values"]["address"], m["values"]["total"]} <= printed


def test_document_answers(data):
    for r in _by_task(data[1] + data[2])["document"]:
        m, fm = r["meta"], _fm(r["meta"])
        assert r["messages"][0] == {"role": "system", "content": prompts.DOCUMENT_SYSTEM}
        assert _user_text(r) == prompts.DOCUMENT_USER and _answer(r).startswith("```html\n<html><body>")
        blocks = parse_document(_answer(r))
        assert [(b.kind, b.text, b.rows) for b in blocks] == [(g["kind"], g["text"], g["rows"]) for g in m["blocks"]]
        for b, g in zip(blocks, m["blocks"]):
            _check_box(fm, b.bbox, g["box"])
        assert blocks[0].kind in ("h1", "h2") and any(b.kind == "p" for b in blocks)
    assert any(b["kind"] == "table" for r in data[1] if r["meta"]["task"] == "document" for b in r["meta"]["blocks"])


def test_gui_answers(data):
    for r in _by_task(data[1] + data[2])["computer_use"]:
        m, fm = r["meta"], _fm(r["meta"])
        h, w = fm.resized
        assert f"The screen's resolution is {w}x{h}." in r["messages"][0]["content"]
        assert _user_text(r).startswith(f"The user query: {m['instruction']}\n")
        assert r["messages"][-1]["content"].startswith('<tool_call>\n{"name": "computer_use"')
        (call,) = parse_tool_calls(_answer(r))
        assert call.name == "computer_use" and call.arguments["action"] == "left_click"
        x, y = call.arguments["coordinate"]
        assert 0 <= x <= w - 1 and 0 <= y <= h - 1
        px, py = fm.point_to_original((x, y))
        _close((px, py), m["point"])
        x1, y1, x2, y2 = m["box"]
        assert x1 <= px <= x2 and y1 <= py <= y2
        names = [(e["type"], e["name"]) for e in m["elements"]]
        assert len(names) == len(set(names))


def test_video_answers_and_files(data):
    import av

    root = data[0]
    vids = _by_task(data[1] + data[2])["video_grounding"]
    for r in vids:
        m = r["meta"]
        (part,) = [p for p in r["messages"][0]["content"] if p["type"] == "video"]
        assert 0.5 <= part["fps"] <= 4.0 and part["fps"] == m["fps"]
        assert _user_text(r) == prompts.video_grounding(m["query"])
        (span,) = parse_time_spans(_answer(r))
        _close((span.start, span.end), m["span"], 1e-6)
        assert _answer(r) == f"The given query happens in {m['span'][0]:.1f} - {m['span'][1]:.1f} seconds."
        assert 0 <= span.start < span.end <= m["duration"] and 4.0 <= m["duration"] <= 60.0 + 1e-9
        assert 10 <= m["native_fps"] <= 30
        with av.open(str(root / part["video"])) as c:
            s = c.streams.video[0]
            n = sum(1 for _ in c.decode(s))
            rate = Fraction(s.average_rate)
            assert (s.height, s.width) == tuple(m["original"])
        assert n == m["n_frames_total"] and rate == m["native_fps"]
        assert math.isclose(n / rate, m["duration"])
    assert any(r["meta"]["duration"] > 12 for r in vids)  # curriculum 3 clips run up to 60 s


def test_video_event_happens_in_its_span(data):
    """Decoded frames change exactly when the answer says: still before t1 (and after t2), different inside."""
    import av
    import numpy as np

    for r in _by_task(data[1] + data[2])["video_grounding"]:
        m = r["meta"]
        (part,) = [p for p in r["messages"][0]["content"] if p["type"] == "video"]
        with av.open(str(data[0] / part["video"])) as c:
            frames = [f.to_ndarray(format="rgb24").astype(np.int16) for f in c.decode(video=0)]
        t1, t2 = m["span"]
        times = [k / m["native_fps"] for k in range(len(frames))]
        before = [k for k, t in enumerate(times) if t < t1 - 1e-6]
        inside = [k for k, t in enumerate(times) if t1 + 1e-6 < t < t2 - 1e-6]
        after = [k for k, t in enumerate(times) if t > t2 + 1e-6]
        ref = frames[before[0]] if before else frames[after[-1]]

        def diff(k):  # pixels that changed clearly (codec noise stays far below 48 levels)
            return int((np.abs(frames[k] - ref).max(axis=2) > 48).sum())
        quiet = before if before else after
        assert max(diff(k) for k in quiet) < 10, m["event"]
        if m["event"] == "move":
            assert diff(inside[len(inside) // 2]) > 100
        else:
            assert min(diff(k) for k in inside) > 100, m["event"]
            if before and after:
                assert max(diff(k) for k in after) < 10


def test_curriculum_zero_is_one_object_small_images(tmp_path):
    recs = build_dataset(tmp_path, n_per_task={"detect": 6, "count": 3, "refer": 3}, seed=1, curriculum=0)
    for r in recs:
        assert len(r["meta"]["objects"]) == 1 and max(r["meta"]["original"]) <= 224
    assert all(_answer(r).endswith("There is 1 item in the image.") for r in recs if r["meta"]["task"] == "count")
    sizes = {tuple(r["meta"]["original"]) for r in recs}
    assert len(sizes) > 3 and any(h != w for h, w in sizes)


def test_one_size_and_max_side(tmp_path, capsys):
    """The curriculum's size knobs: --image-size renders every grounding scene at one size, --max-side caps the
    largest side; bad values are refused with a message that names the flag."""
    assert main(["--out", str(tmp_path / "a"), "--n", "4", "--tasks", "grounding", "--image-size", "112", "140"]) == 0
    recs = [json.loads(x) for x in (tmp_path / "a" / "train.jsonl").read_text().splitlines()]
    assert {tuple(r["meta"]["original"]) for r in recs} == {(112, 140)}
    for r in recs:
        for o in r["meta"]["objects"]:
            x1, y1, x2, y2 = o["box"]
            assert 0 <= x1 < x2 <= 140 and 0 <= y1 < y2 <= 112
    assert main(["--out", str(tmp_path / "b"), "--n", "12", "--tasks", "detect", "--max-side", "140"]) == 0
    sizes = [json.loads(x)["meta"]["original"] for x in (tmp_path / "b" / "train.jsonl").read_text().splitlines()]
    assert max(max(s) for s in sizes) <= 140 and len({tuple(s) for s in sizes}) > 2
    for bad in (["--image-size", "10", "112"], ["--max-side", "50"]):
        with pytest.raises(SystemExit):
            main(["--out", str(tmp_path / "c"), "--n", "1", *bad])
        assert bad[0] in capsys.readouterr().err


def test_short_gui_prompt_keeps_the_screen_and_the_answer(tmp_path):
    """--gui-prompt short swaps only the ~820-token tool prompt for a short system text that still states the
    screen size: same screenshot bytes, same user turn, same click."""
    for kind in ("tool", "short"):
        assert main(["--out", str(tmp_path), "--n", "3", "--tasks", "computer_use", "--seed", "9", "--name", kind,
                     "--gui-prompt", kind]) == 0
    full, short = ([json.loads(x) for x in (tmp_path / f"{k}.jsonl").read_text().splitlines()]
                   for k in ("tool", "short"))
    for f, s in zip(full, short):
        assert f["messages"][2] == s["messages"][2]
        assert f["messages"][1]["content"][0] == s["messages"][1]["content"][0]
        img_f, img_s = f["messages"][1]["content"][1]["image"], s["messages"][1]["content"][1]["image"]
        assert (tmp_path / img_f).read_bytes() == (tmp_path / img_s).read_bytes()
        rh, rw = s["meta"]["resized"]
        assert f"{rw}x{rh}" in s["messages"][0]["content"] and "computer_use" in s["messages"][0]["content"]
        assert len(s["messages"][0]["content"]) * 10 < len(f["messages"][0]["content"])
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--n", "1", "--tasks", "computer_use", "--gui-prompt", "tiny"])


def test_named_files_in_one_folder_keep_their_own_media(tmp_path):
    """Two builds into one folder with the same seed but other settings (picture size, video fps) must not
    overwrite each other's pictures: a named file's media live under media/<name>/."""
    from PIL import Image

    for side in (112, 224):
        assert main(["--out", str(tmp_path), "--n", "2", "--tasks", "refer", "--split", "heldout", "--seed", "3",
                     "--image-size", str(side), str(side), "--name", f"h{side}"]) == 0
    for side in (112, 224):
        for line in (tmp_path / f"h{side}.jsonl").read_text().splitlines():
            r = json.loads(line)
            img = r["messages"][0]["content"][1]["image"]
            assert img.startswith(f"media/h{side}/refer/")
            assert Image.open(tmp_path / img).size == (side, side) and r["meta"]["original"] == [side, side]
    assert main(["--out", str(tmp_path), "--n", "1", "--tasks", "refer"]) == 0  # unnamed: media/<split>/
    assert json.loads((tmp_path / "train.jsonl").read_text())["messages"][0]["content"][1]["image"].startswith(
        "media/train/refer/")


def test_small_max_pixels_resizes_labels(tmp_path):
    """With a pixel cap below the image area the model frame is smaller than the image: labels still land
    inside it and map back to the ground truth within one model pixel."""
    ctx = Ctx(tmp_path, curriculum=2, min_pixels=3136, max_pixels=64 * 28 * 28)
    for i in range(4):
        r = generate("detect", ctx, 0, i)
        fm = _fm(r["meta"])
        assert fm.resized[0] * fm.resized[1] <= 64 * 28 * 28
        for d, o in zip(parse_grounding(_answer(r)), r["meta"]["objects"]):
            x1, y1, x2, y2 = d.bbox
            assert 0 <= x1 < x2 <= fm.resized[1] - 1 and 0 <= y1 < y2 <= fm.resized[0] - 1
            _close(fm.box_to_model(o["box"], clip=False), d.bbox)


# ------------------------------------------------------------------------------------------------ processor


def test_processor_accepts_records(data, tmp_path):
    import qwenvl
    from qwenvl.tiny import make_random_checkpoint
    from qwenvl.train.data import SFTData

    root, train, _ = data
    frames = build_dataset(tmp_path, n_per_task={"video_grounding": 1}, seed=5, curriculum=0,
                           video_format="frames")
    proc = qwenvl.load(make_random_checkpoint(tmp_path / "ckpt")).processor
    ds = SFTData(root / "train.jsonl", proc)
    assert len(ds) == len(train)
    seen = set()
    for i, rec in enumerate(train):
        task = rec["meta"]["task"]
        if task in seen:
            continue
        seen.add(task)
        s = ds[i]
        assert s.num_loss_tokens > 0 and s.num_tokens == ds.token_count(i)
        if task in TEXT_ONLY:
            assert s.image_grid_thw is None and s.video_grid_thw is None
        else:
            _check_grid(s, rec["meta"])
    assert seen == set(TASKS)
    fds = SFTData(tmp_path / "train.jsonl", proc)
    (rec,) = frames
    assert isinstance(rec["messages"][0]["content"][0]["video"], list)
    _check_grid(fds[0], rec["meta"])


def _check_grid(s, meta):
    h, w = meta["resized"]
    if meta["task"] == "video_grounding":
        t, gh, gw = s.video_grid_thw[0].tolist()
        assert (gh * 14, gw * 14) == (h, w) and 2 * t == meta["nframes"]
        # the MRoPE time step: seconds per temporal patch = 2 / sampled fps
        fps = meta["fps"] if meta["format"] == "frames" else \
            meta["nframes"] / meta["n_frames_total"] * meta["native_fps"]
        assert math.isclose(float(s.second_per_grid_ts[0]), 2 / fps, rel_tol=1e-5)
    else:
        assert s.image_grid_thw is not None
        _, gh, gw = s.image_grid_thw[0].tolist()
        assert (gh * 14, gw * 14) == (h, w)


# ------------------------------------------------------------------------------------------------ corpus, CLI, lint


def test_corpus_text(data):
    train = data[1]
    text = corpus_text(train)
    for r in train[:12]:
        assert _answer(r) in text and _user_text(r) in text
    assert len(corpus_text(train, unique=True)) < len(text)  # the tool system prompt repeats


def test_cli(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--n", "1", "--split", "heldout", "--tasks", "grounding,document",
                 "--corpus", str(tmp_path / "corpus.txt")]) == 0
    lines = (tmp_path / "heldout.jsonl").read_text().splitlines()
    assert [json.loads(x)["meta"]["task"] for x in lines] == ["detect", "refer", "point", "count", "document"]
    assert "Outline the position" in (tmp_path / "corpus.txt").read_text()
    assert "wrote 5 records" in capsys.readouterr().out


def test_pyflakes_clean():
    files = [str(p) for p in (ROOT / "qwenvl" / "synth").glob("*.py")] + [__file__]
    out = subprocess.run([sys.executable, "-m", "pyflakes", *files], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert all(len((ROOT / "qwenvl" / "synth" / f).read_text().splitlines()) < 400
               for f in ("__init__.py", "shapes.py", "text.py", "documents.py", "video.py", "gui.py", "build.py"))
