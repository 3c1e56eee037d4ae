"""Training data: JSONL / JSON readers for SFT and DPO records, validation, tokenization with labels, per-sample MRoPE
positions, and exact token counts for packing.

Record formats (detected per record):

* messages: ``{"messages": [...]}`` in any shape the processor accepts (HF / qwen-vl-utils / OpenAI content lists).
  Relative media paths are resolved from the data file's directory (or ``data_path``). Media parts without a value
  (``{"type": "image"}``, the TRL layout) take their files, in order, from a top-level ``images``/``image`` (and
  ``videos``/``video``) list. At least one assistant turn; assistant turns are text only.
* qwen-vl-finetune / LLaVA: ``{"image": str | [str], "video": str | [str], "conversations": [{"from": "human" |
  "gpt" | "system", "value": "...<image>..."}]}``. Each ``<image>`` / ``<video>`` placeholder in a human turn takes
  the next file of its kind; there must be exactly one placeholder per file and none in gpt or system turns. As in
  qwen-vl-finetune, a human turn is split at its placeholders and each text piece is stripped (empty pieces dropped).
  A record with NO placeholders and exactly one media file (image or video) gets that file first in its first
  human turn. ``images`` / ``videos`` are accepted as aliases; a record's own ``data_path`` key (as qwen-vl-finetune
  writes it) overrides the base directory. In this format a ``video`` list means several videos (use the messages
  format for a video given as a list of frames). A record that is itself a list (qwen-vl-finetune's pre-packed
  format) is read as several samples, ``file:line[k]``.
* DPO pairs: ``{"prompt": [messages] | [conversations] | "text", "chosen": "answer", "rejected": "answer"}`` with
  media inside the prompt's messages, or top-level ``image``/``video`` with ``<image>`` placeholders for the
  conversations / string forms. ``chosen`` / ``rejected`` may also be an assistant message (or a list of one).

Labels (`label_spans`): loss only on assistant answers, from the token after ``<|im_start|>assistant\\n`` up to and
including the answer's ``<|im_end|>`` (not the newline after it). Assistant starts are found at token level: an
``<|im_start|>`` followed by tokens that decode to ``assistant\\n`` (one token ``assistant`` + ``\\n`` in the Qwen
vocabulary, several pieces in small BPE vocabularies). When the last header token also carries the start of the
answer (the Qwen pre-tokenizer merges ``\\n`` with an answer's leading newlines into one token), that token is
labelled, as it is the first answer token. Vision tokens are never labelled.
"""
from __future__ import annotations

import io
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import torch

from ..media.common import MediaError
from ..messages import MessageError, media_parts, normalize_conversation
from ..model import positions
from .types import IGNORE, DataError, PreferencePair, TrainSample

log = logging.getLogger(__name__)

HEADER = "assistant\n"
PLACEHOLDER_RE = re.compile(r"(<image>|<video>)")
LLAVA_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
# Chat-control tokens that must never appear literally in data text (they would forge turns or vision blocks).
RESERVED = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
            "<|image_pad|>", "<|video_pad|>")
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
# media options build_sample / SFTData accept besides min_pixels, max_pixels and fps (processor names)
VIDEO_OPTION_KEYS = ("video_min_pixels", "video_max_pixels", "nframes", "min_frames", "max_frames", "total_pixels")
_B64 = re.compile(r"[A-Za-z0-9+/=\s]+")


# ----------------------------------------------------------------------------------------------------------------------
# reading files


def iter_records(path: str | os.PathLike) -> Iterator[tuple[str, Any, tuple]]:
    """(source "file:line", record or DataError, locator) for every record of a JSONL file (*.jsonl, or any file
    not starting with '[') or a JSON list file.

    Blank lines are skipped. A record that is a list yields one item per element, source "file:line[k]". The
    locator re-reads the record with `read_record`. Bad JSON in a JSONL line yields a DataError in place of the
    record (the caller raises or skips it); a JSON list file that does not parse raises (it cannot be resynced)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found; check the path")
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    # As qwen-vl-finetune: *.jsonl is JSON Lines (a line may be a list: pre-packed samples); any other file that
    # starts with '[' is one JSON list.
    if path.suffix.lower() != ".jsonl" and head.startswith(b"["):
        yield from _iter_json_list(path)
        return
    with open(path, "rb") as fh:
        offset, line = 0, 0
        for raw in fh:
            line += 1
            start, offset = offset, offset + len(raw)
            src = f"{path}:{line}"
            try:
                text = _decode_line(raw, line)
            except UnicodeDecodeError:
                yield src, DataError(f"{src}: not UTF-8 text; save the file as UTF-8"), ("jsonl", start, line, None)
                continue
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                yield src, DataError(f"{src}: not valid JSON ({e.msg} at column {e.colno}); each line of a JSONL "
                                     "file must be one complete JSON object"), ("jsonl", start, line, None)
                continue
            yield from _expand(src, obj, ("jsonl", start, line))


def _decode_line(raw: bytes, line: int) -> str:
    if line == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    return raw.decode("utf-8")


def _expand(src: str, obj: Any, loc: tuple) -> Iterator[tuple[str, Any, tuple]]:
    if isinstance(obj, list):
        for k, item in enumerate(obj):
            yield f"{src}[{k}]", item, (*loc, k)
    else:
        yield src, obj, (*loc, None)


def _iter_json_list(path: Path) -> Iterator[tuple[str, Any, tuple]]:
    text = path.read_text(encoding="utf-8-sig")
    dec = json.JSONDecoder()
    ws = re.compile(r"\s*")
    i = ws.match(text, text.index("[") + 1).end()
    line, counted = 1, 0
    k = 0

    def line_at(pos: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, pos)
        counted = pos
        return line

    def bad(pos: int, what: str):
        return DataError(f"{path}:{line_at(pos)}: {what}; a JSON data file must be one list of objects "
                         "[{...}, {...}] (or use JSONL: one object per line)")

    if i < len(text) and text[i] == "]":
        return
    while True:
        if i >= len(text):
            raise bad(i, "the list is not closed")
        try:
            obj, j = dec.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise bad(e.pos, f"not valid JSON ({e.msg})") from None
        src = f"{path}:{line_at(i)}"
        yield from _expand(src, obj, ("json", k, line_at(i)))
        k += 1
        i = ws.match(text, j).end()
        if i < len(text) and text[i] == ",":
            i = ws.match(text, i + 1).end()
            continue
        if i < len(text) and text[i] == "]":
            if text[i + 1:].strip():
                raise bad(i + 1, "unexpected text after the closing ]")
            return
        raise bad(i, "expected ',' or ']' between records")


class _Files:
    """Re-reads records by locator: JSONL by byte offset, JSON lists from the parsed list (kept in memory)."""

    def __init__(self):
        self.paths: list[Path] = []
        self._lists: dict[int, list] = {}

    def add(self, path: Path) -> int:
        self.paths.append(path)
        return len(self.paths) - 1

    def read(self, fidx: int, loc: tuple) -> Any:
        kind, key, line, sub = loc
        path = self.paths[fidx]
        if kind == "json":
            if fidx not in self._lists:
                self._lists[fidx] = json.loads(path.read_text(encoding="utf-8-sig"))
            obj = self._lists[fidx][key]
        else:
            with open(path, "rb") as fh:
                fh.seek(key)
                obj = json.loads(_decode_line(fh.readline(), line))
        return obj if sub is None else obj[sub]


# ----------------------------------------------------------------------------------------------------------------------
# record -> canonical messages


def _err(where: str, field: str, problem: str, fix: str) -> DataError:
    return DataError(f"{where}: {field}: {problem}; {fix}")


def _check_text(text: str, where: str, field: str) -> None:
    for tok in RESERVED:
        if tok in text:
            raise _err(where, field, f"the text contains the reserved token {tok}",
                       "remove chat-control / vision tokens from the data (media go in image/video fields)")


def _resolve_media(value: Any, base: Path, where: str, field: str, allow_remote: bool) -> Any:
    """A media value with a relative path made absolute; checks that local files exist (never opens them)."""
    if isinstance(value, (list, tuple)):  # a video as a list of frames
        if not value:
            raise _err(where, field, "the frame list is empty", "give at least one frame")
        return [_resolve_media(v, base, where, f"{field} frame {i}", allow_remote) for i, v in enumerate(value)]
    if isinstance(value, dict) and "url" in value:
        value = value["url"]
    if not isinstance(value, str) or not value.strip():
        raise _err(where, field, f"the media value is {type(value).__name__ if value is not None else 'missing'}",
                   "give a file path (relative to the data file or data_path), a data URL or an http(s) URL")
    s = value.strip()
    low = s.lower()
    if low.startswith("data:"):
        return s
    if low.startswith(("http://", "https://")):
        if not allow_remote:
            raise _err(where, field, f"remote media {s[:80]!r} refused (remote media is off)",
                       "download the file and give its path, or enable allow_remote_media on the processor")
        return s
    p = Path(s[len("file://"):] if low.startswith("file://") else s).expanduser()
    full = p if p.is_absolute() else base / p
    if full.exists():
        return str(full)
    if len(s) > 64 and _B64.fullmatch(s):  # bare base64 payload
        return s
    raise _err(where, field, f"media file {s!r} not found (looked for {full})",
               "fix the path, or set data_path to the directory media paths are relative to")


def _media_pool(rec: Mapping, key: str, where: str) -> list:
    """Top-level media list of `key` ('image' or 'video', with the plural alias)."""
    alias = key + "s"
    if rec.get(key) is not None and rec.get(alias) is not None:
        raise _err(where, key, f"both '{key}' and '{alias}' are given", f"use only '{key}'")
    field = key if rec.get(key) is not None else alias
    v = rec.get(field)
    if v is None:
        return []
    if isinstance(v, str):
        return [v]
    if isinstance(v, list) and all(isinstance(x, (str, dict)) for x in v):
        return list(v)
    raise _err(where, field, f"expected a path or a list of paths, got {type(v).__name__}",
               f"write \"{key}\": \"a.jpg\" or \"{key}\": [\"a.jpg\", \"b.jpg\"]")


def _base_dir(rec: Mapping, base: Path | None) -> Path:
    if isinstance(rec.get("data_path"), str) and rec["data_path"]:
        return Path(rec["data_path"]).expanduser()
    return base if base is not None else Path.cwd()


def _answer_text(content: Any, where: str, field: str) -> str:
    """An assistant turn's text (string or text parts only)."""
    if content is None:
        content = ""
    if isinstance(content, dict):
        content = [content]
    if isinstance(content, list):
        texts = []
        for j, p in enumerate(content):
            if isinstance(p, str):
                texts.append(p)
            elif isinstance(p, dict) and (p.get("type") == "text" or (p.get("type") is None and "text" in p)) \
                    and isinstance(p.get("text"), str):
                texts.append(p["text"])
            else:
                raise _err(where, f"{field} part {j}", "assistant turns may contain only text",
                           "move images/videos into a user turn")
        content = "".join(texts)
    if not isinstance(content, str):
        raise _err(where, field, f"expected text, got {type(content).__name__}", "give the answer as a string")
    if not content.strip():
        raise _err(where, field, "the answer is empty", "give a non-empty answer or drop the turn")
    for ph in ("<image>", "<video>"):
        if ph in content:
            raise _err(where, field, f"the answer contains the placeholder {ph}",
                       "placeholders belong in human/user turns only; remove it from the answer")
    _check_text(content, where, field)
    return content


def _from_messages(rec: Mapping, msgs: Any, where: str, base: Path, allow_remote: bool, need_answer: bool,
                   field: str = "messages") -> list[dict]:
    try:
        norm = normalize_conversation(msgs, field)
    except (MessageError, MediaError) as e:
        raise DataError(f"{where}: {e}") from None
    pools = {"image": _media_pool(rec, "image", where), "video": _media_pool(rec, "video", where)}
    out: list[dict] = []
    for i, (raw, msg) in enumerate(zip(msgs if isinstance(msgs, list) else [msgs], norm)):
        f = f"{field}[{i}]"
        role = msg["role"]
        rest = {k: v for k, v in msg.items() if k != "content"}
        if role == "assistant":
            out.append({**rest, "content": _answer_text(raw.get("content"), where, f"{f}.content")})
            continue
        content = msg["content"]
        if isinstance(content, str):
            _check_text(content, where, f"{f}.content")
            out.append({**rest, "content": content})
            continue
        parts = []
        for j, p in enumerate(content):
            pf = f"{f}.content[{j}]"
            if p["type"] == "text":
                _check_text(p["text"], where, pf)
                parts.append({"type": "text", "text": p["text"]})
                continue
            value = p.get("value")
            if value is None:
                if not pools[p["type"]]:
                    raise _err(where, pf, f"the {p['type']} part has no file and the record's '{p['type']}' list "
                                          "is used up", f"put the path in the part ('{p['type']}': ...) or add "
                                                        f"one file per {p['type']} part to '{p['type']}'")
                value = pools[p["type"]].pop(0)
            value = _resolve_media(value, base, where, pf, allow_remote)
            opts = {k: v for k, v in p.items() if k not in ("type", "value")}
            parts.append({"type": p["type"], p["type"]: value, **opts})
        out.append({**rest, "content": parts})
    for kind, left in pools.items():
        if left:
            raise _err(where, kind, f"{len(left)} {kind}(s) are not used by any {{'type': '{kind}'}} part",
                       f"add one value-less {kind} part per file, or remove the extra files")
    if need_answer and not any(m["role"] == "assistant" for m in out):
        raise _err(where, field, "no assistant turn", "add at least one {'role': 'assistant', 'content': ...} turn")
    return out


def _from_conversations(rec: Mapping, conv: Any, where: str, base: Path, allow_remote: bool, need_answer: bool,
                        field: str = "conversations") -> list[dict]:
    if not isinstance(conv, list) or not conv:
        raise _err(where, field, "expected a non-empty list of turns",
                   "write [{\"from\": \"human\", \"value\": \"<image>\\n...\"}, {\"from\": \"gpt\", \"value\": ...}]")
    images, videos = _media_pool(rec, "image", where), _media_pool(rec, "video", where)
    turns = []
    for i, t in enumerate(conv):
        f = f"{field}[{i}]"
        if not isinstance(t, dict) or "from" not in t or "value" not in t:
            raise _err(where, f, "each turn needs 'from' and 'value'", "write {\"from\": \"human\", \"value\": ...}")
        role = LLAVA_ROLES.get(t["from"])
        if role is None:
            raise _err(where, f"{f}.from", f"unknown speaker {t['from']!r}", "use human, gpt or system")
        if not isinstance(t["value"], str):
            raise _err(where, f"{f}.value", f"expected a string, got {type(t['value']).__name__}", "give text")
        turns.append((f, role, t["value"]))
    n_img = sum(v.count("<image>") for _, r, v in turns if r == "user")
    n_vid = sum(v.count("<video>") for _, r, v in turns if r == "user")
    for f, role, v in turns:
        if role == "system" and PLACEHOLDER_RE.search(v):
            raise _err(where, f"{f}.value", "a system turn contains a placeholder", "move it to a human turn")
    if n_img == n_vid == 0 and len(images) + len(videos) == 1:
        first = next((k for k, (_, r, _) in enumerate(turns) if r == "user"), None)
        if first is not None:  # documented rule: a lone file with no placeholder goes first in the first human turn
            f, r, v = turns[first]
            turns[first] = (f, r, ("<image>" if images else "<video>") + v)
            n_img, n_vid = len(images), len(videos)
    for kind, n_ph, files in (("image", n_img, images), ("video", n_vid, videos)):
        if n_ph != len(files):
            raise _err(where, kind, f"{n_ph} <{kind}> placeholder(s) for {len(files)} {kind} file(s)",
                       f"put exactly one <{kind}> in the human turns per file, in order")
    images = [_resolve_media(v, base, where, f"image[{k}]", allow_remote) for k, v in enumerate(images)]
    videos = [_resolve_media(v, base, where, f"video[{k}]", allow_remote) for k, v in enumerate(videos)]
    out: list[dict] = []
    for f, role, v in turns:
        if role == "assistant":
            out.append({"role": "assistant", "content": _answer_text(v, where, f"{f}.value")})
            continue
        _check_text(v, where, f"{f}.value")
        if role == "system":
            out.append({"role": "system", "content": v})
            continue
        parts = []
        for seg in PLACEHOLDER_RE.split(v):
            if seg == "<image>":
                parts.append({"type": "image", "image": images.pop(0)})
            elif seg == "<video>":
                parts.append({"type": "video", "video": videos.pop(0)})
            elif seg.strip():
                parts.append({"type": "text", "text": seg.strip()})
        out.append({"role": "user", "content": parts})
    if need_answer and not any(m["role"] == "assistant" for m in out):
        raise _err(where, field, "no gpt turn", "add at least one {\"from\": \"gpt\", \"value\": ...} answer")
    return out


def record_kind(rec: Any) -> str:
    """'messages', 'conversations' or 'preference' (raises DataError for anything else; no source in the text)."""
    if not isinstance(rec, dict):
        raise DataError(f"a record must be a JSON object, got {type(rec).__name__}")
    if "prompt" in rec and ("chosen" in rec or "rejected" in rec):
        return "preference"
    if "messages" in rec:
        return "messages"
    if "conversations" in rec:
        return "conversations"
    raise DataError(f"record has no 'conversations' or 'messages' (keys: {sorted(rec)[:8]}); add "
                    "\"conversations\": [{\"from\": \"human\", ...}, {\"from\": \"gpt\", ...}] or \"messages\": [...]")


def _kind(rec: Any, where: str) -> str:
    try:
        return record_kind(rec)
    except DataError as e:
        raise DataError(f"{where}: {e}") from None


def parse_sft_record(rec: Any, *, source: str = "record", base_dir: str | os.PathLike | None = None,
                     allow_remote: bool = False) -> list[dict]:
    """A messages or conversations record -> canonical messages (absolute media paths) for `build_sample`."""
    kind = _kind(rec, source)
    base = _base_dir(rec, None if base_dir is None else Path(base_dir))
    if kind == "preference":
        raise DataError(f"{source}: a preference record (prompt/chosen/rejected) in SFT data; train it with "
                        "`qwenvl train dpo` (PreferenceData), or write the record as 'messages' / 'conversations'")
    if kind == "messages":
        return _from_messages(rec, rec["messages"], source, base, allow_remote, need_answer=True)
    return _from_conversations(rec, rec["conversations"], source, base, allow_remote, need_answer=True)


def _answer_field(v: Any, where: str, field: str) -> str:
    if isinstance(v, list) and len(v) == 1:
        v = v[0]
    if isinstance(v, dict):
        if v.get("role", "assistant") != "assistant":
            raise _err(where, field, f"the answer message has role {v.get('role')!r}", "use role 'assistant'")
        v = v.get("content")
    elif v is not None and not isinstance(v, str):
        raise _err(where, field, f"expected an answer string, got {type(v).__name__}",
                   "give the answer text (or one assistant message)")
    return _answer_text(v, where, field)


def parse_preference_record(rec: Any, *, source: str = "record", base_dir: str | os.PathLike | None = None,
                            allow_remote: bool = False) -> tuple[list[dict], str, str]:
    """A DPO record -> (prompt messages, chosen text, rejected text)."""
    kind = _kind(rec, source)
    if kind != "preference":
        raise DataError(f"{source}: not a preference record (needs 'prompt', 'chosen' and 'rejected'); train "
                        "SFT files with `qwenvl train sft` (SFTData)")
    base = _base_dir(rec, None if base_dir is None else Path(base_dir))
    for key in ("chosen", "rejected"):
        if key not in rec:
            raise _err(source, key, "missing", f"add \"{key}\": \"answer text\"")
    prompt = rec["prompt"]
    if isinstance(prompt, str):
        msgs = _from_conversations(rec, [{"from": "human", "value": prompt}], source, base, allow_remote, False,
                                   "prompt")
    elif isinstance(prompt, list) and prompt and all(isinstance(t, dict) and "from" in t for t in prompt):
        msgs = _from_conversations(rec, prompt, source, base, allow_remote, False, "prompt")
    elif isinstance(prompt, (list, dict)) and prompt:
        msgs = _from_messages(rec, prompt, source, base, allow_remote, False, "prompt")
    else:
        raise _err(source, "prompt", "expected a string, a list of messages or a list of conversation turns",
                   "write \"prompt\": [{\"role\": \"user\", \"content\": [...]}]")
    if msgs[-1]["role"] == "assistant":
        raise _err(source, "prompt", "the prompt ends with an assistant turn",
                   "end the prompt with the user turn the chosen/rejected answers reply to")
    chosen = _answer_field(rec["chosen"], source, "chosen")
    rejected = _answer_field(rec["rejected"], source, "rejected")
    if chosen == rejected:
        raise _err(source, "rejected", "chosen and rejected are identical", "give two different answers")
    return msgs, chosen, rejected


# ----------------------------------------------------------------------------------------------------------------------
# labels


def _answer_turn_spans(input_ids, tokenizer) -> list[list[tuple[int, int]]]:
    ids = input_ids.tolist() if isinstance(input_ids, torch.Tensor) else list(input_ids)
    sp = tokenizer.special_ids
    start_id, end_id = tokenizer.im_start_id, tokenizer.im_end_id
    vision = {sp[t] for t in VISION_TOKENS if t in sp}
    specials = set(getattr(tokenizer, "all_special_ids", ()) or ()) | set(sp.values())
    n = len(ids)
    turns: list[list[tuple[int, int]]] = []
    i = 0
    while i < n:
        if ids[i] != start_id:
            i += 1
            continue
        start = _header_end(ids, i + 1, tokenizer, specials)
        if start is None:
            i += 1
            continue
        end = start
        while end < n and ids[end] not in (end_id, start_id):
            end += 1
        stop = end + 1 if end < n and ids[end] == end_id else end  # include <|im_end|>
        spans, s = [], None
        for k in range(start, stop):
            if ids[k] in vision:
                if s is not None:
                    spans.append((s, k))
                s = None
            elif s is None:
                s = k
        if s is not None:
            spans.append((s, stop))
        if spans:
            turns.append(spans)
        i = max(stop, i + 1)
    return turns


def _header_end(ids: list[int], j: int, tokenizer, specials: set) -> int | None:
    """Index of the first answer token after an <|im_start|> at j-1 whose role decodes to 'assistant\\n'."""
    for k in range(j, min(j + len(HEADER) + 1, len(ids))):
        if ids[k] in specials:
            return None
        text = tokenizer.decode(ids[j:k + 1])
        if text == HEADER:
            return k + 1
        if text.startswith(HEADER):  # the last header token also starts the answer: it is an answer token
            return k
        if not HEADER.startswith(text):
            return None
    return None


def label_spans(input_ids, tokenizer) -> list[tuple[int, int]]:
    """[start, end) spans that take loss: each assistant answer after `<|im_start|>assistant\\n`, up to and including
    its `<|im_end|>`, with vision tokens cut out. `input_ids` is a 1-D tensor or list."""
    return [s for turn in _answer_turn_spans(input_ids, tokenizer) for s in turn]


def make_labels(input_ids: torch.Tensor, spans: Iterable[tuple[int, int]]) -> torch.Tensor:
    labels = torch.full_like(input_ids, IGNORE)
    for s, e in spans:
        labels[s:e] = input_ids[s:e]
    return labels


# ----------------------------------------------------------------------------------------------------------------------
# samples


def _media_defaults(min_pixels, max_pixels, fps, video_options: Mapping) -> dict:
    unknown = set(video_options) - set(VIDEO_OPTION_KEYS)
    if unknown:
        raise TypeError(f"unknown media option(s) {sorted(unknown)}; accepted: min_pixels, max_pixels, fps, "
                        f"{', '.join(VIDEO_OPTION_KEYS)}")
    d = {"min_pixels": min_pixels, "max_pixels": max_pixels, "fps": fps, **video_options}
    return {k: v for k, v in d.items() if v is not None}


def _positions(config, input_ids: torch.Tensor, image_grid_thw, video_grid_thw, second_per_grid_ts) -> torch.Tensor:
    pos, _ = positions.get_rope_index(
        input_ids.view(1, -1), None, image_grid_thw, video_grid_thw, second_per_grid_ts,
        image_token_id=config.image_token_id, video_token_id=config.video_token_id,
        vision_start_token_id=config.vision_start_token_id, spatial_merge_size=config.vision.spatial_merge_size,
        tokens_per_second=config.vision.tokens_per_second, frame_index=config.time_positions == "frame_index")
    return pos[:, 0, :].contiguous()


def _finish(processor, input_ids: torch.Tensor, media: dict, source: str, max_length: int | None,
            last_answer_only: bool) -> TrainSample:
    T = int(input_ids.shape[0])
    if max_length is not None and T > max_length:
        sp = processor.tokenizer.special_ids
        n_vis = int(((input_ids == sp["<|image_pad|>"]) | (input_ids == sp["<|video_pad|>"])).sum())
        raise DataError(f"{source}: the sample is {T} tokens long ({n_vis} visual), over max_length={max_length}; "
                        "lower max_pixels / fps / max_frames, split the conversation, or raise max_length "
                        "(samples are never truncated)")
    turns = _answer_turn_spans(input_ids, processor.tokenizer)
    if not turns:
        raise DataError(f"{source}: the rendered conversation has no assistant answer to train on; add an "
                        "assistant turn (or check that the chat template writes '<|im_start|>assistant\\n')")
    spans = turns[-1] if last_answer_only else [s for t in turns for s in t]
    labels = make_labels(input_ids, spans)
    pos = _positions(processor.config, input_ids, media.get("image_grid_thw"), media.get("video_grid_thw"),
                     media.get("second_per_grid_ts"))
    return TrainSample(input_ids=input_ids, labels=labels, position_ids=pos, source=source, **media)


def build_sample(processor, messages: list[dict], *, source: str = "", min_pixels: int | None = None,
                 max_pixels: int | None = None, fps: float | None = None, max_length: int | None = None,
                 last_answer_only: bool = False, **video_options) -> TrainSample:
    """Tokenize a whole conversation (add_generation_prompt=False) with training media limits, label its
    assistant answers, and compute its MRoPE positions. `video_options`: video_min_pixels, video_max_pixels,
    nframes, min_frames, max_frames, total_pixels. `last_answer_only` labels only the final answer (DPO).
    Raises DataError (naming `source`) for media that cannot be loaded or a sample over `max_length`."""
    defaults = _media_defaults(min_pixels, max_pixels, fps, video_options)
    limit = max(int(max_length or 0), int(processor.max_length))
    try:
        b = processor(messages, add_generation_prompt=False, max_length=limit, **defaults)
    except (ValueError, OSError) as e:
        msg = str(e)
        raise DataError(msg if source and msg.startswith(source) else f"{source}: {msg}") from None
    media = {k: getattr(b, k) for k in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw",
                                        "second_per_grid_ts") if getattr(b, k) is not None}
    return _finish(processor, b.input_ids[0].clone(), media, source, max_length, last_answer_only)


def _merge2(processor) -> int:
    return processor.config.vision.spatial_merge_size ** 2


def _with_answer(prompt: list[dict], answer: str) -> list[dict]:
    return [*prompt, {"role": "assistant", "content": answer}]


def build_pair(processor, record: Mapping, *, source: str = "", base_dir: str | os.PathLike | None = None,
               min_pixels: int | None = None, max_pixels: int | None = None, fps: float | None = None,
               max_length: int | None = None, **video_options) -> PreferencePair:
    """A DPO record -> PreferencePair. Both samples share the prompt (and its media, loaded once); each is labelled
    only on its final answer (+ <|im_end|>)."""
    prompt, chosen, rejected = parse_preference_record(record, source=source or "record", base_dir=base_dir,
                                                       allow_remote=processor.remote.allow)
    return _pair(processor, prompt, chosen, rejected, source, min_pixels=min_pixels, max_pixels=max_pixels, fps=fps,
                 max_length=max_length, **video_options)


def _pair(processor, prompt, chosen, rejected, source, *, max_length=None, **media_opts) -> PreferencePair:
    ch = build_sample(processor, _with_answer(prompt, chosen), source=source, max_length=max_length,
                      last_answer_only=True, **media_opts)
    # The rejected sample reuses the chosen one's media: same prompt, same files, same tokens per file.
    tok = processor.tokenizer
    try:
        text = processor.render(_with_answer(prompt, rejected), add_generation_prompt=False)
    except ValueError as e:
        raise DataError(f"{source}: {e}") from None
    sp = tok.special_ids
    m2 = _merge2(processor)
    queues = {sp["<|image_pad|>"]: [int(g.prod()) // m2 for g in (ch.image_grid_thw if ch.image_grid_thw is not None
                                                                   else [])],
              sp["<|video_pad|>"]: [int(g.prod()) // m2 for g in (ch.video_grid_thw if ch.video_grid_thw is not None
                                                                   else [])]}
    ids: list[int] = []
    for t in tok.encode(text):
        if t in queues:
            if not queues[t]:
                raise DataError(f"{source}: the rejected answer renders more vision placeholders than the prompt has "
                                "media; remove vision tokens from the answer")
            ids.extend([t] * queues[t].pop(0))
        else:
            ids.append(t)
    media = {k: getattr(ch, k) for k in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw",
                                         "second_per_grid_ts") if getattr(ch, k) is not None}
    rj = _finish(processor, torch.tensor(ids, dtype=torch.long), media, source, max_length, True)
    return PreferencePair(chosen=ch, rejected=rj, source=source)


# ----------------------------------------------------------------------------------------------------------------------
# token counts without decoding pixels


def _image_hw(value) -> tuple[int, int] | None:
    """(height, width) of an image from its header only; None when only a full load can tell."""
    from PIL import Image

    from ..media import image as im

    if not isinstance(value, str):
        return None
    s = value.strip()
    low = s.lower()
    try:
        if low.startswith("data:"):
            src = io.BytesIO(im.read_data_url(s))
        elif low.startswith(("http://", "https://")):
            return None
        else:
            p = Path(s[len("file://"):] if low.startswith("file://") else s).expanduser()
            if p.is_file():
                src = p
            elif len(s) > 64 and _B64.fullmatch(s):
                src = io.BytesIO(im.b64decode(s))
            else:
                return None
        with Image.open(src) as img:  # lazy: reads the header, not the pixels
            w, h = img.size
    except (MediaError, OSError, ValueError):
        return None
    return (h, w) if h > 0 and w > 0 else None


def _image_tokens(processor, part: dict, defaults: dict) -> int | None:
    from ..media import image as im

    hw = _image_hw(part.get("value"))
    if hw is None:
        return None
    opts = {k: part[k] for k in ("min_pixels", "max_pixels", "resized_height", "resized_width") if k in part}
    try:
        h, w = im.target_size(hw[0], hw[1], opts, int(defaults.get("min_pixels", processor.min_pixels)),
                              int(defaults.get("max_pixels", processor.max_pixels)), processor.factor)
    except MediaError:
        return None
    return (h // processor.factor) * (w // processor.factor)


def _video_ele(part: dict, defaults: dict) -> dict:
    """The options dict the processor hands fetch_video for this part (same precedence as Processor._video)."""
    from ..processor import video_options

    ele = video_options(part, defaults)
    ele["video"] = part.get("value")
    return ele


def _video_tokens(processor, part: dict, defaults: dict) -> int | None:
    from ..media import video as vid
    from ..media.common import IMAGE_FACTOR, MAX_PIXELS, MIN_PIXELS, smart_resize

    ele = _video_ele(part, defaults)
    value = ele["video"]
    temporal, f = processor.temporal, processor.factor
    try:
        if isinstance(value, (list, tuple)):  # frame list: every frame is used, padded to a whole temporal patch
            if not value:
                return None
            hw = _image_hw(value[0])
            if hw is None:
                return None
            rh, rw = ele.get("resized_height"), ele.get("resized_width")
            if rh is not None and rw is not None:
                h, w = smart_resize(rh, rw, IMAGE_FACTOR)
            else:
                h, w = smart_resize(hw[0], hw[1], IMAGE_FACTOR, min_pixels=ele.get("min_pixels") or MIN_PIXELS,
                                    max_pixels=ele.get("max_pixels") or MAX_PIXELS)
            n = len(value)
        elif isinstance(value, str) and not value.lower().startswith(("data:", "http://", "https://")):
            path = vid._local_path(value)
            if not os.path.isfile(path):
                return None
            container, stream = vid._open(path, repr(value))
            try:
                total = vid._claimed_frames(stream)
                rate = vid._stream_fps(container, stream, total)
                src_h, src_w = int(stream.height or 0), int(stream.width or 0)
            finally:
                container.close()
            if total < 2 or rate is None or not src_h or not src_w:
                return None
            indices, _, _ = vid._plan(ele, total, rate)
            n = len(indices)
            h, w = vid._target_size(ele, src_h, src_w, n)
        else:
            return None
    except (MediaError, OSError, ValueError):
        return None
    return math.ceil(n / temporal) * (h // f) * (w // f)


def count_tokens(processor, messages: list[dict], *, min_pixels: int | None = None, max_pixels: int | None = None,
                 fps: float | None = None, **video_options) -> int | None:
    """The exact token count `build_sample` would give, from the template and the media headers (image size,
    video container metadata) without decoding pixels; None when a media item cannot be sized that way (remote
    or data-URL videos, containers without frame counts)."""
    defaults = _media_defaults(min_pixels, max_pixels, fps, video_options)
    norm = normalize_conversation(messages)
    n = len(processor.tokenizer.encode(processor.render(messages, add_generation_prompt=False)))
    for _, part in media_parts(norm):
        t = _image_tokens(processor, part, defaults) if part["type"] == "image" else \
            _video_tokens(processor, part, defaults)
        if t is None:
            return None
        n += t - 1
    return n


# ----------------------------------------------------------------------------------------------------------------------
# datasets


class _RecordData:
    """Validated records of one or more files, indexed by (file, byte offset / list index, line) at open time."""

    kind = "sft"

    def __init__(self, paths, processor, *, min_pixels=None, max_pixels=None, fps=None, max_length=None,
                 on_error: str = "raise", data_path: str | os.PathLike | Mapping | None = None, **video_options):
        if on_error not in ("raise", "skip"):
            raise ValueError("on_error must be 'raise' or 'skip'")
        self.processor = processor
        self.max_length = max_length
        self.media_options = _media_defaults(min_pixels, max_pixels, fps, video_options)
        self.on_error = on_error
        self.skipped: list[str] = []  # the error message of every skipped record (each names file:line)
        self._files = _Files()
        self._bases: list[Path] = []
        self._index: list[tuple[int, tuple, str]] = []  # (file index, locator, source)
        self._counts: dict[int, Any] = {}
        for p in ([paths] if isinstance(paths, (str, os.PathLike)) else list(paths)):
            self._open(Path(p), data_path)

    def _open(self, path: Path, data_path) -> None:
        fidx = self._files.add(path)
        if isinstance(data_path, Mapping):
            base = data_path.get(str(path), data_path.get(os.fspath(path)))
        else:
            base = data_path
        self._bases.append(Path(base).expanduser() if base is not None else path.resolve().parent)
        for src, rec, loc in iter_records(path):
            try:
                if isinstance(rec, DataError):
                    raise rec
                self._parse(rec, src, fidx)
            except DataError as e:
                if self.on_error == "raise":
                    raise
                log.warning("skipping %s", e)
                self.skipped.append(str(e))
                continue
            self._index.append((fidx, loc, src))

    # subclass hooks
    def _parse(self, rec, source: str, fidx: int):
        return parse_sft_record(rec, source=source, base_dir=self._bases[fidx],
                                allow_remote=self.processor.remote.allow)

    def __len__(self) -> int:
        return len(self._index)

    def _i(self, i: int) -> int:
        n = len(self._index)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} records")
        return i % n

    def source(self, i: int) -> str:
        """'file:line' of record i."""
        return self._index[self._i(i)][2]

    def record(self, i: int) -> Any:
        """The raw JSON record i (re-read from its file)."""
        fidx, loc, _ = self._index[self._i(i)]
        return self._files.read(fidx, loc)

    def parsed(self, i: int):
        fidx, _, src = self._index[self._i(i)]
        return self._parse(self.record(i), src, fidx)

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)


class SFTData(_RecordData):
    """SFT records (messages or conversations format) from JSONL / JSON files. Records are validated and indexed
    at open time (JSON, fields, placeholders, answers, media files exist) without loading media; `__getitem__`
    builds the TrainSample. `on_error="skip"` drops bad records (logging each with its file:line; see `skipped`).
    `data_path`: base directory for relative media paths (a str for all files, or {file path: dir}); default: the
    directory of each data file."""

    def messages(self, i: int) -> list[dict]:
        """Canonical messages of record i (absolute media paths), as handed to `build_sample`."""
        return self.parsed(i)

    def __getitem__(self, i: int) -> TrainSample:
        return build_sample(self.processor, self.messages(i), source=self.source(i), max_length=self.max_length,
                            **self.media_options)

    def token_count(self, i: int) -> int:
        """Exact token count of sample i (text via the template, visual tokens from image headers / video
        metadata via smart_resize); loads the sample only when the media cannot be sized from headers."""
        i = self._i(i)
        if i not in self._counts:
            n = count_tokens(self.processor, self.messages(i), **self.media_options)
            self._counts[i] = n if n is not None else self[i].num_tokens
        return self._counts[i]


class PreferenceData(_RecordData):
    """DPO records (prompt / chosen / rejected) from JSONL / JSON files; like SFTData, with
    `__getitem__` -> PreferencePair."""

    def _parse(self, rec, source: str, fidx: int):
        return parse_preference_record(rec, source=source, base_dir=self._bases[fidx],
                                       allow_remote=self.processor.remote.allow)

    def __getitem__(self, i: int) -> PreferencePair:
        prompt, chosen, rejected = self.parsed(i)
        return _pair(self.processor, prompt, chosen, rejected, self.source(i), max_length=self.max_length,
                     **self.media_options)

    def token_counts(self, i: int) -> tuple[int, int]:
        """(chosen, rejected) exact token counts, from headers where possible."""
        i = self._i(i)
        if i not in self._counts:
            prompt, chosen, rejected = self.parsed(i)
            c = count_tokens(self.processor, _with_answer(prompt, chosen), **self.media_options)
            r = count_tokens(self.processor, _with_answer(prompt, rejected), **self.media_options)
            if c is None or r is None:
                pair = self[i]
                c, r = pair.chosen.num_tokens, pair.rejected.num_tokens
            self._counts[i] = (c, r)
        return self._counts[i]

    def token_count(self, i: int) -> int:
        """Tokens the pair occupies when both sequences go into one pack (chosen + rejected)."""
        return sum(self.token_counts(i))
