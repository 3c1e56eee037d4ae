"""Chat-completion request bodies (OpenAI fields + the vLLM extras) -> validated `ChatRequest`.

Unknown fields are ignored. Invalid ones raise `APIError(400)` naming the field and what it must be.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..messages import MessageError, normalize_conversation
from ..sampling import SamplingParams
from .config import ServeConfig
from .errors import bad_request
from .media import check_media_options

JSON_INSTRUCTION = "Answer with a single JSON object and nothing else."
PROC_KEYS = ("min_pixels", "max_pixels", "fps", "nframes", "max_frames", "min_frames", "total_pixels")


@dataclass
class ChatRequest:
    model: str | None
    messages: list[dict]  # normalised (qwenvl.messages) with tool prompts applied; media not yet resolved
    params: list[SamplingParams]  # one per choice (n)
    stream: bool = False
    include_usage: bool = False
    ignore_eos: bool = False
    proc_options: dict = field(default_factory=dict)
    tools: list[dict] | None = None
    response_format: str = "text"  # text | json_object | json_schema

    @property
    def n(self) -> int:
        return len(self.params)


def _num(body, key, lo=None, hi=None, integer=False, lo_open=False):
    v = body.get(key)
    if v is None:
        return None
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok or (lo is not None and (v <= lo if lo_open else v < lo)) or \
            (hi is not None and v > hi):
        kind = "an integer" if integer else "a number"
        rng = "" if lo is None and hi is None else (
            f" {'>' if lo_open else '>='} {lo}" if hi is None else f" in {'(' if lo_open else '['}{lo}, {hi}]")
        raise bad_request(f"{key} must be {kind}{rng}, got {v!r}", param=key)
    return v


def _strings(body, key) -> tuple[str, ...]:
    v = body.get(key)
    if v is None:
        return ()
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(s, str) and s for s in v) or len(v) > 16:
        raise bad_request(f"{key} must be a non-empty string or a list of up to 16 non-empty strings", param=key)
    return tuple(v)


def _ints(body, key) -> tuple[int, ...]:
    v = body.get(key)
    if v is None:
        return ()
    if isinstance(v, int) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in v):
        raise bad_request(f"{key} must be a list of token ids (integers >= 0)", param=key)
    return tuple(v)


def parse_chat_request(body, cfg: ServeConfig, defaults: dict, context_len: int) -> ChatRequest:
    """Validate a decoded JSON body; `defaults` are the checkpoint's generation defaults."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object like {\"model\": ..., \"messages\": [...]}")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_request("model must be a string", param="model")
    if body.get("logprobs") or body.get("top_logprobs") or body.get("prompt_logprobs"):
        raise bad_request("logprobs are not supported by this server; remove logprobs/top_logprobs", param="logprobs")
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise bad_request("stream must be true or false", param="stream")
    so = body.get("stream_options") or {}
    if not isinstance(so, dict):
        raise bad_request("stream_options must be an object like {\"include_usage\": true}", param="stream_options")
    n = _num(body, "n", 1, cfg.max_batch, integer=True) or 1
    max_tokens = _num(body, "max_completion_tokens", 1, integer=True) or _num(body, "max_tokens", 1, integer=True)
    top_k = _num(body, "top_k", -1, integer=True)
    opts = dict(
        max_new_tokens=max_tokens or cfg.max_tokens_default, min_new_tokens=_num(body, "min_tokens", 0, integer=True),
        temperature=_num(body, "temperature", 0, 2), top_p=_num(body, "top_p", 0, 1, lo_open=True),
        top_k=None if top_k is None else max(top_k, 0), min_p=_num(body, "min_p", 0, 1),
        repetition_penalty=_num(body, "repetition_penalty", 0, lo_open=True),
        presence_penalty=_num(body, "presence_penalty", -2, 2), frequency_penalty=_num(body, "frequency_penalty", -2, 2),
        seed=_num(body, "seed", integer=True), stop=_strings(body, "stop") or None,
        stop_token_ids=_ints(body, "stop_token_ids") or None)
    ignore_eos = bool(body.get("ignore_eos", False))
    messages = _messages(body.get("messages"))
    tools = _tools(body)
    fmt, constraint = _response_format(body.get("response_format"))
    if constraint is not None and tools:
        raise bad_request("a json_schema response_format cannot be combined with tools", param="response_format")
    opts["constraint"] = constraint
    if tools:
        messages = apply_tools(messages, tools, body.get("tool_choice"))
    if fmt == "json_object":
        messages = _add_system(messages, JSON_INSTRUCTION)
    proc = _proc_options(body.get("mm_processor_kwargs"), cfg)
    gen_defaults = dict(defaults)
    if opts["max_new_tokens"] is None:
        gen_defaults.setdefault("max_new_tokens", 256)
    try:
        base = SamplingParams.from_options(gen_defaults, **{k: v for k, v in opts.items() if v is not None})
    except (ValueError, TypeError) as e:
        raise bad_request(str(e).replace("max_new_tokens", "max_tokens").replace("min_new_tokens", "min_tokens"))
    if base.max_new_tokens >= context_len:
        raise bad_request(f"max_tokens={base.max_new_tokens} does not fit the model's {context_len}-token context",
                          param="max_tokens")
    params = [base if base.seed is None or k == 0 else _with_seed(base, base.seed + k) for k in range(n)]
    return ChatRequest(model=model, messages=messages, params=params, stream=bool(stream),
                       include_usage=bool(so.get("include_usage", False)), ignore_eos=ignore_eos, proc_options=proc,
                       tools=tools, response_format=fmt)


def _with_seed(p: SamplingParams, seed: int) -> SamplingParams:
    from dataclasses import replace
    return replace(p, seed=seed)


def _messages(raw) -> list[dict]:
    if not isinstance(raw, list) or not raw:
        raise bad_request("messages must be a non-empty list of {\"role\", \"content\"} objects", param="messages")
    conv = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise bad_request(f"messages[{i}] must be an object with role and content", param="messages")
        m = dict(m)
        if m.get("role") == "developer":
            m["role"] = "system"
        if m.get("role") == "assistant" and m.get("tool_calls"):
            m["content"] = _assistant_tool_text(m, i)
        elif m.get("role") == "tool":
            content = m.get("content")
            if isinstance(content, list):
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            m = {"role": "user", "content": f"<tool_response>\n{content or ''}\n</tool_response>"}
        m.pop("tool_calls", None)
        m.pop("tool_call_id", None)
        m.pop("name", None)
        conv.append(m)
    try:
        return normalize_conversation(conv, "messages")
    except MessageError as e:
        raise bad_request(str(e), param="messages") from None


def _assistant_tool_text(m: dict, i: int) -> str:
    text = m.get("content") if isinstance(m.get("content"), str) else ""
    blocks = []
    for tc in m["tool_calls"]:
        fn = tc.get("function") if isinstance(tc, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise bad_request(f"messages[{i}].tool_calls: each call needs function.name", param="messages")
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError:
                raise bad_request(f"messages[{i}].tool_calls: arguments of {fn['name']!r} are not valid JSON",
                                  param="messages") from None
        call = json.dumps({"name": fn["name"], "arguments": args}, ensure_ascii=False)
        blocks.append(f"<tool_call>\n{call}\n</tool_call>")
    return "\n".join(([text] if text else []) + blocks)


def _tools(body) -> list[dict] | None:
    tools = body.get("tools")
    if tools is None or tools == []:
        return None
    if not isinstance(tools, list):
        raise bad_request("tools must be a list of {\"type\": \"function\", \"function\": {...}}", param="tools")
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type", "function") != "function" or not isinstance(fn, dict) \
                or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise bad_request(f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": ..., "
                              "\"parameters\": {...}}}}", param="tools")
    choice = body.get("tool_choice", "auto")
    if choice == "none":
        return None
    return tools


def apply_tools(messages: list[dict], tools: list[dict], choice) -> list[dict]:
    """Qwen's function-calling system prompt (Nous style, `<tools>` + `<tool_call>`) for the request's tools."""
    from ..tasks.agent import tool_system_prompt

    names = [t["function"]["name"] for t in tools]
    extra = ""
    if choice in (None, "auto"):
        pass
    elif choice == "required":
        extra = "\n\nYou must call at least one of the functions."
    elif isinstance(choice, dict) and isinstance((choice.get("function") or {}).get("name"), str):
        name = choice["function"]["name"]
        if name not in names:
            raise bad_request(f"tool_choice names {name!r}, which is not in tools ({', '.join(names)})",
                              param="tool_choice")
        extra = f"\n\nYou must call the function {name}."
    else:
        raise bad_request("tool_choice must be 'none', 'auto', 'required' or {\"type\": \"function\", "
                          "\"function\": {\"name\": ...}}", param="tool_choice")
    objs = [{"type": "function", "function": t["function"]} for t in tools]
    if messages[0]["role"] == "system" and isinstance(messages[0]["content"], str):
        sys_text = messages[0]["content"]
        rest = messages[1:]
    elif messages[0]["role"] == "system":
        sys_text = "".join(p.get("text", "") for p in messages[0]["content"] if p["type"] == "text")
        rest = messages[1:]
    else:
        sys_text, rest = "You are a helpful assistant.", messages
    return [{"role": "system", "content": tool_system_prompt(objs, sys_text) + extra}] + rest


def _add_system(messages: list[dict], text: str) -> list[dict]:
    if messages[0]["role"] == "system" and isinstance(messages[0]["content"], str):
        return [{**messages[0], "content": f"{messages[0]['content']}\n\n{text}"}] + messages[1:]
    return [{"role": "system", "content": f"You are a helpful assistant.\n\n{text}"}] + messages


def grounding_kind(schema) -> str | None:
    """'bbox' / 'point' when a JSON schema describes grounding results (objects with bbox_2d / point_2d)."""
    if not isinstance(schema, dict):
        return None
    node = schema
    for _ in range(3):
        if node.get("type") == "array" and isinstance(node.get("items"), dict):
            node = node["items"]
        props = node.get("properties")
        if isinstance(props, dict):
            if "bbox_2d" in props:
                return "bbox"
            if "point_2d" in props:
                return "point"
            if len(props) == 1 and isinstance(next(iter(props.values())), dict):
                node = next(iter(props.values()))  # {"objects": {"type": "array", ...}} wrappers
                continue
        break
    return None


def _response_format(rf) -> tuple[str, str | None]:
    if rf is None:
        return "text", None
    if not isinstance(rf, dict) or rf.get("type") not in ("text", "json_object", "json_schema"):
        raise bad_request("response_format must be {\"type\": \"text\" | \"json_object\" | \"json_schema\"}",
                          param="response_format")
    if rf["type"] != "json_schema":
        return rf["type"], None
    js = rf.get("json_schema")
    schema = js.get("schema") if isinstance(js, dict) else None
    kind = grounding_kind(schema)
    if kind is None:
        raise bad_request("json_schema response_format is enforced for grounding schemas only (an array of objects "
                          "with bbox_2d [x1, y1, x2, y2] or point_2d [x, y] and label); use json_object for other JSON",
                          param="response_format")
    return "json_schema", kind


def _proc_options(kw, cfg: ServeConfig) -> dict:
    if kw is None:
        return {}
    if not isinstance(kw, dict):
        raise bad_request("mm_processor_kwargs must be an object like {\"max_pixels\": 401408, \"fps\": 1}",
                          param="mm_processor_kwargs")
    unknown = sorted(set(kw) - set(PROC_KEYS))
    if unknown:
        raise bad_request(f"mm_processor_kwargs: unsupported key(s) {unknown}; known: {list(PROC_KEYS)}",
                          param="mm_processor_kwargs")
    check_media_options(kw, cfg, "mm_processor_kwargs")
    return dict(kw)
