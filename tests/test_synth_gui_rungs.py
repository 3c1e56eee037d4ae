"""The GUI naming rungs (qwenvl.synth.gui.RUNGS): each answer says what the screenshot's labels are, the question's
point is the named element's click point, and the rungs stay out of a default build."""
import json
import re

import pytest

from qwenvl.synth.build import DEFAULT_TASKS, GROUPS, TASKS, build_dataset, main
from qwenvl.synth.evaluate import score
from qwenvl.synth.gui import RUNG_GROUP, RUNGS, reading_order, rung_score
from qwenvl.tasks.coords import FrameMap


@pytest.fixture(scope="module")
def rungs(tmp_path_factory):
    root = tmp_path_factory.mktemp("rungs")
    recs = build_dataset(root, n_per_task={t: 24 for t in RUNGS}, split="train", seed=4, curriculum=1)
    by = {}
    for r in recs:
        by.setdefault(r["meta"]["task"], []).append(r)
    return root, by


def _question(rec) -> str:
    return next(p["text"] for p in rec["messages"][-2]["content"] if p["type"] == "text")


def _answer(rec) -> str:
    return rec["messages"][-1]["content"]


def test_name_at_point_is_the_click_point_of_the_named_element(rungs):
    _, by = rungs
    for r in by["gui_name_at"]:
        m = r["meta"]
        x, y = map(int, re.search(r"\((\d+), (\d+)\)", _question(r)).groups())
        px, py = FrameMap(tuple(m["original"]), tuple(m["resized"])).point_to_original([x, y])
        el = m["elements"][m["target"]]
        b = el["box"]
        assert b[0] <= px <= b[2] and b[1] <= py <= b[3]
        # no other element holds that point, so the answer is the only right one
        assert sum(e["box"][0] <= px <= e["box"][2] and e["box"][1] <= py <= e["box"][3] for e in m["elements"]) == 1
        assert _answer(r) == f"The {el['name']} {el['type']}."
    assert len({r["meta"]["answer_kind"] for r in by["gui_name_at"]}) >= 3


def test_name_one_window_has_one_element_and_the_answer_names_it(rungs):
    _, by = rungs
    kinds = set()
    for r in by["gui_name_one"]:
        m = r["meta"]
        assert len(m["elements"]) == 1 and m["target"] == 0
        el = m["elements"][0]
        assert _answer(r) == f"The {el['name']} {el['type']}." and el["name"] == m["answer_name"]
        kinds.add(el["type"])
    assert kinds == {"button", "field", "menu", "checkbox"}  # 24 windows: every kind comes up


def test_name_kind_window_has_one_element_of_the_asked_kind(rungs):
    _, by = rungs
    others = 0
    for r in by["gui_name_kind"]:
        m = r["meta"]
        kind = m["answer_kind"]
        assert f" {kind} " in _question(r)
        assert [e["name"] for e in m["elements"] if e["type"] == kind] == [m["answer_name"]]
        assert _answer(r) == f"The {m['answer_name']} {kind}."
        others += len(m["elements"]) - 1
    assert others >= 24  # the other kinds are there to tell apart


def test_is_one_asks_a_name_of_the_element_s_kind_half_the_time_its_own(rungs):
    _, by = rungs
    yes = 0
    for r in by["gui_is_one"]:
        m = r["meta"]
        (el,) = m["elements"]
        assert m["kind"] == el["type"] and f" {m['asked']} {el['type']}?" in _question(r)
        assert _answer(r) == ("Yes." if m["asked"] == el["name"] else "No.") and m["exists"] == (_answer(r) == "Yes.")
        yes += m["exists"]
    assert 6 <= yes <= 18  # about half of 24


def test_copy_answer_is_the_listed_element_at_the_asked_place(rungs):
    _, by = rungs
    for r in by["gui_copy"]:
        q = _question(r)
        assert not any(p["type"] != "text" for p in r["messages"][0]["content"])  # text only
        listed = re.match(r"The window has (.*)\. Which element comes (\w+)\?$", q)
        items = listed.group(1).split(", ")
        assert 3 <= len(items) <= 6 and len(set(items)) == len(items)
        place = ("first", "second", "third", "fourth", "fifth", "sixth").index(listed.group(2))
        assert _answer(r) == items[place][0].upper() + items[place][1:] + "."


def test_exists_answers_follow_the_screen_and_are_balanced(rungs):
    _, by = rungs
    yes = 0
    for r in by["gui_exists"]:
        m = r["meta"]
        present = {e["name"] for e in m["elements"] if e["type"] == m["kind"]}
        assert f" {m['asked']} {m['kind']}?" in _question(r)
        assert _answer(r) == ("Yes." if m["asked"] in present else "No.")
        yes += m["asked"] in present
    assert 6 <= yes <= 18  # about half of 24
    assert not any(re.search(r"\ba [AEIOU]", _question(r)) for r in by["gui_exists"])  # "an Apply button"


def test_list_reads_every_label_of_the_kind_in_order(rungs):
    _, by = rungs
    for r in by["gui_list"]:
        m = r["meta"]
        of_kind = [e for e in m["elements"] if e["type"] == m["kind"]]
        names = _answer(r).rstrip(".").split(", ")
        assert sorted(names) == sorted(e["name"] for e in of_kind)
        tops = [next(e["box"] for e in of_kind if e["name"] == n) for n in names]
        assert tops == sorted(tops, key=lambda b: (b[1], b[0]))
    assert reading_order([{"type": "button", "name": "B", "box": [50, 9, 60, 20]},
                          {"type": "button", "name": "A", "box": [5, 9, 20, 20]},
                          {"type": "menu", "name": "File", "box": [0, 0, 9, 9]},
                          {"type": "button", "name": "C", "box": [0, 30, 9, 40]}], "button") == ["A", "B", "C"]


def test_rung_scores_want_the_exact_names(rungs):
    _, by = rungs
    for task, recs in by.items():
        for r in recs:
            assert score(r, _answer(r)) == (1.0, None)
            assert rung_score(r["meta"], _answer(r).upper().replace(".", "")) == 1.0
    r = by["gui_name_at"][0]
    other = next(n for n in ("OK", "Cancel") if n != r["meta"]["answer_name"])
    assert score(r, f"The {other} {r['meta']['answer_kind']}.")[0] == 0.0
    lst = next(r for r in by["gui_list"] if len(r["meta"]["names"]) > 1)
    assert score(lst, ", ".join(reversed(lst["meta"]["names"])) + ".")[0] == 0.0  # order counts
    ex = by["gui_exists"][0]
    assert score(ex, "No." if ex["meta"]["exists"] else "Yes.")[0] == 0.0
    with pytest.raises(ValueError, match="not a GUI rung"):
        rung_score({"task": "computer_use"}, "x")


def test_rungs_are_asked_for_by_name_not_built_by_default(tmp_path):
    assert set(RUNGS) <= set(TASKS) and not set(RUNGS) & set(DEFAULT_TASKS)
    assert GROUPS["gui_rungs"] == RUNG_GROUP == ("gui_name_at", "gui_exists", "gui_list")  # what R1 was built with
    assert main(["--out", str(tmp_path), "--n", "1", "--seed", "2", "--name", "all"]) == 0
    tasks = {json.loads(l)["meta"]["task"] for l in (tmp_path / "all.jsonl").read_text().splitlines()}
    assert tasks == set(DEFAULT_TASKS)
    assert main(["--out", str(tmp_path), "--n", "2", "--tasks", "gui_rungs", "--name", "r"]) == 0
    tasks = [json.loads(l)["meta"]["task"] for l in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert sorted(tasks) == sorted(list(RUNG_GROUP) * 2)
    assert main(["--out", str(tmp_path), "--n", "2", "--tasks", "gui_name_one", "--name", "one"]) == 0
    assert [json.loads(l)["meta"]["task"] for l in (tmp_path / "one.jsonl").read_text().splitlines()] == \
        ["gui_name_one"] * 2
