"""Held-out scoring of synthetic records: the records' own answers score 1, wrong answers 0, junk is a parse error."""
import json

import pytest

from qwenvl.synth.build import build_dataset
from qwenvl.synth.evaluate import label_words, score
from qwenvl.tasks.coords import FrameMap


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth")
    return build_dataset(d, n_per_task=2, split="heldout", seed=3, curriculum=1)


def test_reference_answers_score_one(records):
    tasks = set()
    for r in records:
        s, err = score(r, r["messages"][-1]["content"])
        assert err is None and s == pytest.approx(1.0), (r["meta"]["task"], s, err)
        tasks.add(r["meta"]["task"])
    assert len(tasks) == 10


def test_wrong_and_junk_answers(records):
    for r in records:
        s, err = score(r, "I am not sure.")
        assert s < 1.0, r["meta"]["task"]
    det = next(r for r in records if r["meta"]["task"] == "refer")
    far = '[{"bbox_2d": [0, 0, 2, 2], "label": "x"}]'
    assert score(det, far) == (0.0, None)
    cu = next(r for r in records if r["meta"]["task"] == "computer_use")
    s, err = score(cu, "<tool_call>\n{\"name\": \"computer_use\", \"arguments\": {\"action\": \"left_click\", "
                       "\"coordinate\": [0, 0]}}\n</tool_call>")
    assert s == 0.0 and err is None


def test_label_words_separate_naming_from_placing(records):
    det = max((r for r in records if r["meta"]["task"] in ("detect", "count")), key=lambda r: len(r["meta"]["objects"]))
    n = len(det["meta"]["objects"])
    assert label_words(det, det["messages"][-1]["content"]) == (n, n, n)
    # the right boxes, each labelled with a colour and kind other than its own: placed, not named
    m = det["meta"]
    f = FrameMap(tuple(m["original"]), tuple(m["resized"]))
    wrong = [{"bbox_2d": f.box_label(o["box"]), "label": f"{'red' if o['colour'] != 'red' else 'blue'} "
              f"{'circle' if o['shape'] != 'circle' else 'star'}"} for o in m["objects"]]
    assert label_words(det, json.dumps(wrong)) == (0, 0, n)
    right_colour = [{**w, "label": f"{o['colour']} {w['label'].split()[1]}"} for w, o in zip(wrong, m["objects"])]
    assert label_words(det, json.dumps(right_colour)) == (n, 0, n)
    assert label_words(det, "no boxes here") == (0, 0, n)
