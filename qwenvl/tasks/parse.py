"""Lenient parsers for Qwen2.5-VL task outputs: grounding, points, counting, text spotting, key-value
extraction, time spans and tool calls.

Every public parser returns its result or raises `ParseError`, whatever the input. The JSON reader is our
own: it finds JSON inside Markdown fences or prose and accepts single quotes, Python literals, unquoted keys,
trailing or missing commas, unescaped inner quotes and output cut at the token limit (complete list items
are kept, the partial last one dropped).
"""
from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from qwenvl.tasks.types import Box, Detection, ParseError, TextItem, TimeSpan, ToolCall

__all__ = ["parse_grounding", "parse_points", "parse_count", "parse_text_spotting", "parse_ocr_lines",
           "parse_key_values", "parse_time_spans", "parse_timestamp", "parse_tool_calls", "extract_json"]

# --- tolerant JSON reader ---------------------------------------------------------------------------------


class _Bad(Exception):
    """No JSON value at this position."""


_NUM_RE = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_WORD_RE = re.compile(r"[-+]?[A-Za-z_$][\w$]*")
_LITERALS: dict[str, Any] = {"true": True, "false": False, "null": None, "none": None, "undefined": None,
                             "nan": math.nan, "infinity": math.inf, "inf": math.inf}
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "/": "/", "\\": "\\", '"': '"', "'": "'"}
_STR_STOP = {'"': re.compile(r'[\\"]'), "'": re.compile(r"[\\']")}
_HEX = re.compile(r"[0-9a-fA-F]+")
_HEX_LEN = {"u": 4, "x": 2, "U": 8}
_SURROGATES = re.compile("[\ud800-\udbff][\udc00-\udfff]")
_NEXT_KEY_RE = re.compile(r"""["'][^"'\n]{0,80}["']\s*:""")
_CLOSE = {"[": "]", "(": ")", "{": "}"}
_MAX_DEPTH = 40


def _closes(s: str, k: int) -> bool:
    """Does a quote just before s[k] end its string? Only if a delimiter or a next key follows (so that
    unescaped quotes inside model text survive)."""
    while k < len(s) and s[k].isspace():
        k += 1
    return k >= len(s) or s[k] in ",:}])" or bool(_NEXT_KEY_RE.match(s, k))


def _pair_surrogates(t: str) -> str:
    return _SURROGATES.sub(lambda m: chr(0x10000 + ((ord(m[0][0]) - 0xD800) << 10) + ord(m[0][1]) - 0xDC00), t)


class _Reader:
    """Recursive-descent reader of one JSON-ish value. `value()` returns (value, complete); complete is False
    when the text ends inside the value. `dropped` is set when a partial child had to be discarded."""

    def __init__(self, s: str, i: int):
        self.s, self.i, self.n, self.dropped = s, i, len(s), False

    def _ws(self) -> bool:
        while self.i < self.n and self.s[self.i].isspace():
            self.i += 1
        return self.i < self.n

    def value(self, depth: int = 0) -> tuple[Any, bool]:
        if depth > _MAX_DEPTH:
            raise _Bad
        if not self._ws():
            return None, False
        c = self.s[self.i]
        if c in _CLOSE:
            return self._container(depth, _CLOSE[c])
        if c in "\"'":
            return self._str()
        return self._num() if _NUM_RE.match(self.s, self.i) else self._word()

    def _container(self, depth: int, close: str) -> tuple[Any, bool]:
        self.i += 1
        out: Any = {} if close == "}" else []
        while True:
            if not self._ws():
                return out, False
            c = self.s[self.i]
            if c in ",]})":
                self.i += 1
                if c == close:
                    return out, True
                if c != ",":
                    raise _Bad
                continue
            ok = True
            if close == "}":
                key, ok = self._key()
            if ok:
                v, ok = self.value(depth + 1)
            if not ok:
                self.dropped = True
                return out, False
            if close == "}":
                out[key] = v
            else:
                out.append(v)

    def _key(self) -> tuple[str, bool]:
        c = self.s[self.i]
        if c in "\"'":
            key, ok = self._str()
        elif _NUM_RE.match(self.s, self.i):
            k, ok = self._num()
            key = str(k)
        elif m := _WORD_RE.match(self.s, self.i):
            key, ok, self.i = m.group(), m.end() < self.n, m.end()
        else:
            raise _Bad
        if not ok or not self._ws():
            return key, False
        if self.s[self.i] not in ":=":
            raise _Bad
        self.i += 1
        return key, True

    def _str(self) -> tuple[str, bool]:
        s, n, q = self.s, self.n, self.s[self.i]
        i, buf = self.i + 1, []
        while m := _STR_STOP[q].search(s, i):
            j = m.start()
            buf.append(s[i:j])
            if s[j] == q:
                if _closes(s, j + 1):
                    self.i = j + 1
                    return _pair_surrogates("".join(buf)), True
                buf.append(q)
                i = j + 1
                continue
            e, k = s[j + 1:j + 2], _HEX_LEN.get(s[j + 1:j + 2], 0)
            if not e or (j + 2 + k > n and not s[j + 2:].strip("0123456789abcdefABCDEF")):
                break  # cut inside an escape
            if k and _HEX.fullmatch(h := s[j + 2:j + 2 + k]) and int(h, 16) <= 0x10FFFF:
                buf.append(chr(int(h, 16)))  # \uXXXX, and Python's \xXX / \UXXXXXXXX
                i = j + 2 + k
            else:
                buf.append(_ESCAPES.get(s[j + 1], "\\" + s[j + 1]))
                i = j + 2
        self.i = n
        return "".join(buf), False

    def _num(self) -> tuple[Any, bool]:
        m = _NUM_RE.match(self.s, self.i)
        assert m is not None
        t, self.i = m.group(), m.end()
        if self.i >= self.n:
            return None, False  # the number may go on past the cut
        if self.s[self.i].isalnum() or self.s[self.i] == "_":
            raise _Bad
        try:
            return (float(t) if any(ch in t for ch in ".eE") else int(t)), True
        except ValueError:
            raise _Bad from None

    def _word(self) -> tuple[Any, bool]:
        m = _WORD_RE.match(self.s, self.i)
        if not m:
            raise _Bad
        self.i, w = m.end(), m.group().lower()
        v = _LITERALS.get(w.lstrip("+-"), _Bad)
        if isinstance(v, float) or (v is not _Bad and w[0] not in "+-"):
            return (-v if w[0] == "-" else v), True
        if self.i >= self.n and any(k.startswith(w) for k in _LITERALS):
            return None, False
        raise _Bad


@dataclass
class _Found:
    """One JSON value found in the text: complete = properly closed; dropped = a partial child was cut."""
    value: Any
    complete: bool
    dropped: bool
    start: int
    end: int


_FENCE_RE = re.compile(r"```[ \t]*[\w+.-]*[^\S\n]*\n?(.*?)(?:```|\Z)", re.S)
_OPEN_RE = re.compile(r"[\[{]")
_SPECIAL_RE = re.compile(r"<\|\w+\|>")


def _candidates(text: str, budget: int = 256) -> Iterator[_Found]:
    """Every JSON list/object in the text: inside Markdown fences first (in order), then in the whole text."""
    for lo, hi in [(m.start(1), m.end(1)) for m in _FENCE_RE.finditer(text)] + [(0, len(text))]:
        sub, i = text[lo:hi], 0
        while budget > 0 and (m := _OPEN_RE.search(sub, i)):
            budget -= 1
            r = _Reader(sub, m.start())
            try:
                v, ok = r.value()
            except _Bad:
                i = m.start() + 1
                continue
            yield _Found(v, ok, r.dropped, lo + m.start(), lo + r.i)
            i = max(r.i, m.start() + 1)


def _first(text: str, convert: Callable[[_Found], Any]) -> Any:
    """The first candidate's conversion that is not None, else None."""
    return next((r for f in _candidates(text) if (r := convert(f)) is not None), None)


def _guard(fn: Callable) -> Callable:
    """Make a parser raise only ParseError: non-str input and any internal failure become ParseError."""
    @functools.wraps(fn)
    def wrapper(text: Any, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(text, str):
            try:
                raw = repr(text)[:200]
            except Exception:
                raw = "<unrepresentable>"
            raise ParseError(f"expected a str, got {type(text).__name__}", raw)
        try:
            return fn(text, *args, **kwargs)
        except ParseError:
            raise
        except Exception as e:  # the contract: only ParseError escapes
            raise ParseError(f"could not parse ({type(e).__name__})", text) from None
    return wrapper


@_guard
def extract_json(text: str) -> Any:
    """The first JSON list or object in model output (fences, prose, truncation and Python literals allowed)."""
    r = _first(text, lambda f: [f.value] if (f.complete or isinstance(f.value, list)) else None)
    if r is None:
        raise ParseError("no JSON found", text)
    return r[0]


# --- shared item helpers ----------------------------------------------------------------------------------

_BOX_KEYS = ("bbox_2d", "bbox", "box_2d", "box", "bbox2d", "bounding_box", "rect")
_POINT_KEYS = ("point_2d", "point", "point2d", "points", "position", "center")
_EITHER_KEYS = ("coordinates", "coordinate", "coords", "coord")
_LABEL_KEYS = ("label", "name", "object", "category", "class")
_NUM_IN_STR = re.compile(r"[-+]?(?:\d+(?:\.\d+)?|\.\d+)")


def _pick(d: dict, keys: tuple[str, ...]) -> tuple[Any, Any] | None:
    """(original key, value) of the first of `keys` in d, matched case-insensitively."""
    low: dict[str, Any] = {}
    for k in d:
        low.setdefault(str(k).strip().lower(), k)
    return next(((low[k], d[low[k]]) for k in keys if k in low), None)


def _as_text(v: Any) -> str:
    return "" if v is None else v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)


def _numbers(v: Any) -> list[float] | None:
    """Finite numbers from a list (numbers or numeric strings, one nesting level) or a string like '1, 2'."""
    if isinstance(v, str):
        v = _NUM_IN_STR.findall(v)
    elif not isinstance(v, (list, tuple)):
        return None
    elif len(v) == 1 and isinstance(v[0], (list, tuple, str)):
        return _numbers(v[0])
    elif v and all(isinstance(x, (list, tuple)) for x in v):
        v = [y for x in v for y in x]
    out = []
    for x in v:
        if isinstance(x, bool) or not isinstance(x, (int, float, str)):
            return None
        try:
            out.append(float(x))
        except (ValueError, OverflowError):
            return None
    return out if all(map(math.isfinite, out)) else None


def _box(v: Any) -> Box | None:
    nums = _numbers(v)
    if nums is None or len(nums) != 4:
        return None
    x1, y1, x2, y2 = nums
    return (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))


def _point(v: Any) -> tuple[float, float] | None:
    nums = _numbers(v)
    return (nums[0], nums[1]) if nums is not None and len(nums) == 2 else None


def _items(v: Any, is_item: Callable[[dict], bool]) -> list:
    """A list of items: the list itself, a single dict wrapped, or the list of dicts inside a wrapper dict."""
    if isinstance(v, dict):
        if not is_item(v):
            for x in v.values():
                if isinstance(x, list) and x and all(isinstance(y, dict) for y in x):
                    return x
        return [v]
    return v if isinstance(v, list) else []


def _convert_items(f: _Found, item: Callable[[Any], Any], empty_ok: bool = True) -> list | None:
    """Convert a found value to a list of items; a cut-off single object or a list with no valid item is
    rejected (None); a complete `[]` is `[]` when empty_ok."""
    v = f.value
    if isinstance(v, dict) and not f.complete:
        return None
    if isinstance(v, list) and not v:
        return [] if f.complete and empty_ok else None
    out = [r for x in _items(v, lambda d: item(d) is not None) if (r := item(x)) is not None]
    return out or None


# --- grounding --------------------------------------------------------------------------------------------

def _detection(it: Any) -> Detection | None:
    if isinstance(it, (list, tuple)):
        box, pt = _box(it), _point(it)
        return Detection(bbox=box, point=pt) if box or pt else None
    if not isinstance(it, dict):
        return None
    used, bbox, point = [], None, None
    if b := _pick(it, _BOX_KEYS):
        used.append(b[0])
        bbox = _box(b[1])
    if p := _pick(it, _POINT_KEYS):
        used.append(p[0])
        point = _point(p[1])
    if bbox is None and point is None and (e := _pick(it, _EITHER_KEYS)):
        used.append(e[0])
        bbox, point = _box(e[1]), _point(e[1])
    if bbox is None and point is None:
        return None
    if lab := _pick(it, _LABEL_KEYS):
        used.append(lab[0])
    return Detection(_as_text(lab[1]) if lab else "", bbox, point, {k: v for k, v in it.items() if k not in used})


def _to_detections(f: _Found) -> list[Detection] | None:
    if isinstance(f.value, list) and f.value and all(isinstance(x, (int, float, str)) for x in f.value):
        if not f.complete:
            return None
        f = _Found([f.value], True, False, f.start, f.end)  # a bare [x1, y1, x2, y2] or [x, y]
    return _convert_items(f, _detection)


_N = r"[-+]?\d+(?:\.\d+)?"
_PLAIN_BOX_RE = re.compile(
    rf"^[ \t]*(?:[-*•][ \t]+|\d+[.)][ \t]+|[\[(][ \t]*)?({_N})[ \t]*,[ \t]*({_N})[ \t]*,[ \t]*({_N})[ \t]*,[ \t]*({_N})"
    rf"[ \t]*[\])]?(?:[ \t]+(.*?))?[ \t]*$",
    re.M)
_REF_BOX_RE = re.compile(r"(?:(?:<\|object_ref_start\|>|<ref>)([^<]*)(?:<\|object_ref_end\|>|</ref>))?\s*"
                         r"((?:(?:<\|box_start\|>|<box>)[^<]*(?:<\|box_end\|>|</box>)\s*)+)")
_TOKEN_BOX_RE = re.compile(rf"(?:<\|box_start\|>|<box>)\s*\(\s*({_N})\s*,\s*({_N})\s*\)\s*,?\s*\(\s*({_N})\s*,\s*({_N})\s*\)")
_POINTS_TAG_RE = re.compile(r"<points?\b([^<>]*?)/?>([^<]*)(?:</points?>)?", re.I)
_ATTR_RE = re.compile(r"([\w-]+)\s*=\s*(?:\"([^\"]*)\"|'([^']*)'|([^\s\"'>/]+))")


def _token_boxes(text: str) -> list[Detection]:
    """Qwen2-VL `<|object_ref_start|>cake<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>` (and
    Qwen-VL `<ref>..</ref><box>..</box>`)."""
    return [Detection((m.group(1) or "").strip(), _box([b.group(i) for i in range(1, 5)]))
            for m in _REF_BOX_RE.finditer(text) for b in _TOKEN_BOX_RE.finditer(m.group(2))]


def _xml_points(text: str) -> list[Detection]:
    """`<points x1="284" y1="305" x2=".." y2=".." alt="...">phrase</points>`: one Detection per x/y pair."""
    out = []
    for m in _POINTS_TAG_RE.finditer(text):
        attrs = {a.group(1).lower(): next(g for g in a.groups()[1:] if g is not None)
                 for a in _ATTR_RE.finditer(m.group(1))}
        label = m.group(2).strip() or attrs.get("alt", "").strip()
        idx = sorted((k[1:] for k in attrs if re.fullmatch(r"x\d*", k) and "y" + k[1:] in attrs),
                     key=lambda s: int(s) if s else -1)
        out += [Detection(label, point=pt) for i in idx if (pt := _point([attrs["x" + i], attrs["y" + i]]))]
    return out


@_guard
def parse_grounding(text: str) -> list[Detection]:
    """Boxes/points from JSON (`bbox_2d`/`point_2d` + `label`, and variants), point XML, Qwen2-VL box tokens or
    plain-text `x1,y1,x2,y2 label` lines. `[]` means nothing found; no usable item raises ParseError."""
    if ("<|box_start|>" in text or "<box>" in text) and (dets := _token_boxes(text)):
        return dets
    if re.search(r"<points?\b", text, re.I) and (dets := _xml_points(text)):
        return dets
    if (found := _first(text, _to_detections)) is not None:
        return found
    dets = [Detection((m.group(5) or "").strip(), _box([m.group(i) for i in range(1, 5)]))
            for m in _PLAIN_BOX_RE.finditer(text)]
    if dets:
        return dets
    raise ParseError("no valid boxes or points found", text)


@_guard
def parse_points(text: str) -> list[Detection]:
    """Like parse_grounding, keeping only the items that carry a point."""
    dets = parse_grounding(text)
    pts = [d for d in dets if d.point is not None]
    if dets and not pts:
        raise ParseError("output has boxes but no points", text)
    return pts


# --- counting ---------------------------------------------------------------------------------------------

_UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
          "sixteen seventeen eighteen nineteen").split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
_WORD_VALUE = {w: i for i, w in enumerate(_UNITS)} | {w: 20 + 10 * i for i, w in enumerate(_TENS)}
_WORD_VALUE |= {"a": 1, "an": 1, "single": 1, "no": 0, "dozen": 12, "hundred": 100}
_X = rf"(?:(?:{'|'.join(_TENS)})(?:[\s-]+(?:{'|'.join(_UNITS[1:10])}))?|{'|'.join(reversed(_UNITS))})"
_NUMW = rf"(?:\d{{1,3}}(?:,\d{{3}})+|\d+|(?:one|a)\s+hundred(?:\s+(?:and\s+)?{_X})?|a\s+dozen|{_X})"
_NUMA = (rf"(?:{_NUMW}|a\s+single|no|an?(?!\s+(?:few|lot|couple|number|total|bunch|variety|range|group|set|"
         rf"series|pair)\b))")
_COUNT_RES = [re.compile(p, re.I) for p in (
    rf"\bthere(?:'s|\s+(?:are|is|were|was|exist|exists))\s+(?:(?:a\s+total\s+of|in\s+total|altogether|exactly|only|"
    rf"about|approximately|around|roughly|precisely)\s+)?(?P<n>{_NUMA})\b",
    rf"\btotal(?:\s+(?:of|count|number|is)|\s*[:=])*\s*(?P<n>{_NUMW})\b",
    rf"\b(?:count(?:ed)?|see|saw|found|find|detected|identified|spotted|contains?|shows?|has|have|includes?|"
    rf"depicts?)\s+(?:(?:a\s+total\s+of|exactly|only)\s+)?(?P<n>{_NUMW})\b",
    rf"\b(?:count|number\s+of\s+[^.\n]{{1,40}}?)\s+(?:is|are|was|equals)\s*:?\s*(?P<n>{_NUMW})\b",
    rf"\b(?P<n>{_NUMW})\s+(?:[^\s.]+\s+){{0,4}}?(?:in\s+total|altogether|in\s+all)\b",
    r"(?:共|一共|总共)(?:有|计)?\s*(?P<n>\d+)")]
_ANSWER_ONLY_RE = re.compile(rf"^\W*(?:answer\s*[:：]?\s*)?(?P<n>{_NUMW})(?:\s+[^\W\d_]\w*){{0,4}}\W*$", re.I)


def _word_int(s: str) -> int | None:
    s = s.strip().lower().replace(",", "")
    if s.isdecimal():
        return int(s) if len(s) < 16 else None
    total = 0
    for w in re.split(r"[\s-]+", s):
        if w in ("hundred", "dozen"):
            total = max(total, 1) * _WORD_VALUE[w]
        elif w in ("a", "an", "single", "and"):
            total = total or _WORD_VALUE.get(w, 0)
        elif w in _WORD_VALUE:
            total += _WORD_VALUE[w]
        else:
            return None
    return total


def _prose(text: str) -> str:
    """The text without fenced blocks, JSON values, point tags and special tokens."""
    t = _SPECIAL_RE.sub(" ", _POINTS_TAG_RE.sub(" ", _FENCE_RE.sub(" ", text)))
    keep, last = [], 0
    for f in _candidates(t):
        if f.start >= last:
            keep.append(t[last:f.start])
            last = f.end
    return " ".join(keep + [t[last:]])


@_guard
def parse_count(text: str) -> int | None:
    """The count stated in the answer ("There are 12 items", "there are twelve cakes"; the last such statement
    wins), else the number of detections, else None."""
    prose = _prose(text)
    hits = [(m.start(), n) for rx in _COUNT_RES for m in rx.finditer(prose) if (n := _word_int(m.group("n"))) is not None]
    if not hits and (m := _ANSWER_ONLY_RE.match(prose.strip())) and (n := _word_int(m.group("n"))) is not None:
        hits = [(0, n)]
    if hits:
        return max(hits, key=lambda h: h[0])[1]
    try:
        return len(parse_grounding(text))
    except ParseError:
        return None


# --- OCR, text spotting, key-value extraction -------------------------------------------------------------

_TEXT_KEYS = ("text_content", "text", "content", "transcription", "ocr", "words", "label")


def _text_item(d: Any) -> TextItem | None:
    if not isinstance(d, dict) or not (t := _pick(d, _TEXT_KEYS)) or t[1] is None or isinstance(t[1], (dict, list)):
        return None
    b = _pick(d, _BOX_KEYS) or _pick(d, _EITHER_KEYS)
    return TextItem(_as_text(t[1]), _box(b[1]) if b else None)


@_guard
def parse_text_spotting(text: str) -> list[TextItem]:
    """Text spotting JSON: a list of `{"bbox_2d": [...], "text_content": "..."}` (bbox None when absent or bad)."""
    found = _first(text, lambda f: _convert_items(f, _text_item))
    if found is None:
        raise ParseError("no text-spotting JSON found", text)
    return found


@_guard
def parse_ocr_lines(text: str) -> list[str]:
    """Plain OCR output as stripped non-empty lines (only the fenced content when there are fences; special
    tokens removed); a text-spotting JSON answer gives its texts."""
    text = _SPECIAL_RE.sub("", text)
    if re.match(r"\s*(?:[\[{]|```json)", text, re.I):
        try:
            return [t.text for t in parse_text_spotting(text)]
        except ParseError:
            pass
    blocks = [m.group(1) for m in _FENCE_RE.finditer(text)]
    lines = ("\n".join(blocks) if blocks else text).splitlines()
    return [s for ln in lines if (s := ln.strip()) and not s.startswith("```")]


def _norm_key(k: Any) -> str:
    return re.sub(r"[\s_\-]+", "", str(k).lower())


@_guard
def parse_key_values(text: str, keys: Iterable[str] | None = None) -> dict:
    """The first JSON object in the text; with `keys`, exactly those keys in that order (missing -> None;
    matched ignoring case, spaces and underscores when not exact)."""
    def conv(f: _Found) -> dict | None:
        v = f.value[0] if isinstance(f.value, list) and f.value else f.value
        return v if isinstance(v, dict) else None
    d = _first(text, conv)
    if d is None:
        raise ParseError("no JSON object found", text)
    if keys is None:
        return d
    norm: dict[str, Any] = {}
    for k in d:
        norm.setdefault(_norm_key(k), k)
    out = {}
    for k in [keys] if isinstance(keys, str) else list(keys):
        src = k if k in d else norm.get(_norm_key(k))
        out[k] = None if src is None else d[src]
    return out


# --- time -------------------------------------------------------------------------------------------------

_UNIT = r"(?:seconds?|secs?|s|minutes?|mins?|hours?|hrs?|h)"
_CLOCK = r"(?:\d+:){1,2}\d+(?:[.,]\d+)?"
_TS_RE = re.compile(rf"(?P<v>{_CLOCK}|\d+(?:\.\d+)?|\.\d+)\s*(?P<u>{_UNIT})?\.?", re.I)
_COMPACT_RE = re.compile(r"(?:(\d+(?:\.\d+)?)\s*h(?:ours?|rs?)?)?\s*(?:(\d+(?:\.\d+)?)\s*m(?:in(?:utes?|s)?)?)?"
                         r"\s*(?:(\d+(?:\.\d+)?)\s*s(?:ec(?:ond)?s?)?)?", re.I)
_TTOK_RE = re.compile(rf"(?<![\w.:])(?P<v>{_CLOCK}|\d+(?:\.\d+)?)(?:\s*(?P<u>{_UNIT})\b)?(?!\w|[:.]\d)", re.I)
_SEP_RE = re.compile(r"[\s<>\[\]()]*(-+|–|—|~|to|until|till|through|thru|and|->|→)[\s<>\[\]()]*", re.I)
_DESC_PREFIX_RE = re.compile(r"[\s\-*•\[(]*(?:\d+[.)][\s\[(]*)?")
_START_KEYS = ("start_time", "start", "begin", "begin_time", "start_timestamp", "start_sec", "from")
_END_KEYS = ("end_time", "end", "stop", "end_timestamp", "end_sec", "finish", "to")
_SPAN_KEYS = ("timestamp", "timestamps", "time", "span", "time_span", "segment", "interval", "range")
_DESC_KEYS = ("description", "caption", "event", "text", "content", "label", "desc", "sentence", "summary",
              "action", "query")


def _seconds(v: str, unit: str | None) -> float:
    if ":" in v:
        parts = [float(p) for p in v.replace(",", ".").split(":")]
        return sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    u = (unit or "s").lower()
    return float(v) * (3600 if u.startswith("h") else 60 if u.startswith("m") else 1)


def _timestamp(s: str) -> float | None:
    t = s.strip().strip("<>[]()\"' ").strip()
    if len(t) > 64:
        return None
    if m := _TS_RE.fullmatch(t):
        r = _seconds(m.group("v"), m.group("u"))
    elif t and (m := _COMPACT_RE.fullmatch(t)) and any(m.groups()):
        h, mi, se = (float(g) if g else 0.0 for g in m.groups())
        r = h * 3600 + mi * 60 + se
    else:
        return None
    return r if math.isfinite(r) else None


@_guard
def parse_timestamp(s: str) -> float:
    """Seconds from one time string: '12.5', '3.2s', '12:34.56', '01:02:03.5', '12:34.56s', '1m30s', '2 min'."""
    if (t := _timestamp(s)) is None:
        raise ParseError("not a timestamp", s)
    return t


def _time_value(v: Any) -> float | None:
    if isinstance(v, str):
        return _timestamp(v)
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0:
        return float(v)
    return None


def _span(a: float, b: float, desc: str | None = None) -> TimeSpan:
    return TimeSpan(min(a, b), max(a, b), desc)


def _pair(v: Any) -> tuple[float, float] | None:
    if isinstance(v, str):
        return (spans[0].start, spans[0].end) if (spans := _text_spans(v, describe=False)) else None
    if isinstance(v, (list, tuple)) and len(v) == 2:
        a, b = _time_value(v[0]), _time_value(v[1])
        return (a, b) if a is not None and b is not None else None
    return None


def _span_item(it: Any) -> TimeSpan | None:
    if not isinstance(it, dict):
        return _span(*p) if (p := _pair(it)) and not isinstance(it, str) else None
    p = None
    if (s := _pick(it, _START_KEYS)) and (e := _pick(it, _END_KEYS)):
        a, b = _time_value(s[1]), _time_value(e[1])
        p = (a, b) if a is not None and b is not None else None
    if p is None and (t := _pick(it, _SPAN_KEYS)):
        p = _pair(t[1])
    if p is None:
        return None
    d = _pick(it, _DESC_KEYS)
    return _span(p[0], p[1], None if d is None or d[1] is None else _as_text(d[1]))


def _to_spans(f: _Found) -> list[TimeSpan] | None:
    v = f.value
    if isinstance(v, list) and v and not isinstance(v[0], (list, dict)):
        if not f.complete or len(v) != 2:
            return None
        f = _Found([v], True, False, f.start, f.end)  # a bare [start, end]
    return _convert_items(f, _span_item, empty_ok=False)


def _text_spans(text: str, describe: bool = True) -> list[TimeSpan]:
    """Time ranges written in free text (or, when there is none, single times with a unit or colon)."""
    toks, ranges, i = list(_TTOK_RE.finditer(text)), [], 0
    while i + 1 < len(toks):
        a, b = toks[i], toks[i + 1]
        sep = _SEP_RE.fullmatch(text[a.end():b.start()])
        ok = sep is not None and (sep.group(1).lower() != "and" or re.search(r"between\s*$", text[:a.start()], re.I))
        if ok:
            ranges.append((a, b))
        i += 2 if ok else 1

    def strong(m: re.Match) -> bool:
        return bool(m.group("u")) or ":" in m.group("v")

    out = []
    for a, b in [r for r in ranges if strong(r[0]) or strong(r[1])] or ranges:
        ls, le = text.rfind("\n", 0, a.start()) + 1, text.find("\n", b.end())
        rest = text[b.end():le if le >= 0 else len(text)].lstrip(" \t])}:-–—,|").strip()
        desc = rest if describe and _DESC_PREFIX_RE.fullmatch(text[ls:a.start()]) and re.search(r"[^\W\d_]", rest) \
            else None
        out.append(_span(_seconds(a.group("v"), a.group("u") or b.group("u")), _seconds(b.group("v"), b.group("u")),
                         desc))
    if not out:
        out = [TimeSpan(t, t) for m in toks if strong(m) for t in [_seconds(m.group("v"), m.group("u"))]]
    return [s for s in out if math.isfinite(s.start) and math.isfinite(s.end)]


@_guard
def parse_time_spans(text: str) -> list[TimeSpan]:
    """Time spans from dense-caption JSON (`start_time`/`end_time`/`description`, times as strings or numbers)
    or free text ("64.0 - 72.0 seconds", "from 3 to 7.5 seconds", "between 1:02.5 and 1:10", "at 12 s")."""
    if found := _first(text, _to_spans):
        return found
    if not (spans := _text_spans(text)):
        raise ParseError("no time span found", text)
    return spans


# --- tool calls -------------------------------------------------------------------------------------------

_TOOL_RE = re.compile(r"<tool_call>(.*?)(</tool_call>|(?=<tool_call>)|\Z)", re.S | re.I)
_ARG_KEYS = ("arguments", "args", "parameters", "params", "input")


def _tool_call(v: Any) -> ToolCall | None:
    if isinstance(v, list) and len(v) == 1:
        v = v[0]
    if not isinstance(v, dict):
        return None
    if not _pick(v, ("name",)) and (fn := _pick(v, ("function",))) and isinstance(fn[1], dict):
        v = fn[1]  # OpenAI style {"function": {"name": ..., "arguments": ...}}
    name, args = _pick(v, ("name",)), _pick(v, _ARG_KEYS)
    if not name or not isinstance(name[1], str) or not name[1].strip():
        return None
    args = None if args is None else args[1]
    if args is None or (isinstance(args, str) and not args.strip()):
        args = {}
    elif isinstance(args, str):
        args = _first(args, lambda f: f.value if f.complete and isinstance(f.value, dict) else None)
    return ToolCall(name[1].strip(), args) if isinstance(args, dict) else None


@_guard
def parse_tool_calls(text: str) -> list[ToolCall]:
    """Every `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (thought text, missing newlines, lenient
    JSON, a cut-off last tag whose JSON is complete), or one bare call object without tags."""
    calls, blocks = [], list(_TOOL_RE.finditer(text))
    for m in blocks:
        closed = bool(m.group(2))  # a closed tag may repair missing closing braces, a cut-off one may not
        call = _first(m.group(1), lambda f: _tool_call(f.value) if f.complete or (closed and not f.dropped) else None)
        if call is not None:
            calls.append(call)
    if not blocks:
        def bare(f: _Found) -> list[ToolCall] | None:
            if not f.complete:
                return None
            if isinstance(f.value, list) and len(f.value) > 1:
                cs = [_tool_call(x) for x in f.value]
                return cs if all(cs) else None  # type: ignore[return-value]
            return [c] if (c := _tool_call(f.value)) else None
        calls = _first(text, bare) or []
    if not calls:
        raise ParseError("no valid tool call found", text)
    return calls
