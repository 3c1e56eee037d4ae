"""Structured results: prompts, parsers, coordinate mapping, drawing, metrics, agents and the one-call task API.

Parsers (text -> results in the model's frame; only `ParseError` escapes):
    parse_grounding, parse_points, parse_count, parse_text_spotting, parse_ocr_lines, parse_key_values,
    parse_time_spans, parse_timestamp, parse_tool_calls, parse_document
Task API (prompt -> generate -> parse -> original coordinates; see `qwenvl.tasks.api`):
    ground, point, count, read_document, read_text, spot_text, extract, locate_event, dense_captions, next_action
"""
from .api import (ActionResult, DocumentResult, GroundingResult, KeyValueResult, TaskResult, TemporalResult,
                  TextResult, count, dense_captions, extract, ground, locate_event, next_action, point, read_document,
                  read_text, spot_text, structured)
from .coords import FrameMap
from .document import parse_document, render_qwenvl_html, to_html, to_markdown
from .parse import (extract_json, parse_count, parse_grounding, parse_key_values, parse_ocr_lines, parse_points,
                    parse_text_spotting, parse_time_spans, parse_timestamp, parse_tool_calls)
from .types import Box, Detection, DocBlock, ParseError, Point, TextItem, TimeSpan, ToolCall

__all__ = [
    "ActionResult", "Box", "Detection", "DocBlock", "DocumentResult", "FrameMap", "GroundingResult", "KeyValueResult",
    "ParseError", "Point", "TaskResult", "TemporalResult", "TextItem", "TextResult", "TimeSpan", "ToolCall", "count",
    "dense_captions", "read_document", "extract", "extract_json", "ground", "locate_event", "next_action",
    "parse_count", "parse_document", "parse_grounding", "parse_key_values", "parse_ocr_lines", "parse_points",
    "parse_text_spotting", "parse_time_spans", "parse_timestamp", "parse_tool_calls", "point", "read_text",
    "render_qwenvl_html", "spot_text", "structured", "to_html", "to_markdown",
]
