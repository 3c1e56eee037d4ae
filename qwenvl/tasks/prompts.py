"""Prompt builders with the official phrasings (capabilities.md §1–§4, the Qwen2.5-VL cookbooks).

Each builder returns the text of the user turn (or a system prompt); `messages()` puts text and media together in
the order the cookbooks use (the image after the text for grounding; before it elsewhere does not matter much).
"""
from __future__ import annotations

import json

DEFAULT_SYSTEM = "You are a helpful assistant."

# --------------------------------------------------------------------------------------------- grounding (§1.2)


def detect(category: str) -> str:
    """Detect every instance of a category (boxes as a JSON list)."""
    return f"Outline the position of each {category} and output all the coordinates in JSON format."


def refer(expression: str) -> str:
    """One box for a referring expression (cookbook phrasing)."""
    return f"Locate the {_strip_article(expression)}, output its bbox coordinates using JSON format."


def refcoco(expression: str) -> str:
    """The official RefCOCO evaluation prompt (maintainer, QwenLM #991)."""
    return f"Locate {expression} in this image and output the bbox coordinates in JSON format."


def point(expression: str, xml: bool = True) -> str:
    """A point on the described object: XML `<points>` as in the cookbook, or `point_2d` JSON."""
    if xml:
        return (f"point to the {_strip_article(expression)}, output its coordinates in XML format "
                "<points x y>object</points>")
    return f"Locate the {_strip_article(expression)}, output its point coordinates using JSON format."


def count(category: str | None = None) -> str:
    """Detect then count: a JSON list of boxes followed by a sentence with the number."""
    if category is None:
        return ("Please first output bbox coordinates and names of every item in this image in JSON format, and "
                "then answer how many items are there in the image.")
    return (f"Please first output bbox coordinates and names of every {category} in this image in JSON format, "
            f"and then answer how many {category} are there in the image.")


def with_schema(task: str, schema: dict) -> str:
    """Ask for extra attributes by showing the object schema, e.g. {"bbox_2d": [x1, y1, x2, y2], "label": "",
    "color": ""}."""
    return f"{task} Output each object as {json.dumps(schema, ensure_ascii=False)}."


PLAIN_BOX_SYSTEM = ("As an AI assistant, you specialize in accurate image object detection, delivering coordinates "
                    "in plain text format 'x1,y1,x2,y2 object'.")

# --------------------------------------------------------------------------------------------- documents, OCR (§2)

DOCUMENT_SYSTEM = ("You are an AI specialized in recognizing and extracting text from images. Your mission is to "
                   "analyze the image document and generate the result in QwenVL Document Parser HTML format using "
                   "specified tags while maintaining user privacy and data integrity.")
DOCUMENT_USER = "QwenVL HTML"
READ_TEXT = "Read all the text in the image."
READ_TEXT_ONLY = ("Please output only the text content from the image without any additional descriptions or "
                  "formatting.")
SPOT_TEXT = "Spotting all the text in the image with line-level, and output in JSON format."


def key_values(keys_or_template) -> str:
    """Key-information extraction from a template dict ({"company": "", ...}) or a list of field names."""
    if isinstance(keys_or_template, dict):
        template = keys_or_template
    else:
        template = {str(k): "" for k in keys_or_template}
    return f"Extract the key-value information in the format:{json.dumps(template, ensure_ascii=False)}"


# --------------------------------------------------------------------------------------------- video (§3.2–3.3)


def video_grounding(query: str) -> str:
    return f"Give the query: '{query}', when does the described content occur in the video?"


DENSE_CAPTION = ("Localize a series of activity events in the video, output the start and end timestamp for each "
                 "event, and describe each event with sentences. Provide the result in json format with 'mm:ss.ff' "
                 "format for time depiction.")


# --------------------------------------------------------------------------------------------- messages


def messages(text: str, media: list | None = None, *, system: str | None = None, media_first: bool = False,
             video_options: dict | None = None) -> list[dict]:
    """One user turn with `text` and media items (image: path/PIL/array, or ("video", source)); optional system."""
    parts: list[dict] = []
    for m in media or []:
        if isinstance(m, tuple) and len(m) == 2 and m[0] == "video":
            parts.append({"type": "video", "video": m[1], **(video_options or {})})
        else:
            parts.append({"type": "image", "image": m})
    text_part = {"type": "text", "text": text}
    content = parts + [text_part] if media_first else [text_part] + parts
    out = [] if system is None else [{"role": "system", "content": system}]
    out.append({"role": "user", "content": content})
    return out


def _strip_article(s: str) -> str:
    s = s.strip()
    low = s.lower()
    for a in ("the ", "a ", "an "):
        if low.startswith(a):
            return s[len(a):]
    return s
