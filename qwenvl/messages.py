"""Conversations in the shapes users have (HF / qwen-vl-utils content lists, OpenAI parts) normalised to one
internal form: messages whose content is a string or a list of parts {"type": "text"|"image"|"video", ...}."""
from __future__ import annotations

from typing import Any

from .media.common import MediaError

ROLES = ("system", "user", "assistant", "tool")
MEDIA_OPTIONS = ("min_pixels", "max_pixels", "resized_height", "resized_width", "fps", "nframes", "min_frames",
                 "max_frames", "video_start", "video_end", "total_pixels", "sample_fps")


class MessageError(ValueError):
    """A conversation that cannot be rendered; the message names the item and the fix."""


def is_batch(messages: Any) -> bool:
    """A list of conversations (each a list of message dicts) rather than one conversation."""
    return isinstance(messages, (list, tuple)) and len(messages) > 0 and all(isinstance(m, (list, tuple))
                                                                             for m in messages)


def _url(v) -> Any:
    return v.get("url") if isinstance(v, dict) else v


def normalize_part(item: Any, where: str) -> dict:
    """One content item -> {"type": "text", "text"} | {"type": "image"|"video", "value", **options}."""
    if isinstance(item, str):
        return {"type": "text", "text": item}
    if not isinstance(item, dict):
        raise MessageError(f"{where}: a content part must be a dict or a string, got {type(item).__name__}")
    t = item.get("type")
    opts = {k: item[k] for k in MEDIA_OPTIONS if item.get(k) is not None}
    if t in ("input_audio", "audio_url", "audio") or "input_audio" in item or "audio_url" in item:
        raise MessageError(f"{where}: audio parts are not supported by Qwen2.5-VL; remove the audio part")
    if t == "image" or (t is None and "image" in item) or (t == "image" and "image" in item):
        value = item.get("image", item.get("image_url"))
        return {"type": "image", "value": _url(value), **opts, **_nested_opts(item.get("image_url"))}
    if t == "image_url" or (t is None and "image_url" in item):
        value = item.get("image_url", item.get("image"))
        return {"type": "image", "value": _url(value), **opts, **_nested_opts(value)}
    if t == "video" or (t is None and "video" in item):
        return {"type": "video", "value": item.get("video", _url(item.get("video_url"))), **opts}
    if t == "video_url" or (t is None and "video_url" in item):
        value = item.get("video_url", item.get("video"))
        return {"type": "video", "value": _url(value), **opts, **_nested_opts(value)}
    if t == "text" or (t is None and "text" in item):
        text = item.get("text")
        if not isinstance(text, str):
            raise MessageError(f"{where}: a text part needs a string 'text' field")
        return {"type": "text", "text": text}
    raise MessageError(f"{where}: unknown content part type {t!r} (keys {sorted(item)}); use text, image, "
                       "image_url, video or video_url")


def _nested_opts(v) -> dict:
    return {k: v[k] for k in MEDIA_OPTIONS if isinstance(v, dict) and v.get(k) is not None}


def normalize_conversation(conv: Any, where: str = "conversation") -> list[dict]:
    if isinstance(conv, dict):
        conv = [conv]
    if not isinstance(conv, (list, tuple)) or not conv:
        raise MessageError(f"{where}: expected a non-empty list of messages like "
                           "[{'role': 'user', 'content': [...]}]")
    out = []
    for i, msg in enumerate(conv):
        w = f"{where}, message {i}"
        if not isinstance(msg, dict) or "role" not in msg:
            raise MessageError(f"{w}: each message needs a 'role' and 'content'")
        role = msg["role"]
        if role not in ROLES:
            raise MessageError(f"{w}: unknown role {role!r}; use one of {', '.join(ROLES)}")
        content = msg.get("content")
        if content is None:
            content = ""
        if isinstance(content, str):
            out.append({**{k: v for k, v in msg.items() if k != "content"}, "content": content})
            continue
        if isinstance(content, dict):
            content = [content]
        if not isinstance(content, (list, tuple)):
            raise MessageError(f"{w}: content must be a string or a list of parts")
        parts = [normalize_part(p, f"{w}, part {j}") for j, p in enumerate(content)]
        out.append({**{k: v for k, v in msg.items() if k != "content"}, "content": parts})
    return out


def template_view(conv: list[dict]) -> list[dict]:
    """What the chat template sees: media parts reduced to {"type": "image"} / {"type": "video"}."""
    view = []
    for msg in conv:
        c = msg["content"]
        if isinstance(c, list):
            c = [{"type": p["type"]} if p["type"] != "text" else {"type": "text", "text": p["text"]} for p in c]
        view.append({**msg, "content": c})
    return view


def media_parts(conv: list[dict]) -> list[tuple[str, dict]]:
    """(location, part) for every image/video part, in prompt order."""
    found = []
    for i, msg in enumerate(conv):
        if isinstance(msg["content"], list):
            for j, p in enumerate(msg["content"]):
                if p["type"] in ("image", "video"):
                    found.append((f"message {i}, part {j} ({p['type']})", p))
    return found


def check_value(part: dict, where: str) -> None:
    if part.get("value") is None:
        raise MediaError(f"{where}: the {part['type']} part has no value; put the path, URL or data in "
                         f"'{part['type']}'")
