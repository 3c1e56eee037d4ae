"""Screenshot agents (computer use / mobile use) in the protocol Qwen2.5-VL was trained on.

The tool system prompt is Qwen-Agent's Nous-style function-call prompt (`NousFnCallPrompt`): the system text,
a blank line, then `# Tools` with one JSON function object per line inside `<tools></tools>`. The two tools are
the `mobile_use` / `computer_use` schemas of the Qwen2.5-VL cookbooks; their description states the screen
resolution, which is the *resized* screenshot size (`screen_frame`), and the model answers with coordinates in
that frame. `action_from_call` maps them to device pixels; `run_agent` runs the screenshot -> generate -> act loop
with the cookbook's plain-text history ("The user query: ...\\nTask progress (...): Step 1: {...}; ").
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Protocol, Sequence, runtime_checkable

from PIL import Image

from ..media.common import smart_resize
from .parse import parse_tool_calls
from .types import ParseError, ToolCall

DEFAULT_SYSTEM = "You are a helpful assistant."
MIN_PIXELS = 3136  # cookbook API path: 4 * 28 * 28
MAX_PIXELS = 12845056  # 16384 * 28 * 28
ARGS_FORMAT = "Format the arguments as a JSON object."

# Qwen-Agent nous_fncall_prompt.FN_CALL_TEMPLATE, verbatim; {tool_descs} is one json.dumps per line.
FN_CALL_TEMPLATE = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tool_descs}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""

HISTORY_PREFIX = "Task progress (You have done the following operation on the current device): "

_STATUS = ["success", "failure"]
_BUTTONS = ["Back", "Home", "Menu", "Enter"]
_XY = "(x, y): The x (pixels from the left edge) and y (pixels from the top edge) coordinates to move the mouse to."
_CLICKS = ("left_click", "right_click", "middle_click", "double_click")


# ----------------------------------------------------------------------------------------------- tool schemas

def _function(name: str, description: str, parameters: dict) -> dict:
    """The function object Qwen-Agent's BaseTool emitted (key order matters for the rendered prompt)."""
    return {"type": "function", "function": {"name_for_human": name, "name": name, "description": description,
                                             "parameters": parameters, "args_format": ARGS_FORMAT}}


def mobile_use_tool(display_width_px: int, display_height_px: int) -> dict:
    """The cookbook's `mobile_use` tool for a screenshot resized to display_width_px x display_height_px."""
    description = "\n".join([
        "Use a touchscreen to interact with a mobile device, and take screenshots.",
        "* This is an interface to a mobile device with touchscreen. You can perform actions like clicking, "
        "typing, swiping, etc.",
        "* Some applications may take time to start or process actions, so you may need to wait and take "
        "successive screenshots to see the results of your actions.",
        f"* The screen's resolution is {display_width_px}x{display_height_px}.",
        "* Make sure to click any buttons, links, icons, etc with the cursor tip in the center of the element. "
        "Don't click boxes on their edges unless asked.",
    ])
    actions = "\n".join([
        "The action to perform. The available actions are:",
        "* `key`: Perform a key event on the mobile device.",
        "    - This supports adb's `keyevent` syntax.",
        '    - Examples: "volume_up", "volume_down", "power", "camera", "clear".',
        "* `click`: Click the point on the screen with coordinate (x, y).",
        "* `long_press`: Press the point on the screen with coordinate (x, y) for specified seconds.",
        "* `swipe`: Swipe from the starting point with coordinate (x, y) to the end point with coordinates2 (x2, y2).",
        "* `type`: Input the specified text into the activated input box.",
        "* `system_button`: Press the system button.",
        "* `open`: Open an app on the device.",
        "* `wait`: Wait specified seconds for the change to happen.",
        "* `terminate`: Terminate the current task and report its completion status.",
    ])
    parameters = {
        "properties": {
            "action": {"description": actions, "enum": list(MOBILE_ACTIONS), "type": "string"},
            "coordinate": {"description": _XY + " Required only by `action=click`, `action=long_press`, and "
                                                "`action=swipe`.", "type": "array"},
            "coordinate2": {"description": _XY + " Required only by `action=swipe`.", "type": "array"},
            "text": {"description": "Required only by `action=key`, `action=type`, and `action=open`.",
                     "type": "string"},
            "time": {"description": "The seconds to wait. Required only by `action=long_press` and `action=wait`.",
                     "type": "number"},
            "button": {"description": "Back means returning to the previous interface, Home means returning to the "
                                      "desktop, Menu means opening the application background menu, and Enter means "
                                      "pressing the enter. Required only by `action=system_button`",
                       "enum": list(_BUTTONS), "type": "string"},
            "status": {"description": "The status of the task. Required only by `action=terminate`.",
                       "type": "string", "enum": list(_STATUS)},
        },
        "required": ["action"],
        "type": "object",
    }
    return _function("mobile_use", description, parameters)


def computer_use_tool(display_width_px: int, display_height_px: int) -> dict:
    """The cookbook's `computer_use` tool for a screenshot resized to display_width_px x display_height_px."""
    description = "\n".join([
        "Use a mouse and keyboard to interact with a computer, and take screenshots.",
        "* This is an interface to a desktop GUI. You do not have access to a terminal or applications menu. "
        "You must click on desktop icons to start applications.",
        "* Some applications may take time to start or process actions, so you may need to wait and take "
        "successive screenshots to see the results of your actions. E.g. if you click on Firefox and a window "
        "doesn't open, try wait and taking another screenshot.",
        f"* The screen's resolution is {display_width_px}x{display_height_px}.",
        "* Whenever you intend to move the cursor to click on an element like an icon, you should consult a "
        "screenshot to determine the coordinates of the element before moving the cursor.",
        "* If you tried clicking on a program or link but it failed to load, even after waiting, try adjusting "
        "your cursor position so that the tip of the cursor visually falls on the element that you want to click.",
        "* Make sure to click any buttons, links, icons, etc with the cursor tip in the center of the element. "
        "Don't click boxes on their edges unless asked.",
    ])
    actions = "\n".join([
        "The action to perform. The available actions are:",
        "* `key`: Performs key down presses on the arguments passed in order, then performs key releases in "
        "reverse order.",
        "* `type`: Type a string of text on the keyboard.",
        "* `mouse_move`: Move the cursor to a specified (x, y) pixel coordinate on the screen.",
        "* `left_click`: Click the left mouse button.",
        "* `left_click_drag`: Click and drag the cursor to a specified (x, y) pixel coordinate on the screen.",
        "* `right_click`: Click the right mouse button.",
        "* `middle_click`: Click the middle mouse button.",
        "* `double_click`: Double-click the left mouse button.",
        "* `scroll`: Performs a scroll of the mouse scroll wheel.",
        "* `wait`: Wait specified seconds for the change to happen.",
        "* `terminate`: Terminate the current task and report its completion status.",
    ])
    parameters = {
        "properties": {
            "action": {"description": actions, "enum": list(COMPUTER_ACTIONS), "type": "string"},
            "keys": {"description": "Required only by `action=key`.", "type": "array"},
            "text": {"description": "Required only by `action=type`.", "type": "string"},
            "coordinate": {"description": _XY + " Required only by `action=mouse_move` and `action=left_click_drag`.",
                           "type": "array"},
            "pixels": {"description": "The amount of scrolling to perform. Positive values scroll up, negative "
                                      "values scroll down. Required only by `action=scroll`.", "type": "number"},
            "time": {"description": "The seconds to wait. Required only by `action=wait`.", "type": "number"},
            "status": {"description": "The status of the task. Required only by `action=terminate`.",
                       "type": "string", "enum": list(_STATUS)},
        },
        "required": ["action"],
        "type": "object",
    }
    return _function("computer_use", description, parameters)


# action -> (required params, optional params)
MOBILE_ACTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "key": (("text",), ()), "click": (("coordinate",), ()), "long_press": (("coordinate", "time"), ()),
    "swipe": (("coordinate", "coordinate2"), ()), "type": (("text",), ()), "system_button": (("button",), ()),
    "open": (("text",), ()), "wait": (("time",), ()), "terminate": (("status",), ()),
}
COMPUTER_ACTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "key": (("keys",), ()), "type": (("text",), ()), "mouse_move": (("coordinate",), ()),
    "left_click": ((), ("coordinate",)), "left_click_drag": (("coordinate",), ()),
    "right_click": ((), ("coordinate",)), "middle_click": ((), ("coordinate",)),
    "double_click": ((), ("coordinate",)), "scroll": (("pixels",), ("coordinate",)), "wait": (("time",), ()),
    "terminate": (("status",), ()),
}
SCHEMAS = {"mobile_use": MOBILE_ACTIONS, "computer_use": COMPUTER_ACTIONS}
TOOLS: dict[str, Callable[[int, int], dict]] = {"mobile": mobile_use_tool, "computer": computer_use_tool}


def tool_system_prompt(tools: dict | Sequence[dict], system: str | None = DEFAULT_SYSTEM) -> str:
    """`system` + blank line + the Nous tool section (Qwen-Agent `NousFnCallPrompt`); system=None gives the section
    alone. Bare function dicts (without "type") are wrapped as {"type": "function", "function": f}."""
    if isinstance(tools, dict):
        tools = [tools]
    objs = [t if t.get("type") == "function" and "function" in t else {"type": "function", "function": t}
            for t in tools]
    section = FN_CALL_TEMPLATE.format(tool_descs="\n".join(json.dumps(t, ensure_ascii=False) for t in objs))
    return section if system is None else f"{system}\n\n{section}"


# ------------------------------------------------------------------------------------------------ coordinates

def screen_frame(width: int, height: int, min_pixels: int = MIN_PIXELS,
                 max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(resized_w, resized_h): the frame the model sees a width x height screenshot in (smart_resize, factor 28)."""
    h, w = smart_resize(height, width, factor=28, min_pixels=min_pixels, max_pixels=max_pixels)
    return w, h


def _scale(x: float, y: float, src: tuple[int, int], dst: tuple[int, int]) -> tuple[float, float]:
    sx = min(max(x * dst[0] / src[0], 0.0), dst[0] - 1.0)
    sy = min(max(y * dst[1] / src[1], 0.0), dst[1] - 1.0)
    return sx, sy


def to_device(x: float, y: float, resized: tuple[int, int], device_size: tuple[int, int]) -> tuple[float, float]:
    """Model-frame (resized screenshot) point -> device pixels, x * W_dev / W_resized, clipped to the screen."""
    return _scale(x, y, resized, device_size)


def to_model(x: float, y: float, resized: tuple[int, int], device_size: tuple[int, int]) -> tuple[float, float]:
    """Device point -> model-frame pixels (the inverse of `to_device`), clipped to the resized frame."""
    return _scale(x, y, device_size, resized)


# -------------------------------------------------------------------------------------------------- actions

class ActionError(ValueError):
    """A tool call that is not a valid action of its schema; `.action` and `.param` name the culprit."""

    def __init__(self, message: str, action: str | None = None, param: str | None = None):
        super().__init__(message)
        self.action = action
        self.param = param


@dataclass
class Action:
    """A normalised action. Coordinates are in DEVICE pixels (ints, clipped to the screen); `call` is the raw call
    with the model-frame coordinates. `tool` is "mobile_use" or "computer_use", `kind` the action name."""
    kind: str
    tool: str
    coordinate: tuple[int, int] | None = None
    coordinate2: tuple[int, int] | None = None
    text: str | None = None
    keys: list[str] | None = None
    pixels: float | None = None
    time: float | None = None
    button: str | None = None
    status: str | None = None
    call: ToolCall | None = None


def _point(value: Any, action: str, param: str, resized, device_size) -> tuple[int, int]:
    ok = (isinstance(value, (list, tuple)) and len(value) == 2
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value))
    if not ok:
        raise ActionError(f"action {action!r}: {param!r} must be [x, y] numbers in the screenshot frame, "
                          f"got {value!r}", action, param)
    x, y = to_device(float(value[0]), float(value[1]), resized, device_size)
    return round(x), round(y)


def _number(value: Any, action: str, param: str) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ActionError(f"action {action!r}: {param!r} must be a number, got {value!r}", action, param)
    return value


def _choice(value: Any, action: str, param: str, allowed: list[str]) -> str:
    if value not in allowed:
        raise ActionError(f"action {action!r}: {param!r} must be one of {allowed}, got {value!r}", action, param)
    return value


def action_from_call(call: ToolCall, resized: tuple[int, int], device_size: tuple[int, int],
                     expect: str | None = None) -> Action:
    """Validate a `mobile_use`/`computer_use` call against its schema and map its coordinates to the device.

    resized / device_size are (width, height). `expect` (a tool name) rejects calls to another tool. Any click
    action of computer_use takes an optional `coordinate` (the model emits one; the schema text does not list it).
    Raises ActionError for an unknown tool or action, a missing required parameter or a malformed value."""
    args = call.arguments
    if isinstance(args, str):  # arguments given as a JSON-encoded string
        try:
            args = json.loads(args)
        except ValueError:
            pass
    if not isinstance(args, dict):
        raise ActionError(f"tool call {call.name!r}: arguments must be a JSON object, got {call.arguments!r}")
    if call.name not in SCHEMAS or (expect is not None and call.name != expect):
        allowed = [expect] if expect else list(SCHEMAS)
        raise ActionError(f"unknown tool {call.name!r}; expected {' or '.join(allowed)}")
    schema = SCHEMAS[call.name]
    kind = args.get("action")
    if kind is None:
        raise ActionError(f"{call.name} call needs the 'action' parameter (one of {', '.join(schema)})", None, "action")
    if not isinstance(kind, str) or kind not in schema:
        raise ActionError(f"{call.name}: unknown action {kind!r}; valid actions: {', '.join(schema)}", kind, "action")
    required, optional = schema[kind]
    for p in required:
        if args.get(p) is None:
            raise ActionError(f"{call.name} action {kind!r} needs the {p!r} parameter", kind, p)
    act = Action(kind=kind, tool=call.name, call=call if args is call.arguments else ToolCall(call.name, args))
    for p in required + optional:
        v = args.get(p)
        if v is None:
            continue
        if p in ("coordinate", "coordinate2"):
            setattr(act, p, _point(v, kind, p, resized, device_size))
        elif p in ("time", "pixels"):
            setattr(act, p, _number(v, kind, p))
        elif p == "status":
            act.status = _choice(v, kind, p, _STATUS)
        elif p == "button":
            act.button = _choice(v, kind, p, _BUTTONS)
        elif p == "keys":
            keys = [v] if isinstance(v, str) else v
            if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
                raise ActionError(f"action {kind!r}: 'keys' must be a list of key names, got {v!r}", kind, p)
            act.keys = keys
        elif p == "text":
            if not isinstance(v, str):
                raise ActionError(f"action {kind!r}: 'text' must be a string, got {v!r}", kind, p)
            act.text = v
    return act


# ------------------------------------------------------------------------------------------------- executors

@runtime_checkable
class Executor(Protocol):
    """What the agent loop drives: a screen to look at and a way to act on it (device-pixel Actions)."""

    def screenshot(self) -> Image.Image: ...

    def execute(self, action: Action) -> None: ...


class DryRunExecutor:
    """Records every executed Action in `.actions`; screenshot k (0-based) is screens[k] after k actions, the last
    screen once they run out (a single image is always returned)."""

    def __init__(self, screens: Sequence[Image.Image] | Image.Image):
        self.screens = [screens] if isinstance(screens, Image.Image) else list(screens)
        if not self.screens:
            raise ValueError("DryRunExecutor needs at least one screenshot")
        self.actions: list[Action] = []

    def screenshot(self) -> Image.Image:
        return self.screens[min(len(self.actions), len(self.screens) - 1)]

    def execute(self, action: Action) -> None:
        self.actions.append(action)


# ----------------------------------------------------------------------------------------------- prompts

def _step_json(step: ToolCall | dict) -> str:
    d = step.to_dict() if isinstance(step, ToolCall) else step
    return json.dumps(d, ensure_ascii=False)


def history_text(task: str, steps: Sequence[ToolCall | dict]) -> str:
    """The cookbook user text: `The user query: <task>` then the task-progress line, `Step k: {call json}; ` per
    step (json.dumps defaults, model-frame coordinates). An empty history leaves the progress line empty."""
    progress = "".join(f"Step {i}: {_step_json(s)}; " for i, s in enumerate(steps, 1))
    return f"The user query: {task}\n{HISTORY_PREFIX}{progress}"


def build_messages(task: str, screenshot: Image.Image, steps: Sequence[ToolCall | dict], tool: dict | Sequence[dict],
                   *, system: str | None = DEFAULT_SYSTEM, min_pixels: int | None = None,
                   max_pixels: int | None = None) -> list[dict]:
    """[system (tool prompt), user (history text, current screenshot)] for `qwenvl` generate. min/max_pixels,
    when given, ride on the image part so the processor resizes it to the frame the tool description states."""
    image: dict[str, Any] = {"type": "image", "image": screenshot}
    if min_pixels is not None:
        image["min_pixels"] = min_pixels
    if max_pixels is not None:
        image["max_pixels"] = max_pixels
    return [{"role": "system", "content": tool_system_prompt(tool, system)},
            {"role": "user", "content": [{"type": "text", "text": history_text(task, steps)}, image]}]


# ------------------------------------------------------------------------------------------------- the loop

@dataclass
class AgentStep:
    """One turn: the model's raw text, its first tool call, the device Action, and the error if the turn failed.
    `resized` / `device_size` are the (width, height) frames used for the mapping."""
    text: str
    call: ToolCall | None = None
    action: Action | None = None
    error: str | None = None
    resized: tuple[int, int] | None = None
    device_size: tuple[int, int] | None = None


@dataclass
class AgentResult:
    """steps in order; status: the terminate status ("success"/"failure") or None; reason why the loop stopped:
    "terminate", "max_steps", "parse_error" (no tool call in the answer) or "invalid_action" (ActionError)."""
    steps: list[AgentStep] = field(default_factory=list)
    status: str | None = None
    reason: str = "max_steps"

    @property
    def success(self) -> bool:
        return self.reason == "terminate" and self.status == "success"

    @property
    def calls(self) -> list[ToolCall]:
        """The executed calls, in order (what the history text lists)."""
        return [s.action.call for s in self.steps if s.action is not None and s.action.call is not None]


def run_agent(generate: Callable[[list[dict]], str], executor: Executor, task: str, *,
              kind: Literal["computer", "mobile"] = "computer", max_steps: int = 10, min_pixels: int = MIN_PIXELS,
              max_pixels: int = MAX_PIXELS, system: str | None = DEFAULT_SYSTEM,
              on_step: Callable[[AgentStep], None] | None = None) -> AgentResult:
    """Screenshot -> frame -> messages -> generate -> first tool call -> Action -> execute, up to max_steps turns.

    `generate` maps messages to the model's text (e.g. `lambda m: vlm.generate(m).text`). The loop stops on
    `terminate` (the Action is executed too, and its status recorded), at max_steps, or on a model-side failure:
    no parseable tool call -> reason "parse_error"; a call that is not a valid action of the tool (ActionError)
    -> reason "invalid_action". Those failures are recorded as a last step with `.error` set and never raise;
    exceptions from `generate` or the executor propagate. Only executed calls enter the history."""
    if kind not in TOOLS:
        raise ValueError(f"kind must be 'computer' or 'mobile', got {kind!r}")
    tool_name = f"{kind}_use"
    result = AgentResult()
    history: list[ToolCall] = []
    for _ in range(max_steps):
        shot = executor.screenshot()
        device = shot.size
        resized = screen_frame(device[0], device[1], min_pixels, max_pixels)
        messages = build_messages(task, shot, history, TOOLS[kind](*resized), system=system,
                                  min_pixels=min_pixels, max_pixels=max_pixels)
        text = generate(messages)
        step = AgentStep(text=text, resized=resized, device_size=device)
        result.steps.append(step)
        try:
            step.call = parse_tool_calls(text)[0]
            step.action = action_from_call(step.call, resized, device, expect=tool_name)
        except ParseError as e:
            step.error, result.reason = str(e), "parse_error"
        except ActionError as e:
            step.error, result.reason = str(e), "invalid_action"
        if step.error is None:
            executor.execute(step.action)
            history.append(step.action.call)
        if on_step is not None:
            on_step(step)
        if step.error is not None:
            return result
        if step.action.kind == "terminate":
            result.status, result.reason = step.action.status, "terminate"
            return result
    result.reason = "max_steps"
    return result
