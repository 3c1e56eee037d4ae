"""The embedded-model report: metrics are exact on hand-made answers (independent of model quality), and the
command runs end to end on a small held-out subset, naming itself and reproducing its numbers."""
import json

import pytest

from qwenvl.synth.build import build_dataset
from qwenvl.synth.curve import sparkline
from qwenvl.synth.report import METRICS, aggregate, main, observe
from qwenvl.tasks.coords import FrameMap


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("heldout")
    return d, build_dataset(d, n_per_task=2, split="heldout", seed=5, curriculum=1)


def _by(records, task):
    return [r for r in records if r["meta"]["task"] == task]


def _agg(records, answer):
    return aggregate([observe(r, answer(r)) for r in records])


def test_reference_answers_are_perfect(data):
    _, recs = data
    agg = _agg(recs, lambda r: r["messages"][-1]["content"])
    assert set(agg) == {k for k, *_ in METRICS}
    for key, *_, higher in METRICS:
        if key not in ("detect_map", "grounding_miou"):  # answers are rounded to whole pixels
            assert agg[key][0] == pytest.approx(1.0 if higher else 0.0), key
    assert agg["detect_map"][0] > 0.6 and agg["grounding_miou"][0] > 0.8


def test_exact_answers_from_ground_truth(data):
    """Unrounded boxes in the model frame: mAP@[.5:.95] and IoU are 1; whitespace does not break OCR match."""
    _, recs = data

    def exact(r):
        m = r["meta"]
        f = FrameMap(tuple(m["original"]), tuple(m["resized"]))
        objs = m["objects"] if m["task"] == "detect" else [m["objects"][m["target"]]]
        return json.dumps([{"bbox_2d": list(f.box_to_model(o["box"], clip=False)), "label": o["label"]}
                           for o in objs])
    agg = _agg(_by(recs, "detect") + _by(recs, "refer"), exact)
    assert agg["detect_map"][0] == pytest.approx(1.0) and agg["grounding_miou"][0] == pytest.approx(1.0)
    ocr = _by(recs, "read_text")
    agg = _agg(ocr, lambda r: "  " + "\n\n".join(x["text"] for x in r["meta"]["lines"]) + " \n")
    assert agg["ocr_exact"][0] == 1.0


def test_wrong_and_junk_answers_score_zero(data):
    _, recs = data
    agg = _agg(recs, lambda r: "I am not sure.")
    for key, *_, higher in METRICS:
        if key == "ocr_1ned":
            assert agg[key][0] < 0.5
        else:
            assert agg[key][0] == (0.0 if higher else 1.0), key
    obs = [observe(r, "[{\"bbox_2d\": [0, 0, 2, 2], \"label\": \"x\"}]") for r in _by(recs, "refer")]
    assert aggregate(obs)["grounding_acc"][0] == 0.0 and all(o["error"] is None for o in obs)
    count = _by(recs, "count")
    assert _agg(count, lambda r: f"There are {r['meta']['count'] + 1} items.")["count_acc"][0] == 0.0
    assert _agg(count, lambda r: f"There are {r['meta']['count']} items.")["count_acc"][0] == 1.0
    vid = _by(recs, "video_grounding")
    far = _agg(vid, lambda r: f"It happens in {r['meta']['duration'] + 10:.1f} - {r['meta']['duration'] + 20:.1f} "
                              "seconds.")
    assert far["temporal_miou"][0] == 0.0
    spot = _by(recs, "spot_text")  # right boxes, wrong text: no match
    wrong = _agg(spot, lambda r: r["messages"][-1]["content"].replace('"text_content": "', '"text_content": "zz'))
    assert wrong["spot_f1"][0] == 0.0
    kv = _by(recs, "key_values")
    half = _agg(kv, lambda r: json.dumps({k: (v if i % 2 == 0 else "nope")
                                          for i, (k, v) in enumerate(r["meta"]["values"].items())}))
    assert 0.0 < half["kv_acc"][0] < 1.0


def test_click_outcomes_tell_reading_from_layout(data):
    """A click on another element of the named kind means the layout was read but not the label; the report's
    kind-only baseline is 1 / (elements of that kind)."""
    from qwenvl.synth.gui import click_answer
    from qwenvl.synth.evaluate import click_outcome

    _, recs = data
    for r in _by(recs, "computer_use"):
        m = r["meta"]
        f = FrameMap(tuple(m["original"]), tuple(m["resized"]))
        els, kind = m["elements"], m["elements"][m["target"]]["type"]

        def at(e):
            b = e["box"]
            return click_answer(*f.point_label(((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)))
        assert observe(r, at(els[m["target"]]))["outcome"] == "target"
        for i, e in enumerate(els):
            if i != m["target"] and not any(e["box"] == o["box"] for o in els[:i]):
                want = "same kind" if e["type"] == kind else "other kind"
                assert observe(r, at(e))["outcome"] == want
        assert click_outcome(m, (-5.0, -5.0)) == "no element"
        o = observe(r, "no tool call here")
        assert o["outcome"] == "no answer" and o["kind_chance"] == 1 / sum(e["type"] == kind for e in els)


def test_blind_video_answer_scores_the_middle_of_each_clip(data):
    """The report's blind line: every video record carries the IoU of BLIND_SPAN's fractions of its clip, whatever
    the model answered, and answering exactly that span scores the same IoU."""
    from qwenvl.synth.report import BLIND_SPAN, blind_span
    from qwenvl.synth.video import answer_text
    from qwenvl.tasks.metrics import temporal_iou

    _, recs = data
    vids = _by(recs, "video_grounding")
    assert vids
    for r in vids:
        m = r["meta"]
        lo, hi = blind_span(m)
        assert (lo, hi) == pytest.approx((BLIND_SPAN[0] * m["duration"], BLIND_SPAN[1] * m["duration"]))
        want = temporal_iou([lo, hi], m["span"])
        for answer in (r["messages"][-1]["content"], "no time here", answer_text(lo, hi)):
            assert observe(r, answer)["blind"] == pytest.approx(want)
        assert observe(r, answer_text(lo, hi))["score"] == pytest.approx(want, abs=0.05)  # answers round to 0.1 s


def test_partial_r_takes_the_clip_length_out():
    """partial_r against numpy's own least squares and Pearson r; answers sized to the clip alone have no
    partial correlation left (None), exact answers have 1, and n < 3 is undefined."""
    import numpy as np

    from qwenvl.synth.report import partial_r

    rng = np.random.default_rng(0)
    z = rng.uniform(4, 24, 40)
    y = rng.uniform(0, 0.5, 40) * z
    x = 0.3 * z + 0.5 * y + rng.normal(0, 0.5, 40)

    def res(v):
        return v - np.polyval(np.polyfit(z, v, 1), z)

    want = np.corrcoef(res(x), res(y))[0, 1]
    assert partial_r(list(x), list(y), list(z)) == pytest.approx(want, abs=1e-9)
    assert partial_r(list(y), list(y), list(z)) == pytest.approx(1.0)
    assert partial_r(list(-y), list(y), list(z)) == pytest.approx(-1.0)
    assert partial_r(list(0.2 * z + 1), list(y), list(z)) is None  # a span scaled to the clip follows no event
    assert partial_r([1.0, 2.0], [1.0, 2.0], [3.0, 4.0]) is None


def test_span_following_uses_parsed_answers_and_the_clip_length(data):
    """The report's event line: truth answers follow the event (r = 1 when the starts vary beyond the clip's
    length), unparsed answers are left out, and answers sized to the clip give undefined r."""
    from qwenvl.synth.report import span_following
    from qwenvl.synth.video import answer_text

    _, recs = data
    vids = _by(recs, "video_grounding")
    obs = [observe(r, r["messages"][-1]["content"]) for r in vids] * 3
    for k, o in enumerate(obs):  # spread the truth so the fit has residuals, as a big held-out set would
        o = obs[k] = {**o, "gt": [o["gt"][0] + 0.37 * k, o["gt"][1] + 0.11 * k * k],
                      "duration": o["duration"] + (k % 3)}
        o["pred"] = list(o["gt"])
    rs, re_, n = span_following(obs + [{**obs[0], "pred": None}])
    assert n == len(obs) and rs == pytest.approx(1.0) and re_ == pytest.approx(1.0)
    sized = [{**o, "pred": [0.2 * o["duration"], 0.8 * o["duration"]]} for o in obs]
    assert span_following(sized) == (None, None, len(obs))
    assert observe(vids[0], answer_text(1.0, 2.0))["duration"] == vids[0]["meta"]["duration"]


def test_missing_markdown_file_is_a_clear_error(data, tmp_path):
    d, _ = data
    for flag in ("--gaps", "--notes", "--claims"):
        with pytest.raises(SystemExit, match=f"error: {flag} .*nope.md: no such file"):
            main(["--heldout", str(d / "heldout.jsonl"), flag, str(tmp_path / "nope.md"), "--out",
                  str(tmp_path / "r.md")])


def test_sparkline():
    assert sparkline([8.0, 4.0, 2.0, 1.0], width=4) == "█▆▃▁"
    assert sparkline([]) == ""


def test_report_command_end_to_end(data, tmp_path):
    from qwenvl.tiny import make_random_checkpoint

    d, _ = data
    ckpt = make_random_checkpoint(tmp_path / "ckpt")
    runs = []
    for k, (a, b) in enumerate([(1, 30), (31, 45)]):
        p = tmp_path / f"metrics{k}.jsonl"
        p.write_text("".join(json.dumps({"step": s, "loss": 6.0 / s, "lr": 1e-3, "samples": 8, "tokens": 512,
                                         "seconds": 0.5}) + "\n" for s in range(a, b + 1)))
        runs.append(p)
    notes = tmp_path / "notes.md"
    notes.write_text("Run 1: lr 1e-3, curriculum 0.\n")
    gaps = tmp_path / "gaps.md"
    gaps.write_text("- **OCR**: read more.\n")
    claim = tmp_path / "claim.md"
    claim.write_text("#### A claim\n\n| x | y |\n|---|---|\n| 1 | 2 |\n")
    out = tmp_path / "docs" / "report.md"
    argv = ["-m", str(ckpt), "--heldout", str(d / "heldout.jsonl"), "--per-task", "1", "--max-new-tokens", "6",
            "--metrics", str(runs[0]), "--metrics", str(runs[1]), "--notes", str(notes), "--gaps", str(gaps), "--claims", str(claim), "--out", str(out),
            "--json", str(tmp_path / "r.json")]
    assert main(argv) == 0
    text = out.read_text()
    assert "python -m qwenvl.synth.report -m " + str(ckpt) in text and "--per-task 1" in text
    for row in ("| Grounding Acc@0.5 | `refer` | 1 |", "| Detection mAP@[.5:.95] |", "| Counting accuracy |",
                "| OCR exact match |", "| Document edit distance", "| Temporal mIoU |", "| Click accuracy |"):
        assert row in text, row
    assert "missed by" in text and "Run 1: lr 1e-3, curriculum 0." in text
    assert "What would close each gap: below." in text
    assert "### What would close each gap\n\n- **OCR**: read more." in text
    assert "A blind answer to the 1 videos, the middle 60 % of every clip, would score temporal mIoU " in text
    assert "Do the spans follow the event? With each clip's length regressed out of both sides" in text
    assert "Where the 1 clicks land: " in text and "| Clicks on an element of the named kind |" in text
    import torch  # the report names the CPU kind and torch: bf16 greedy answers can differ between CPU kinds
    on = next(line for line in text.splitlines() if line.startswith("- Computed on: "))
    assert f"({torch.backends.cpu.get_cpu_capability()})" in on and f"torch {torch.__version__}" in on
    assert "## The report's claims in miniature\n\n#### A claim\n\n| x | y |" in text
    assert "### Run 2:" in text and "| 31–" in text
    assert (tmp_path / "docs" / "report-curve.png").stat().st_size > 0
    first = json.loads((tmp_path / "r.json").read_text())
    from qwenvl.synth.report import TASK_ORDER
    assert [r["task"] for r in first["records"]] == TASK_ORDER  # --per-task 1: one scored record per task
    assert all(0 <= r["score"] <= 1 and r["file"] == str(d / "heldout.jsonl") for r in first["records"])
    assert first["span_following"]["n"] <= 1 and first["span_following"]["start_r"] is None  # one clip: undefined
    assert main(argv) == 0  # rerunning reproduces the report
    assert out.read_text() == text and json.loads((tmp_path / "r.json").read_text()) == first
