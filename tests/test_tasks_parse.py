"""qwenvl.tasks.parse: real-shaped Qwen2.5-VL outputs (well-formed and broken) with hand-written expected
parses, and property tests (only ParseError escapes; timestamps, tool calls and detections round-trip)."""
import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qwenvl.tasks.parse import (extract_json, parse_count, parse_grounding, parse_key_values, parse_ocr_lines,
                                parse_points, parse_text_spotting, parse_time_spans, parse_timestamp,
                                parse_tool_calls)
from qwenvl.tasks.types import Detection as D
from qwenvl.tasks.types import ParseError, TextItem, TimeSpan, ToolCall

FENCE = "```"

# ------------------------------------------------------------------------------------------------ grounding
GROUNDING = [
    ("cookbook single, fenced", '```json\n[\n\t{"bbox_2d": [765, 394, 891, 550], "label": "top right brown cake"}\n]\n```',
     [D("top right brown cake", (765, 394, 891, 550))]),
    ("prose before, two items",
     'Here are the boxes:\n```json\n[\n  {"bbox_2d": [10, 20, 30, 40], "label": "cake"},\n'
     '  {"bbox_2d": [50, 60, 70, 80], "label": "plate"}\n]\n```',
     [D("cake", (10, 20, 30, 40)), D("plate", (50, 60, 70, 80))]),
    ("uppercase tag", '```JSON\n[{"bbox_2d": [1, 2, 3, 4], "label": "a"}]\n```', [D("a", (1, 2, 3, 4))]),
    ("fence without tag", '```\n[{"bbox_2d": [1, 2, 3, 4], "label": "a"}]\n```', [D("a", (1, 2, 3, 4))]),
    ("one-line fence", '```json[{"bbox_2d": [1, 2, 3, 4], "label": "a"}]```', [D("a", (1, 2, 3, 4))]),
    ("no fence, prose after", '[{"bbox_2d": [1, 2, 3, 4], "label": "a"}]\nThere is 1 item.', [D("a", (1, 2, 3, 4))]),
    ("unclosed fence", '```json\n[{"bbox_2d": [1, 2, 3, 4], "label": "a"}]', [D("a", (1, 2, 3, 4))]),
    ("trailing commas", '```json\n[{"bbox_2d": [1, 2, 3, 4,], "label": "a",},]\n```', [D("a", (1, 2, 3, 4))]),
    ("python literals", "```python\n[{'bbox_2d': [1, 2, 3, 4], 'label': 'cake', 'occluded': True, 'note': None}]\n```",
     [D("cake", (1, 2, 3, 4), extra={"occluded": True, "note": None})]),
    ("dict instead of list", '```json\n{"bbox_2d": [135, 114, 1016, 672], "label": "dog"}\n```',
     [D("dog", (135, 114, 1016, 672))]),
    ("finetune bare dict, no label", '{"bbox_2d": [135, 114, 1016, 672]}', [D("", (135, 114, 1016, 672))]),
    ("truncated list keeps complete items",
     '```json\n[\n {"bbox_2d": [1, 2, 3, 4], "label": "a"},\n {"bbox_2d": [5, 6, 7, 8], "label": "b"},\n {"bbox_2d": [9, 10, 1',
     [D("a", (1, 2, 3, 4)), D("b", (5, 6, 7, 8))]),
    ("truncated inside a label", '```json\n[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_2d": [5, 6, 7, 8], "label": "lo',
     [D("a", (1, 2, 3, 4))]),
    ("truncated after a closed item", '[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_2d": [5, 6, 7, 8], "label": "b"}',
     [D("a", (1, 2, 3, 4)), D("b", (5, 6, 7, 8))]),
    ("swapped corners", '[{"bbox_2d": [300, 400, 100, 200], "label": "x"}]', [D("x", (100, 200, 300, 400))]),
    ("extra keys kept", '[{"bbox_2d": [1, 2, 3, 4], "label": "car", "sub_label": "red", "text_content": "AB-123", "conf": 0.9}]',
     [D("car", (1, 2, 3, 4), extra={"sub_label": "red", "text_content": "AB-123", "conf": 0.9})]),
    ("CJK labels", '```json\n[{"bbox_2d": [12, 34, 56, 78], "label": "小蛋糕"}, {"bbox_2d": [1, 1, 2, 2], "label": "盘子"}]\n```',
     [D("小蛋糕", (12, 34, 56, 78)), D("盘子", (1, 1, 2, 2))]),
    ("point JSON", '```json\n[{"point_2d": [284, 305], "label": "rolling pin"}]\n```', [D("rolling pin", point=(284, 305))]),
    ("box and point", '[{"bbox_2d": [1, 2, 3, 4], "point_2d": [2, 3], "label": "a"}]', [D("a", (1, 2, 3, 4), (2, 3))]),
    ("coordinates as strings", '[{"bbox_2d": ["10", "20", "30", "40"], "label": "a"}, {"bbox_2d": "5, 6, 7, 8", "label": "b"}]',
     [D("a", (10, 20, 30, 40)), D("b", (5, 6, 7, 8))]),
    ("floats", '[{"bbox_2d": [10.5, 20.25, 30.0, 40.75], "label": "a"}]', [D("a", (10.5, 20.25, 30.0, 40.75))]),
    ("bbox/box/point keys", '[{"bbox": [1, 2, 3, 4], "label": "a"}, {"box": [5, 6, 7, 8], "label": "b"}, {"point": [9, 9], "label": "c"}]',
     [D("a", (1, 2, 3, 4)), D("b", (5, 6, 7, 8)), D("c", point=(9, 9))]),
    ("nested bbox list", '[{"bbox_2d": [[1, 2, 3, 4]], "label": "a"}]', [D("a", (1, 2, 3, 4))]),
    ("bare nested lists", "```json\n[[1, 2, 3, 4], [5, 6, 7, 8]]\n```", [D("", (1, 2, 3, 4)), D("", (5, 6, 7, 8))]),
    ("invalid items skipped",
     '[{"bbox_2d": [1, 2, 3], "label": "bad"}, {"bbox_2d": ["a", 2, 3, 4], "label": "bad2"}, {"bbox_2d": [1, 2, 3, 4], "label": "ok"}]',
     [D("ok", (1, 2, 3, 4))]),
    ("empty list means nothing found", "```json\n[]\n```", []),
    ("second fence is the answer", '```json\n{"note": "thinking"}\n```\n```json\n[{"bbox_2d": [1, 2, 3, 4], "label": "a"}]\n```',
     [D("a", (1, 2, 3, 4))]),
    ("wrapper object", '{"objects": [{"bbox_2d": [1, 2, 3, 4], "label": "a"}]}', [D("a", (1, 2, 3, 4))]),
    ("unquoted keys", "[{bbox_2d: [1, 2, 3, 4], label: 'a'}]", [D("a", (1, 2, 3, 4))]),
    ("unescaped quotes in label", '[{"bbox_2d": [1, 2, 3, 4], "label": "the "big" cake"}]', [D('the "big" cake', (1, 2, 3, 4))]),
    ("special token after", '```json\n[{"bbox_2d": [1, 2, 3, 4], "label": "a"}]\n```<|im_end|>', [D("a", (1, 2, 3, 4))]),
    ("plain-text box (cookbook)", "43,378,996,957 cakes", [D("cakes", (43, 378, 996, 957))]),
    ("plain-text boxes, lines", "12,30,200,180 left cake\n300, 40, 260, 190 right cake\n",
     [D("left cake", (12, 30, 200, 180)), D("right cake", (260, 40, 300, 190))]),
    ("point XML multi", '<points x1="284" y1="305" x2="500" y2="120" alt="rolling pins">rolling pins</points>',
     [D("rolling pins", point=(284, 305)), D("rolling pins", point=(500, 120))]),
    ("point XML single, label from text", '<points x="61.5" y="29" alt="the knife">knife</points>', [D("knife", point=(61.5, 29))]),
    ("point XML empty text uses alt", '<points x="1" y="2" alt="a cup"></points>', [D("a cup", point=(1, 2))]),
    ("missing commas", '[\n {"bbox_2d": [1, 2, 3, 4], "label": "a" "sub_label": "x"}\n {"bbox_2d": [5, 6, 7, 8], "label": "b"}\n]',
     [D("a", (1, 2, 3, 4), extra={"sub_label": "x"}), D("b", (5, 6, 7, 8))]),
    ("qwen-vl ref/box tags", "<ref>cake</ref><box>(1,2),(3,4)</box>", [D("cake", (1, 2, 3, 4))]),
    ("qwen2 box tokens", "<|object_ref_start|>cake<|object_ref_end|><|box_start|>(101,202),(303,404)<|box_end|>",
     [D("cake", (101, 202, 303, 404))]),
]


@pytest.mark.parametrize("text,expected", [c[1:] for c in GROUNDING], ids=[c[0] for c in GROUNDING])
def test_grounding(text, expected):
    assert parse_grounding(text) == expected


@pytest.mark.parametrize("text", [
    "I cannot find a cake in this image.",
    "",
    '[{"bbox_2d": [1, 2, 3], "label": "only three"}]',
    '```json\n[{"bbox_2d": [1, 2, 3',
    '{"label": "no coordinates"}',
    '{"bbox_2d": [1, 2, 3, 4], "label": "cut off',
])
def test_grounding_errors(text):
    with pytest.raises(ParseError):
        parse_grounding(text)


def test_points_filters_and_rejects_boxes_only():
    text = '[{"point_2d": [1, 2], "label": "a"}, {"bbox_2d": [1, 2, 3, 4], "label": "b"}]'
    assert parse_points(text) == [D("a", point=(1, 2))]
    assert parse_points("```json\n[]\n```") == []
    with pytest.raises(ParseError):
        parse_points('[{"bbox_2d": [1, 2, 3, 4], "label": "b"}]')


COUNTS = [
    ('```json\n[{"bbox_2d": [1, 2, 3, 4], "label": "a"}]\n```\nThere are 12 items in the image.', 12),
    ('```json\n[{"bbox_2d": [1, 2, 3, 4], "label": "a"}]\n```\nIn total, there are twelve cakes.', 12),
    ('```json\n[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_2d": [1, 2, 3, 4], "label": "b"}]\n```', 2),
    ("There are twenty-one people in the picture.", 21),
    ("There is one dog.", 1),
    ("There are no cakes in the image.", 0),
    ("I count 7 apples.", 7),
    ("The image contains 5 cakes.", 5),
    ("12 cakes.", 12),
    ("There are a few cakes.", None),
    ("3 items in total.", 3),
    ("图中共有5个蛋糕。", 5),
    ("I am not sure.", None),
    ("There are " + "9" * 40 + " grains of sand.", None),
]


@pytest.mark.parametrize("text,expected", COUNTS)
def test_count(text, expected):
    assert parse_count(text) == expected


# ------------------------------------------------------------------------------------------------ OCR / KIE
SPOTTING = [
    ('```json\n[\n  {"bbox_2d": [10, 20, 110, 40], "text_content": "Hello",},\n  {"bbox_2d": [10, 50, 90, 70], "text_content": "世界",}\n]\n```',
     [TextItem("Hello", (10, 20, 110, 40)), TextItem("世界", (10, 50, 90, 70))]),
    ('[{"bbox_2d": [1, 2, 3, 4], "text_content": "A"}, {"bbox_2d": [5, 6, 7, 8], "text_content": "B',
     [TextItem("A", (1, 2, 3, 4))]),
    ('{"bbox_2d": [4, 3, 2, 1], "text_content": "single"}', [TextItem("single", (2, 1, 4, 3))]),
    ('```json\n[{"text_content": "no box"}, {"text": "42", "bbox": [1, 2, 3, 4]}]\n```',
     [TextItem("no box", None), TextItem("42", (1, 2, 3, 4))]),
]


@pytest.mark.parametrize("text,expected", SPOTTING)
def test_text_spotting(text, expected):
    assert parse_text_spotting(text) == expected


def test_text_spotting_error_and_ocr_lines():
    with pytest.raises(ParseError):
        parse_text_spotting("Hello world\nSecond line")
    assert parse_ocr_lines("Hello world\n\n  Second line  \n<|im_end|>") == ["Hello world", "Second line"]
    assert parse_ocr_lines("Here is the text:\n```\nLine one\nLine two\n```\nHope this helps.") == ["Line one", "Line two"]
    assert parse_ocr_lines('```json\n[{"bbox_2d": [1, 2, 3, 4], "text_content": "X"}]\n```') == ["X"]


KV = [
    ('The key information is as follows:\n```json\n{"company": "ACME LTD", "date": "2018-03-27", "address": "1 Main St", "total": "9.00"}\n```',
     None, {"company": "ACME LTD", "date": "2018-03-27", "address": "1 Main St", "total": "9.00"}),
    ('```json\n{"company": "ACME", "total": "9.00",}\n```', ["company", "date", "total"],
     {"company": "ACME", "date": None, "total": "9.00"}),
    ("{'发票号码': '12345', '金额': 99.5}", ["金额", "发票号码"], {"金额": 99.5, "发票号码": "12345"}),
    ('```json\n{"Company Name": "X", "items": [{"name": "tea", "price": 3}]}\n```', ["company_name", "items"],
     {"company_name": "X", "items": [{"name": "tea", "price": 3}]}),
    ('```json\n{"company": "ACME", "address": "1 Main', None, {"company": "ACME"}),
]


@pytest.mark.parametrize("text,keys,expected", KV)
def test_key_values(text, keys, expected):
    out = parse_key_values(text, keys)
    assert out == expected
    if keys is not None:
        assert list(out) == list(keys)


def test_key_values_error_and_extract_json():
    with pytest.raises(ParseError):
        parse_key_values("The company is ACME.")
    assert extract_json("text ```json\n{'a': [1, 2,], 'b': None}\n```") == {"a": [1, 2], "b": None}


# ------------------------------------------------------------------------------------------------ time
TIMES = [
    ("The given query happens in 64.0 - 72.0 seconds.", [TimeSpan(64, 72)]),
    ("The event happens from 3 to 7.5 seconds.", [TimeSpan(3, 7.5)]),
    ("3.2s - 5s", [TimeSpan(3.2, 5)]),
    ("It occurs between 1:02.5 and 1:10.", [TimeSpan(62.5, 70)]),
    ("00:23.90 - 01:35.60", [TimeSpan(23.9, 95.6)]),
    ("from 01:02:03.50 to 01:02:10.00", [TimeSpan(3723.5, 3730)]),
    ("The segment is 12:34.56s to 12:40.00s.", [TimeSpan(754.56, 760)]),
    ("The man jumps at 12 seconds.", [TimeSpan(12, 12)]),
    ("happens in 72.0 - 64.0 seconds", [TimeSpan(64, 72)]),
    ("The clip covers 1.5 - 2 minutes.", [TimeSpan(90, 120)]),
    ("<64.0 seconds> to <72.0 seconds>", [TimeSpan(64, 72)]),
    ("[12.3, 15.6]", [TimeSpan(12.3, 15.6)]),
    ('```json\n[\n  {"start_time": "00:23.90", "end_time": "01:35.60", "description": "A chef seasons the steak."},\n'
     '  {"start_time": "01:35.60", "end_time": "02:10.00", "description": "He flips it."}\n]\n```',
     [TimeSpan(23.9, 95.6, "A chef seasons the steak."), TimeSpan(95.6, 130, "He flips it.")]),
    ('[{"start_time": 1.5, "end_time": 4, "description": "x"}, {"start_time": "00:00:10.00", "end_time": "12s", "description": "y"}]',
     [TimeSpan(1.5, 4, "x"), TimeSpan(10, 12, "y")]),
    ('```json\n[{"start_time": "00:05.00", "end_time": "00:01.00", "description": "swapped"}, {"start_time": "00:09.00", "end_',
     [TimeSpan(1, 5, "swapped")]),
    ('{"start_time": "00:01.00", "end_time": "00:02.50"}', [TimeSpan(1, 2.5)]),
    ("00:00 - 00:05: A man walks in.\n00:05 - 00:09: He sits down.",
     [TimeSpan(0, 5, "A man walks in."), TimeSpan(5, 9, "He sits down.")]),
]


@pytest.mark.parametrize("text,expected", TIMES)
def test_time_spans(text, expected):
    got = parse_time_spans(text)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.start == pytest.approx(e.start) and g.end == pytest.approx(e.end)
        assert g.description == e.description


@pytest.mark.parametrize("s,expected", [
    ("12.5", 12.5), ("3.2s", 3.2), ("12:34.56", 754.56), ("01:23.45", 83.45), ("01:02:03.5", 3723.5),
    ("12:34.56s", 754.56), ("5 seconds", 5), ("1m30s", 90), ("2 min", 120), ("00:01:02,500", 62.5),
])
def test_timestamp(s, expected):
    assert parse_timestamp(s) == pytest.approx(expected)


@pytest.mark.parametrize("s", ["", "abc", "-5", "12:ab", "1e400"])
def test_timestamp_errors(s):
    with pytest.raises(ParseError):
        parse_timestamp(s)


def test_time_spans_error():
    with pytest.raises(ParseError):
        parse_time_spans("I could not find that moment in the video.")


# ------------------------------------------------------------------------------------------------ tool calls
def _mob(**a):
    return ToolCall("mobile_use", a)


TOOLS = [
    ('<tool_call>\n{"name": "mobile_use", "arguments": {"action": "click", "coordinate": [935, 406]}}\n</tool_call>',
     [_mob(action="click", coordinate=[935, 406])]),
    ('I need to open the settings. <tool_call>{"name": "computer_use", "arguments": {"action": "left_click", "coordinate": [512, 384]}}</tool_call>',
     [ToolCall("computer_use", {"action": "left_click", "coordinate": [512, 384]})]),
    ('<tool_call>\n{"name": "mobile_use", "arguments": {"action": "swipe", "coordinate": [540, 1800], "coordinate2": [540, 600]}}\n</tool_call>\n'
     '<tool_call>\n{"name": "mobile_use", "arguments": {"action": "type", "text": "hello \\"world\\""}}\n</tool_call>',
     [_mob(action="swipe", coordinate=[540, 1800], coordinate2=[540, 600]), _mob(action="type", text='hello "world"')]),
    ('<tool_call>\n{"name": "mobile_use", "arguments": {"action": "terminate", "status": "success"}}\n',
     [_mob(action="terminate", status="success")]),
    ('<tool_call>\n{"name": "computer_use", "arguments": "{\\"action\\": \\"key\\", \\"keys\\": [\\"ctrl\\", \\"c\\"]}"}\n</tool_call>',
     [ToolCall("computer_use", {"action": "key", "keys": ["ctrl", "c"]})]),
    ("<tool_call>\n{'name': 'mobile_use', 'arguments': {'action': 'wait', 'time': 2,},}\n</tool_call>", [_mob(action="wait", time=2)]),
    ('<tool_call>{"name": "get_weather"}</tool_call>', [ToolCall("get_weather", {})]),
    ('<tool_call>\n{"name": "mobile_use", "arguments": {"action": "long_press", "coordinate": [1, 2], "time": 2}\n</tool_call>',
     [_mob(action="long_press", coordinate=[1, 2], time=2)]),
    ('{"name": "mobile_use", "arguments": {"action": "system_button", "button": "Back"}}', [_mob(action="system_button", button="Back")]),
    ('```json\n{"name": "computer_use", "arguments": {"action": "scroll", "pixels": -300}}\n```',
     [ToolCall("computer_use", {"action": "scroll", "pixels": -300})]),
    ('<tool_call>{"name": "a", "arguments": {}}</tool_call><tool_call>{"name": "b", "arguments": {"x": 1}}</tool_call>'
     '<tool_call>{"name": "c", "arguments": {"x": ',
     [ToolCall("a", {}), ToolCall("b", {"x": 1})]),
]


@pytest.mark.parametrize("text,expected", TOOLS)
def test_tool_calls(text, expected):
    assert parse_tool_calls(text) == expected


@pytest.mark.parametrize("text", [
    "I will click the button.",
    '<tool_call>\n{"name": "mobile_use", "arguments": {"action": "cli',
    '<tool_call>\n{"name": "mobile_use", "arguments": {"action": "click"}',  # cut off: JSON not complete
    '<tool_call>{"arguments": {"action": "click"}}</tool_call>',
    '<tool_call>{"name": "x", "arguments": [1, 2]}</tool_call>',
])
def test_tool_call_errors(text):
    with pytest.raises(ParseError):
        parse_tool_calls(text)


# ------------------------------------------------------------------------------------------------ robustness
PARSERS = [parse_grounding, parse_points, parse_count, parse_text_spotting, parse_ocr_lines, parse_key_values,
           parse_time_spans, parse_timestamp, parse_tool_calls, extract_json]
FRAGMENTS = ["```json", "```", "\n", "[", "]", "{", "}", '{"bbox_2d": [', '"label": ', '"', "'", ",", ":", "<tool_call>",
             "</tool_call>", '{"name": "x", "arguments": ', "<points x1=\"", '" y1="', "</points>", "0", "12", "3.5",
             "-", " - ", "00:23.90", "seconds", "True", "None", "\\", "\\u12", "<|box_start|>", "(", ")", "There are ",
             "twelve", "start_time", "text_content", "\ud7ff", "蛋糕", "e", "NaN", "1e999"]
fragment_text = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4)), max_size=30).map("".join)


def _only_parse_error(text):
    for fn in PARSERS:
        try:
            fn(text)
        except ParseError:
            pass


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(fragment_text, st.text(max_size=60)))
def test_only_parse_error_escapes(text):
    _only_parse_error(text)


@pytest.mark.parametrize("bad", [None, 12, b"[1, 2]", ["x"], {"a": 1}])
def test_non_str_input_is_parse_error(bad):
    for fn in PARSERS:
        with pytest.raises(ParseError):
            fn(bad)


def test_pathological_inputs_are_fast():
    t0 = time.perf_counter()
    for text in ["[" * 3000, '{"a": ' * 1000, "[1, " * 1000, '"' * 3000, "```json\n" * 300, "1:" * 2000, "x" * 10000,
                 "<tool_call>" * 500, "<box>" * 2000, "\n" * 5000 + "x", " " * 5000 + "1:00 - 2:00 x", "9" * 5000]:
        _only_parse_error(text)
    assert time.perf_counter() - t0 < 5


@settings(max_examples=100, deadline=None)
@given(st.floats(0, 3599.99))
def test_timestamp_roundtrip_mmss(sec):
    cs = round(sec * 100)
    s = f"{cs // 6000:02d}:{cs % 6000 // 100:02d}.{cs % 100:02d}"
    assert abs(parse_timestamp(s) - sec) <= 0.01


@settings(max_examples=100, deadline=None)
@given(st.floats(0, 359999.99))
def test_timestamp_roundtrip_hhmmss(sec):
    cs = round(sec * 100)
    s = f"{cs // 360000:02d}:{cs % 360000 // 6000:02d}:{cs % 6000 // 100:02d}.{cs % 100:02d}"
    assert abs(parse_timestamp(s) - sec) <= 0.01


texts = st.text(st.characters(blacklist_characters="`", blacklist_categories=("Cs",)), max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**9, 10**9) | st.floats(allow_nan=False, allow_infinity=False) | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3), max_leaves=8)


@settings(max_examples=100, deadline=None)
@given(st.lists(json_values, max_size=4) | st.dictionaries(texts, json_values, max_size=4), st.booleans())
def test_reader_agrees_with_json_and_python_literals(value, ascii_only):
    assert extract_json(json.dumps(value, ensure_ascii=ascii_only)) == value
    assert extract_json(f"Result:\n{FENCE}python\n{value!r}\n{FENCE}") == value
names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True)
tool_calls = st.builds(ToolCall, names, st.dictionaries(st.text(max_size=8), json_values, max_size=4))


@settings(max_examples=60, deadline=None)
@given(st.lists(tool_calls, min_size=1, max_size=4), st.booleans(), st.sampled_from(["", "Thought: click it.\n"]))
def test_tool_calls_roundtrip(calls, ascii_only, thought):
    text = thought + "\n".join(f"<tool_call>\n{json.dumps(c.to_dict(), ensure_ascii=ascii_only)}\n</tool_call>"
                               for c in calls)
    assert parse_tool_calls(text) == calls


coord = st.floats(0, 4000, allow_nan=False).map(lambda v: round(v, 2))
labels = st.text(st.characters(blacklist_characters="`", blacklist_categories=("Cs",)), max_size=20)  # no fences


@st.composite
def detections(draw):
    box = point = None
    kind = draw(st.sampled_from(["box", "point", "both"]))
    if kind != "point":
        x1, x2, y1, y2 = sorted([draw(coord), draw(coord)]) + sorted([draw(coord), draw(coord)])
        box = (x1, y1, x2, y2)
    if kind != "box":
        point = (draw(coord), draw(coord))
    extra = draw(st.dictionaries(st.sampled_from(["sub_label", "text_content", "color", "score", "id"]), json_values,
                                 max_size=3))
    return D(draw(labels), box, point, extra)


@settings(max_examples=60, deadline=None)
@given(st.lists(detections(), max_size=5), st.sampled_from(["", "Here are the objects:\n"]),
       st.sampled_from(["", "\nThere are several objects."]))
def test_detections_roundtrip(dets, before, after):
    body = json.dumps([d.to_dict() for d in dets], ensure_ascii=False, indent=2)
    assert parse_grounding(f"{before}{FENCE}json\n{body}\n{FENCE}{after}") == dets
