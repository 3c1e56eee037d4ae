"""Response objects: chat.completion, chat.completion.chunk (SSE), tool calls, and the `structured` extension.

The extension: each choice may carry `"structured"` with what the answer contains, in the ORIGINAL image's
pixels: grounding `objects` (bbox_2d / point_2d), document `blocks`, video `spans` (seconds), or `tool_calls`
plus, for computer_use / mobile_use calls, `actions` mapped to the screenshot's own pixels.
"""
from __future__ import annotations

import json
import time
import uuid

from ..tasks import structured as find_structured

TOOL_TAG = "<tool_call>"


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def usage_dict(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def structured_for(text: str, media) -> dict | None:
    """The extension object for one answer (None when the answer has nothing structured)."""
    try:
        found = find_structured(text, media)
    except Exception:  # a parser problem must never turn a good answer into an error
        return None
    if found and "tool_calls" in found and media:
        actions = _actions(found["tool_calls"], media)
        if actions:
            found["actions"] = actions
    return found


def _actions(calls: list[dict], media) -> list[dict]:
    from ..tasks.agent import SCHEMAS, ActionError, action_from_call
    from ..tasks.types import ToolCall

    images = [m for m in media if m.kind == "image"]
    if not images:
        return []
    info = images[-1]  # the current screenshot
    (oh, ow), (rh, rw) = info.original_size, info.resized_size
    out = []
    for c in calls:
        if c.get("name") not in SCHEMAS:
            continue
        try:
            a = action_from_call(ToolCall(c["name"], c.get("arguments", {})), (rw, rh), (ow, oh))
        except ActionError:
            continue
        out.append({k: v for k, v in vars(a).items() if k != "call" and v is not None})
    return out


def tool_calls_in(text: str) -> tuple[str | None, list[dict]] | None:
    """(content before the first call or None, OpenAI tool_calls) when the answer calls tools, else None."""
    from ..tasks import ParseError, parse_tool_calls

    if TOOL_TAG not in text:
        return None
    try:
        calls = parse_tool_calls(text)
    except ParseError:
        return None
    content = text[:text.find(TOOL_TAG)].strip() or None
    return content, [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                      "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)}}
                     for c in calls]


class ToolTextFilter:
    """For streams with tools: passes text through until a `<tool_call>` starts (holding back a possible start of
    the tag); what follows is parsed at the end."""

    def __init__(self):
        self.emitted = ""
        self._pending = ""
        self.in_call = False

    def feed(self, delta: str) -> str:
        if self.in_call:
            return ""
        buf = self._pending + delta
        i = buf.find(TOOL_TAG)
        if i >= 0:
            self.in_call = True
            self._pending = ""
            out = buf[:i]
        else:
            keep = next((n for n in range(min(len(buf), len(TOOL_TAG) - 1), 0, -1) if TOOL_TAG.startswith(buf[-n:])), 0)
            out, self._pending = buf[:len(buf) - keep], buf[len(buf) - keep:]
        self.emitted += out
        return out


class Choice:
    """Accumulates one choice of a request."""

    def __init__(self, index: int):
        self.index = index
        self.text = ""
        self.generation = None
        self.filter = ToolTextFilter()

    def final_message(self, tools: bool) -> tuple[dict, str]:
        g = self.generation
        msg: dict = {"role": "assistant", "content": g.text}
        reason = g.finish_reason
        calls = tool_calls_in(g.text) if tools else None
        if calls is not None:
            msg["content"], msg["tool_calls"] = calls
            reason = "tool_calls"
        return msg, reason


def completion(cid: str, model: str, created: int, choices: list[Choice], tools: bool) -> dict:
    out, prompt, completion_tokens = [], 0, 0
    for c in choices:
        msg, reason = c.final_message(tools)
        item = {"index": c.index, "message": msg, "logprobs": None, "finish_reason": reason}
        found = structured_for(c.generation.text, c.generation.media)
        if found is not None:
            item["structured"] = found
        out.append(item)
        prompt = c.generation.usage.prompt_tokens
        completion_tokens += c.generation.usage.completion_tokens
    return {"id": cid, "object": "chat.completion", "created": created, "model": model, "choices": out,
            "usage": usage_dict(prompt, completion_tokens)}


def chunk(cid: str, model: str, created: int, choices: list[dict], usage: dict | None = None) -> dict:
    d = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices}
    if usage is not None:
        d["usage"] = usage
    return d


def final_chunks(cid: str, model: str, created: int, c: Choice, tools: bool) -> list[dict]:
    """The closing chunk(s) of one streamed choice: leftover text or tool_calls, finish_reason, extension."""
    g = c.generation
    out = []
    calls = tool_calls_in(g.text) if tools else None
    reason = g.finish_reason
    if calls is not None:
        deltas = [{"index": k, **tc} for k, tc in enumerate(calls[1])]
        out.append(chunk(cid, model, created, [{"index": c.index, "delta": {"tool_calls": deltas},
                                                "logprobs": None, "finish_reason": None}]))
        reason = "tool_calls"
    elif tools:
        rest = g.text[len(c.filter.emitted):]
        if rest:
            out.append(chunk(cid, model, created, [{"index": c.index, "delta": {"content": rest},
                                                    "logprobs": None, "finish_reason": None}]))
    last = {"index": c.index, "delta": {}, "logprobs": None, "finish_reason": reason}
    found = structured_for(g.text, g.media)
    if found is not None:
        last["structured"] = found
    out.append(chunk(cid, model, created, [last]))
    return out


def now() -> int:
    return int(time.time())
