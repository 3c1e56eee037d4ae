"""Screenshot agents: Nous tool prompt, cookbook tool schemas, coordinate mapping, actions and the agent loop."""
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from qwenvl.media.image import target_size
from qwenvl.tasks.agent import (Action, ActionError, DryRunExecutor, Executor, action_from_call, build_messages,
                                computer_use_tool, history_text, mobile_use_tool, run_agent, screen_frame, to_device,
                                to_model, tool_system_prompt)
from qwenvl.tasks.types import ToolCall

PHONE = (1080, 2400)
FRAME = (1092, 2408)

# The Qwen2.5-VL cookbook mobile prompt as Qwen-Agent's NousFnCallPrompt renders it, written out by hand.
MOBILE_LINE = (
    r'''{"type": "function", "function": {"name_for_human": "mobile_use", "name": "mobile_use", "description": '''
    r'''"Use a touchscreen to interact with a mobile device, and take screenshots.\n* This is an interface to a '''
    r'''mobile device with touchscreen. You can perform actions like clicking, typing, swiping, etc.\n* Some '''
    r'''applications may take time to start or process actions, so you may need to wait and take successive '''
    r'''screenshots to see the results of your actions.\n* The screen's resolution is 1092x2408.\n* Make sure to '''
    r'''click any buttons, links, icons, etc with the cursor tip in the center of the element. Don't click boxes '''
    r'''on their edges unless asked.", "parameters": {"properties": {"action": {"description": "The action to '''
    r'''perform. The available actions are:\n* `key`: Perform a key event on the mobile device.\n    - This '''
    r'''supports adb's `keyevent` syntax.\n    - Examples: \"volume_up\", \"volume_down\", \"power\", \"camera\", '''
    r'''\"clear\".\n* `click`: Click the point on the screen with coordinate (x, y).\n* `long_press`: Press the '''
    r'''point on the screen with coordinate (x, y) for specified seconds.\n* `swipe`: Swipe from the starting '''
    r'''point with coordinate (x, y) to the end point with coordinates2 (x2, y2).\n* `type`: Input the specified '''
    r'''text into the activated input box.\n* `system_button`: Press the system button.\n* `open`: Open an app '''
    r'''on the device.\n* `wait`: Wait specified seconds for the change to happen.\n* `terminate`: Terminate the '''
    r'''current task and report its completion status.", "enum": ["key", "click", "long_press", "swipe", "type", '''
    r'''"system_button", "open", "wait", "terminate"], "type": "string"}, "coordinate": {"description": "(x, y): '''
    r'''The x (pixels from the left edge) and y (pixels from the top edge) coordinates to move the mouse to. '''
    r'''Required only by `action=click`, `action=long_press`, and `action=swipe`.", "type": "array"}, '''
    r'''"coordinate2": {"description": "(x, y): The x (pixels from the left edge) and y (pixels from the top edge) '''
    r'''coordinates to move the mouse to. Required only by `action=swipe`.", "type": "array"}, "text": '''
    r'''{"description": "Required only by `action=key`, `action=type`, and `action=open`.", "type": "string"}, '''
    r'''"time": {"description": "The seconds to wait. Required only by `action=long_press` and `action=wait`.", '''
    r'''"type": "number"}, "button": {"description": "Back means returning to the previous interface, Home means '''
    r'''returning to the desktop, Menu means opening the application background menu, and Enter means pressing '''
    r'''the enter. Required only by `action=system_button`", "enum": ["Back", "Home", "Menu", "Enter"], "type": '''
    r'''"string"}, "status": {"description": "The status of the task. Required only by `action=terminate`.", '''
    r'''"type": "string", "enum": ["success", "failure"]}}, "required": ["action"], "type": "object"}, '''
    r'''"args_format": "Format the arguments as a JSON object."}}''')

EXPECTED_MOBILE_SYSTEM = (
    "You are a helpful assistant.\n\n"
    "# Tools\n\n"
    "You may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n"
    "<tools>\n" + MOBILE_LINE + "\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within <tool_call></tool_call> "
    "XML tags:\n"
    "<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call>")


def test_phone_frame_matches_cookbook():
    assert screen_frame(*PHONE) == FRAME
    assert screen_frame(*PHONE, min_pixels=3136, max_pixels=12845056) == FRAME


def test_mobile_system_prompt_exact():
    assert tool_system_prompt([mobile_use_tool(*FRAME)]) == EXPECTED_MOBILE_SYSTEM
    assert tool_system_prompt(mobile_use_tool(*FRAME)) == EXPECTED_MOBILE_SYSTEM
    assert "The screen's resolution is 1092x2408." in EXPECTED_MOBILE_SYSTEM


def test_tool_prompt_one_object_per_line_and_no_system():
    tools = [computer_use_tool(1288, 728), mobile_use_tool(*FRAME)]
    text = tool_system_prompt(tools, system=None)
    assert text.startswith("# Tools\n\nYou may call one or more functions")
    body = text.split("<tools>\n")[1].split("\n</tools>")[0]
    lines = body.split("\n")
    assert [json.loads(x) for x in lines] == tools
    assert lines[0] == json.dumps(tools[0], ensure_ascii=False)
    fn = tools[0]["function"]
    assert list(fn) == ["name_for_human", "name", "description", "parameters", "args_format"]
    assert "* The screen's resolution is 1288x728.\n" in fn["description"]
    assert fn["parameters"]["properties"]["action"]["enum"] == [
        "key", "type", "mouse_move", "left_click", "left_click_drag", "right_click", "middle_click", "double_click",
        "scroll", "wait", "terminate"]
    # a bare function object gets wrapped; non-ASCII stays as is
    bare = {"name": "f", "description": "données", "parameters": {}}
    assert '{"type": "function", "function": {"name": "f", "description": "données"' in tool_system_prompt(bare)


# ------------------------------------------------------------------------------------------------ coordinates

@settings(max_examples=60, deadline=None)
@given(st.integers(200, 4000), st.integers(200, 4000), st.sampled_from([200_000, 1_003_520, 12845056]),
       st.floats(0, 1), st.floats(0, 1))
def test_coordinate_round_trip(w, h, max_pixels, fx, fy):
    resized = screen_frame(w, h, max_pixels=max_pixels)
    x, y = fx * (resized[0] - 1), fy * (resized[1] - 1)
    dx, dy = to_device(x, y, resized, (w, h))
    assert 0 <= dx <= w - 1 and 0 <= dy <= h - 1
    mx, my = to_model(dx, dy, resized, (w, h))
    assert abs(mx - x) <= 1 and abs(my - y) <= 1
    # device -> model -> device: within 1 px, or one model pixel's width at the clipped right/bottom edge
    px, py = fx * (w - 1), fy * (h - 1)
    bx, by = to_device(*to_model(px, py, resized, (w, h)), resized, (w, h))
    assert abs(bx - px) <= max(1, w / resized[0]) + 1e-9 and abs(by - py) <= max(1, h / resized[1]) + 1e-9
    if fx < 0.9 and fy < 0.9:
        assert abs(bx - px) <= 1e-6 and abs(by - py) <= 1e-6


def test_coordinates_scale_and_clip():
    assert to_device(546, 1204, FRAME, PHONE) == (540.0, 1200.0)
    assert to_model(540, 1200, FRAME, PHONE) == (546.0, 1204.0)
    assert to_device(-10, 5000, FRAME, PHONE) == (0.0, 2399.0)
    assert to_device(1092, 2408, FRAME, PHONE) == (1079.0, 2399.0)
    assert to_model(99999, -1, FRAME, PHONE) == (1091.0, 0.0)


# ---------------------------------------------------------------------------------------------------- actions

def _m(**args):
    return action_from_call(ToolCall("mobile_use", args), FRAME, PHONE)


def _c(**args):
    return action_from_call(ToolCall("computer_use", args), FRAME, PHONE)


def test_mobile_actions():
    a = _m(action="click", coordinate=[546, 1204])
    assert (a.kind, a.tool, a.coordinate) == ("click", "mobile_use", (540, 1200))
    assert a.call == ToolCall("mobile_use", {"action": "click", "coordinate": [546, 1204]})
    a = _m(action="long_press", coordinate=[0, 2408], time=2)
    assert (a.coordinate, a.time) == ((0, 2399), 2)
    a = _m(action="swipe", coordinate=[546, 1806], coordinate2=[546, 602])
    assert (a.coordinate, a.coordinate2) == ((540, 1800), (540, 600))
    assert _m(action="key", text="volume_up").text == "volume_up"
    assert _m(action="type", text="héllo").text == "héllo"
    assert _m(action="system_button", button="Home").button == "Home"
    assert _m(action="open", text="Settings").text == "Settings"
    assert _m(action="wait", time=1.5).time == 1.5
    assert _m(action="terminate", status="failure").status == "failure"


def test_computer_actions():
    assert _c(action="key", keys=["ctrl", "c"]).keys == ["ctrl", "c"]
    assert _c(action="key", keys="enter").keys == ["enter"]
    assert _c(action="type", text="hi").text == "hi"
    assert _c(action="mouse_move", coordinate=[546, 1204]).coordinate == (540, 1200)
    assert _c(action="left_click_drag", coordinate=[1092, 0]).coordinate == (1079, 0)
    for click in ("left_click", "right_click", "middle_click", "double_click"):
        assert _c(action=click).coordinate is None
        a = _c(action=click, coordinate=[546, 1204])
        assert (a.kind, a.coordinate) == (click, (540, 1200))
    assert _c(action="scroll", pixels=-300).pixels == -300
    assert _c(action="scroll", pixels=5, coordinate=[546, 1204]).coordinate == (540, 1200)
    encoded = ToolCall("computer_use", '{"action": "wait", "time": 3}')  # type: ignore[arg-type]
    assert action_from_call(encoded, FRAME, PHONE).time == 3
    assert _c(action="wait", time="2").time == 2.0
    assert _c(action="terminate", status="success").status == "success"


@pytest.mark.parametrize("tool, args, action, param", [
    ("mobile_use", {"action": "fly"}, "fly", "action"),
    ("mobile_use", {}, None, "action"),
    ("mobile_use", {"action": "click"}, "click", "coordinate"),
    ("mobile_use", {"action": "swipe", "coordinate": [1, 2]}, "swipe", "coordinate2"),
    ("mobile_use", {"action": "long_press", "coordinate": [1, 2]}, "long_press", "time"),
    ("mobile_use", {"action": "system_button", "button": "Power"}, "system_button", "button"),
    ("mobile_use", {"action": "terminate"}, "terminate", "status"),
    ("mobile_use", {"action": "terminate", "status": "done"}, "terminate", "status"),
    ("mobile_use", {"action": "click", "coordinate": [1]}, "click", "coordinate"),
    ("mobile_use", {"action": "click", "coordinate": "here"}, "click", "coordinate"),
    ("mobile_use", {"action": "left_click", "coordinate": [1, 2]}, "left_click", "action"),
    ("computer_use", {"action": "key"}, "key", "keys"),
    ("computer_use", {"action": "key", "keys": []}, "key", "keys"),
    ("computer_use", {"action": "scroll"}, "scroll", "pixels"),
    ("computer_use", {"action": "wait", "time": "soon"}, "wait", "time"),
    ("computer_use", {"action": "click", "coordinate": [1, 2]}, "click", "action"),
    ("computer_use", {"action": "type", "text": 5}, "type", "text"),
    ("computer_use", "not json", None, None),
])
def test_action_errors_name_action_and_param(tool, args, action, param):
    with pytest.raises(ActionError) as e:
        action_from_call(ToolCall(tool, args), FRAME, PHONE)
    assert isinstance(e.value, ValueError)
    assert (e.value.action, e.value.param) == (action, param)
    assert repr(param) in str(e.value) or repr(action) in str(e.value) or "JSON object" in str(e.value)


def test_unknown_tool_and_expected_tool():
    with pytest.raises(ActionError, match="unknown tool 'browser'"):
        action_from_call(ToolCall("browser", {"action": "click"}), FRAME, PHONE)
    with pytest.raises(ActionError, match="expected mobile_use"):
        action_from_call(ToolCall("computer_use", {"action": "wait", "time": 1}), FRAME, PHONE, expect="mobile_use")


# --------------------------------------------------------------------------------------- history and messages

def test_history_text_format():
    steps = [ToolCall("mobile_use", {"action": "open", "text": "File Manager"}),
             {"name": "mobile_use", "arguments": {"action": "click", "coordinate": [935, 406]}}]
    assert history_text("Find the mp3", steps) == (
        "The user query: Find the mp3\n"
        "Task progress (You have done the following operation on the current device): "
        'Step 1: {"name": "mobile_use", "arguments": {"action": "open", "text": "File Manager"}}; '
        'Step 2: {"name": "mobile_use", "arguments": {"action": "click", "coordinate": [935, 406]}}; ')
    assert history_text("Go", []) == (
        "The user query: Go\nTask progress (You have done the following operation on the current device): ")


def test_build_messages_shape():
    shot = Image.new("RGB", (64, 48))
    tool = computer_use_tool(56, 56)
    msgs = build_messages("Open it", shot, [], tool, max_pixels=1000)
    assert msgs[0] == {"role": "system", "content": tool_system_prompt([tool])}
    user = msgs[1]
    assert user["role"] == "user"
    assert user["content"][0] == {"type": "text", "text": history_text("Open it", [])}
    assert user["content"][1]["type"] == "image" and user["content"][1]["image"] is shot
    assert user["content"][1]["max_pixels"] == 1000 and "min_pixels" not in user["content"][1]
    assert [p["type"] for p in user["content"]] == ["text", "image"]


def test_dry_run_executor_advances_and_repeats():
    a, b = Image.new("RGB", (10, 10)), Image.new("RGB", (10, 10))
    ex = DryRunExecutor([a, b])
    assert isinstance(ex, Executor)
    assert ex.screenshot() is a
    ex.execute(Action(kind="wait", tool="mobile_use", time=1))
    assert ex.screenshot() is b
    ex.execute(Action(kind="wait", tool="mobile_use", time=1))
    assert ex.screenshot() is b and len(ex.actions) == 2
    single = DryRunExecutor(a)
    single.execute(Action(kind="wait", tool="mobile_use", time=1))
    assert single.screenshot() is a


# ---------------------------------------------------------------------------------------------------- the loop

def _call(args: dict, thought: str = "") -> str:
    return f'{thought}\n<tool_call>\n{json.dumps({"name": "mobile_use", "arguments": args})}\n</tool_call>'


class Replay:
    """A stub model: returns recorded answers in order and keeps the messages it was given."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.seen = []

    def __call__(self, messages):
        self.seen.append(messages)
        return self.answers[len(self.seen) - 1]


@pytest.fixture()
def phone():
    return DryRunExecutor([Image.new("RGB", PHONE, c) for c in ("red", "green", "blue")])


def test_run_agent_mobile_episode(phone):
    gen = Replay([
        _call({"action": "click", "coordinate": [546, 1204]}, "The Settings icon is in the middle; tap it."),
        _call({"action": "swipe", "coordinate": [546, 1806], "coordinate2": [546, 602]}, "Scroll down the list."),
        _call({"action": "terminate", "status": "success"}, "Wi-Fi is on now."),
    ])
    seen_steps = []
    res = run_agent(gen, phone, "Turn on Wi-Fi", kind="mobile", on_step=seen_steps.append)
    assert (res.reason, res.status, res.success) == ("terminate", "success", True)
    assert len(res.steps) == 3 and seen_steps == res.steps
    assert all(s.error is None and s.resized == FRAME and s.device_size == PHONE for s in res.steps)
    acts = phone.actions
    assert [a.kind for a in acts] == ["click", "swipe", "terminate"]
    assert acts[0].coordinate == (540, 1200)
    assert (acts[1].coordinate, acts[1].coordinate2) == ((540, 1800), (540, 600))
    assert acts[2].status == "success"
    # every turn: the mobile tool prompt for the resized frame, the history, then the current screenshot
    assert all(m[0]["content"] == EXPECTED_MOBILE_SYSTEM for m in gen.seen)
    assert [m[1]["content"][1]["image"] for m in gen.seen] == phone.screens
    part = gen.seen[0][1]["content"][1]
    assert target_size(PHONE[1], PHONE[0], part) == (FRAME[1], FRAME[0])  # processor sees the stated frame
    third = gen.seen[2][1]["content"][0]["text"]
    assert third == history_text("Turn on Wi-Fi", [res.steps[0].call, res.steps[1].call])
    assert 'Step 1: {"name": "mobile_use", "arguments": {"action": "click", "coordinate": [546, 1204]}}; ' in third
    assert ('Step 2: {"name": "mobile_use", "arguments": {"action": "swipe", "coordinate": [546, 1806], '
            '"coordinate2": [546, 602]}}; ') in third
    assert gen.seen[0][1]["content"][0]["text"].endswith("current device): ")


def test_run_agent_max_steps(phone):
    gen = Replay([_call({"action": "wait", "time": 1})] * 5)
    res = run_agent(gen, phone, "Wait forever", kind="mobile", max_steps=2)
    assert (res.reason, res.status, res.success) == ("max_steps", None, False)
    assert len(res.steps) == 2 and len(phone.actions) == 2 and len(gen.seen) == 2


def test_run_agent_parse_error_stops(phone):
    gen = Replay([_call({"action": "click", "coordinate": [1, 1]}), "I am not sure what to do here."])
    res = run_agent(gen, phone, "Do it", kind="mobile")
    assert res.reason == "parse_error" and res.status is None
    last = res.steps[-1]
    assert (last.call, last.action) == (None, None) and last.error
    assert last.text == "I am not sure what to do here."
    assert len(phone.actions) == 1


def test_run_agent_invalid_action_stops(phone):
    gen = Replay([_call({"action": "click"})])
    res = run_agent(gen, phone, "Do it", kind="mobile")
    assert res.reason == "invalid_action" and "coordinate" in res.steps[0].error
    assert res.steps[0].call is not None and res.steps[0].action is None and phone.actions == []


def test_run_agent_computer_click_with_coordinate():
    ex = DryRunExecutor(Image.new("RGB", (1280, 720)))
    frame = screen_frame(1280, 720)
    answer = ('<tool_call>\n{"name": "computer_use", "arguments": {"action": "left_click", "coordinate": '
              f'[{frame[0] // 2}, {frame[1] // 2}]}}}}\n</tool_call>')
    res = run_agent(Replay([answer]), ex, "Click the middle", max_steps=1)
    assert res.reason == "max_steps"
    assert ex.actions[0].kind == "left_click" and ex.actions[0].coordinate == (640, 360)
