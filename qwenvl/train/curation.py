"""Data curation for post-training (the report's §2.3.2-§2.3.3): rule-based filters and rejection sampling.

Filters. Each filter takes a record or a bare answer string and returns (ok, reason); reason is "ok" when the
record passes, else "<code>: <detail>" where code is one of REASONS. A record may be:
  - a str: the answer itself;
  - a messages-format dict {"messages": [...]} (every assistant message is checked);
  - a LLaVA / qwen-vl-finetune dict {"conversations": [{"from": "gpt", "value": ...}, ...]};
  - a DPO pair {"prompt", "chosen", "rejected"} (both answers are checked);
  - a dict with "answer" / "response" / "output" / "completion" (e.g. rejection-sampling output).
Optional record fields the filters read: "finish_reason" ("length" when generation hit the token limit; applies
to the last answer), "image_size" = [height, width] of the image the boxes refer to (for Qwen2.5-VL the
smart-resized frame the model saw; "height"/"width" keys also work) and "task" ("grounding", ...). The same
values can be passed as keyword arguments (functools.partial) for bare strings.

`filter_records(records, filters)` applies a list of filters (functions or their names in FILTERS) and returns
(kept, rejected-with-reasons, counts per reason code).

Rejection sampling. `rejection_sample(generate, items, score, n=4, threshold=0.5)` asks `generate(item, n)` for
n candidate answers per item, scores each with `score(item, answer)` and keeps the best candidate when its
score reaches the threshold. Scorers for the usual tasks: `grounding_iou_scorer` (boxes parsed and matched to
the ground truth by IoU), `exact_match_scorer` and `count_scorer`; ground truth is read from item["gt"]
(`key=` picks another field or a callable).
"""
from __future__ import annotations

import json
import math
import re
from collections import Counter
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import numpy as np

from qwenvl.tasks.metrics import box_iou, counting_accuracy
from qwenvl.tasks.parse import parse_count, parse_grounding
from qwenvl.tasks.types import Detection, ParseError

__all__ = ["answers_of", "empty_filter", "placeholder_filter", "repetition_filter", "truncation_filter",
           "grounding_filter", "FILTERS", "DEFAULT_FILTERS", "REASONS", "filter_records", "FilterResult",
           "rejection_sample", "RejectionSamples", "grounding_iou_scorer", "exact_match_scorer", "count_scorer"]

Result = tuple[bool, str]
OK: Result = (True, "ok")
REASONS = ("empty", "vision_placeholder", "repetition", "truncated", "malformed_grounding", "box_outside_image")
_ASSISTANT = ("assistant", "gpt", "model", "bot")
_ANSWER_KEYS = ("answer", "response", "output", "completion")
_GROUNDING_TASKS = {"grounding", "detection", "referring", "referring_grounding", "pointing", "counting_boxes"}


# --- records ----------------------------------------------------------------------------------------------

def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        content = [content]
    if isinstance(content, list):
        return "".join(p if isinstance(p, str) else str(p.get("text", "")) for p in content
                       if isinstance(p, str) or (isinstance(p, dict) and p.get("type", "text") == "text"))
    return "" if content is None else str(content)


def answers_of(record: Any) -> list[str]:
    """The answer texts of a record (see the module docstring for the shapes understood)."""
    if isinstance(record, str):
        return [record]
    if not isinstance(record, dict):
        raise TypeError(f"a record must be a str or a dict, got {type(record).__name__}")
    if isinstance(record.get("messages"), list):
        return [_content_text(m.get("content")) for m in record["messages"]
                if isinstance(m, dict) and m.get("role") in _ASSISTANT]
    if isinstance(record.get("conversations"), list):
        return [_content_text(m.get("value", m.get("content"))) for m in record["conversations"]
                if isinstance(m, dict) and m.get("from", m.get("role")) in _ASSISTANT]
    if "chosen" in record or "rejected" in record:
        out = []
        for k in ("chosen", "rejected"):
            v = record.get(k)
            if isinstance(v, list):  # an answer given as messages
                out += [_content_text(m.get("content")) for m in v if isinstance(m, dict)
                        and m.get("role", "assistant") in _ASSISTANT] or [""]
            else:
                out.append(_content_text(v))
        return out
    for k in _ANSWER_KEYS:
        if k in record:
            return [_content_text(record[k])]
    return []


def _field(record: Any, key: str, given: Any) -> Any:
    if given is not None:
        return given
    return record.get(key) if isinstance(record, dict) else None


def _image_size(record: Any, given: Any) -> tuple[float, float] | None:
    """(height, width) from the argument or the record (image_size [h, w], or height/width)."""
    v = _field(record, "image_size", given)
    if v is None and isinstance(record, dict) and "height" in record and "width" in record:
        v = (record["height"], record["width"])
    if isinstance(v, (list, tuple)) and len(v) == 1 and isinstance(v[0], (list, tuple)):
        v = v[0]  # one image
    try:
        h, w = (float(x) for x in v)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    return (h, w) if h > 0 and w > 0 else None


def _first_failure(answers: Iterable[str], check: Callable[[str, bool], str | None]) -> Result:
    answers = list(answers)
    for i, a in enumerate(answers):
        why = check(a, i == len(answers) - 1)
        if why:
            return False, why
    return OK


# --- filters ----------------------------------------------------------------------------------------------

_SPECIAL_RE = re.compile(r"<\|[a-z_]+\|>")


def empty_filter(record: Any, *, min_chars: int = 1) -> Result:
    """Rejects records without an assistant answer and answers that are blank (or only special tokens such as
    <|im_end|>), or shorter than `min_chars` characters once stripped."""
    answers = answers_of(record)
    if not answers:
        return False, "empty: no assistant answer"
    return _first_failure(answers, lambda a, last: None if len(_SPECIAL_RE.sub("", a).strip()) >= max(1, min_chars)
                          else f"empty: answer {a.strip()[:40]!r} is blank")


_PLACEHOLDER_RE = re.compile(r"<image>|<video>|<\|(?:image_pad|video_pad|vision_start|vision_end|vision_pad)\|>")


def placeholder_filter(record: Any) -> Result:
    """Rejects answers that contain vision placeholders (<image>, <video>) or vision special tokens
    (<|image_pad|>, <|vision_start|>, ...): they belong in user turns only (one per media file)."""
    def check(a: str, last: bool) -> str | None:
        m = _PLACEHOLDER_RE.search(a)
        return f"vision_placeholder: {m.group()} in an answer" if m else None
    return _first_failure(answers_of(record), check)


_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_TOKEN_RE = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+|[^\w\s]")
_TAG_RE = re.compile(r"</?[A-Za-z][^<>]{0,200}>")
_RULE_CHARS = set("|-=_:+*#.~ \t")


def _loop(ids: np.ndarray, max_period: int, min_repeats: int, min_span: int,
          skip: Callable[[int, int], bool] | None = None) -> tuple[int, int, int] | None:
    """The first (smallest period) stretch of ids that repeats a unit of `p` ids at least `min_repeats` times
    and covers at least `min_span` ids: (period, repeats, start), or None."""
    n = len(ids)
    for p in range(1, min(max_period, n // 2) + 1):
        eq = (ids[:-p] == ids[p:]).astype(np.int8)
        if not eq.any():
            continue
        d = np.diff(np.concatenate(([0], eq, [0])))
        starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
        for s, L in sorted(zip(starts.tolist(), (ends - starts).tolist()), key=lambda x: -x[1]):
            span = L + p
            if span // p < min_repeats or span < min_span:
                break
            if skip is None or not skip(s, p):
                return p, span // p, s
    return None


def repetition_filter(record: Any, *, min_repeats: int = 8, min_span: int = 32, max_period: int = 64,
                      min_line_repeats: int = 6, max_line_period: int = 8) -> Result:
    """Rejects generation loops: a unit of 1..`max_period` tokens repeated back to back at least `min_repeats`
    times over at least `min_span` tokens ("the cat the cat ...", "!!!!...", the same JSON item again and
    again), or a block of 1..`max_line_period` non-blank lines repeated at least `min_line_repeats` times.

    Tokens are words, single CJK characters and single punctuation marks; HTML/XML tags are ignored (empty
    table cells are not a loop) and units made only of rule characters (| - = _ : + * # . ~) are allowed
    (Markdown table separators, dot leaders). Distinct items in a list (different boxes, different rows) never
    form a loop, however many there are."""
    def check(a: str, last: bool) -> str | None:
        toks = _TOKEN_RE.findall(_TAG_RE.sub(" ", a))
        if len(toks) >= min_span:
            vocab: dict[str, int] = {}
            ids = np.array([vocab.setdefault(t, len(vocab)) for t in toks], dtype=np.int64)
            rule = np.array([all(ch in _RULE_CHARS for ch in t) for t in toks])

            def only_rules(s: int, p: int) -> bool:
                return bool(rule[s:s + p].all())
            if hit := _loop(ids, max_period, min_repeats, min_span, only_rules):
                p, r, s = hit
                unit = " ".join(toks[s:s + p])
                return f"repetition: {p}-token unit {unit[:60]!r} repeated {r} times"
        lines = [ln.strip() for ln in a.splitlines() if ln.strip()]
        if len(lines) >= min_line_repeats:
            vocab = {}
            ids = np.array([vocab.setdefault(ln, len(vocab)) for ln in lines], dtype=np.int64)
            trivial = np.array([not re.search(r"\w", _TAG_RE.sub("", ln)) for ln in lines])
            if hit := _loop(ids, max_line_period, min_line_repeats, min_line_repeats,
                            lambda s, p: bool(trivial[s:s + p].all())):
                p, r, s = hit
                return f"repetition: {p}-line block {lines[s][:60]!r} repeated {r} times"
        return None
    return _first_failure(answers_of(record), check)


_OPEN = {"(": ")", "[": "]", "{": "}"}
_CLOSE = {v: k for k, v in _OPEN.items()}
_FENCE_LINE_RE = re.compile(r"^[ \t]*```", re.M)
_END_OK = set(".!?…。！？；;:\"'”’»)]}>`*|_~") | set("\u3002\uff01\uff1f")
_BLOCK_TAGS = ("html", "body", "table", "div", "ol", "ul")


def _brackets(text: str) -> str | None:
    """Why the brackets or quotes of `text` do not close, or None. Strings are only tracked inside brackets
    (JSON-like content); closers without an opener ("1)", "a)") are ignored, and a closer of another kind
    closes the innermost opener ("[0, 1)")."""
    stack: list[tuple[str, int]] = []
    quote, i, n, prev = None, 0, len(text), ""
    q_at = 0
    while i < n:
        c = text[i]
        if quote:
            if c == "\\":
                i += 2
                continue
            if c == quote or (quote == "'" and c == "\n"):
                quote = None
            i += 1
            continue
        if c in _OPEN:
            stack.append((c, i))
        elif c in _CLOSE:
            if any(o == _CLOSE[c] for o, _ in stack):
                while stack and stack.pop()[0] != _CLOSE[c]:
                    pass
            elif stack:
                stack.pop()
        elif stack and (c == '"' or (c == "'" and prev != "" and prev in "[{(,:")):
            quote, q_at = c, i
        if not c.isspace():
            prev = c
        i += 1
    if quote:
        return f"unclosed string starting at char {q_at}"
    if stack:
        o, at = stack[0]
        return f"unclosed {o!r} at char {at}"
    outside, before = text, None
    while outside != before:  # drop bracketed groups, innermost first: quotes inside them were checked above
        before, outside = outside, re.sub(r"\([^()]*\)|\[[^\[\]]*\]|\{[^{}]*\}", "", outside)
    if outside.count('"') % 2:
        return "unbalanced double quotes"
    if text.count("\u201c") > text.count("\u201d"):
        return "unbalanced curly quotes"
    return None


def truncation_filter(record: Any, *, finish_reason: str | None = None, check_brackets: bool = True) -> Result:
    """Rejects answers that were cut off: an unclosed Markdown code fence, unclosed brackets / braces / JSON
    strings / quotes (`check_brackets`), an unclosed <html>/<table>/... block, or, when generation stopped at the
    token limit (finish_reason "length", from the argument or the record; applies to the last answer), a text
    that does not end like a finished sentence or structure."""
    reason = _field(record, "finish_reason", finish_reason)
    by_length = str(reason).lower() in ("length", "max_tokens", "max_length") if reason is not None else False

    def check(a: str, last: bool) -> str | None:
        if len(_FENCE_LINE_RE.findall(a)) % 2:
            return "truncated: unclosed ``` code fence"
        if check_brackets and (why := _brackets(a)):
            return f"truncated: {why}"
        low = a.lower()
        for tag in _BLOCK_TAGS:
            opened = len(re.findall(rf"<{tag}\b", low))
            if opened and opened > len(re.findall(rf"</{tag}\s*>", low)):
                return f"truncated: unclosed <{tag}>"
        if last and by_length:
            t = _SPECIAL_RE.sub("", a).rstrip()
            if t and t[-1] not in _END_OK:
                return f"truncated: stopped at the token limit mid-sentence (…{t[-30:]!r})"
        return None
    return _first_failure(answers_of(record), check)


_GROUNDING_HINT_RE = re.compile(r"bbox_2d|point_2d|[\"']bbox[\"']|<\|box_start\|>|<box>|<points?\b", re.I)


def grounding_filter(record: Any, *, image_size: Sequence[float] | None = None, tolerance: float = 2.0,
                     task: str | None = None, require: bool | None = None) -> Result:
    """For grounding answers (record task in a grounding task, `require=True`, or an answer that mentions
    bbox_2d / point_2d / box tokens): rejects answers that `qwenvl.tasks.parse.parse_grounding` cannot parse or
    whose boxes are degenerate (zero area) and, with an image size (height, width), boxes or points that leave
    the image by more than `tolerance` pixels. Negative coordinates are rejected even without a size. Other
    answers pass."""
    size = _image_size(record, image_size)
    t = _field(record, "task", task)
    forced = require if require is not None else (True if str(t).lower() in _GROUNDING_TASKS else None)

    def check(a: str, last: bool) -> str | None:
        if forced is False or (forced is None and not _GROUNDING_HINT_RE.search(a)):
            return None
        try:
            dets = parse_grounding(a)
        except ParseError as e:
            return f"malformed_grounding: {e.reason}"
        for d in dets:
            if d.bbox is not None:
                x1, y1, x2, y2 = d.bbox
                if x2 - x1 <= 0 or y2 - y1 <= 0:
                    return f"malformed_grounding: zero-area box {list(d.bbox)}"
                xs, ys = (x1, x2), (y1, y2)
            else:
                xs, ys = (d.point[0],), (d.point[1],)  # type: ignore[index]
            what = f"box {list(d.bbox)}" if d.bbox is not None else f"point {list(d.point)}"  # type: ignore[arg-type]
            if min(xs) < -tolerance or min(ys) < -tolerance:
                return f"box_outside_image: {what} has negative coordinates"
            if size and (max(xs) > size[1] + tolerance or max(ys) > size[0] + tolerance):
                return f"box_outside_image: {what} outside the {size[1]:g}x{size[0]:g} (w x h) image"
        return None
    return _first_failure(answers_of(record), check)


FILTERS: dict[str, Callable[..., Result]] = {
    "empty": empty_filter, "placeholder": placeholder_filter, "repetition": repetition_filter,
    "truncation": truncation_filter, "grounding": grounding_filter}
DEFAULT_FILTERS = ("empty", "placeholder", "repetition", "truncation", "grounding")


class FilterResult(NamedTuple):
    """kept records; rejected (record, [reasons]) pairs; counts of rejected records per reason code."""
    kept: list
    rejected: list
    counts: dict[str, int]

    def summary(self) -> str:
        total = len(self.kept) + len(self.rejected)
        parts = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items(), key=lambda kv: -kv[1]))
        return f"kept {len(self.kept)}/{total}" + (f"; rejected: {parts}" if parts else "")


def _resolve_filters(filters: Iterable[Callable[..., Result] | str]) -> list[Callable[..., Result]]:
    out = []
    for f in filters:
        if isinstance(f, str):
            if f not in FILTERS:
                raise ValueError(f"unknown filter {f!r}; choose from {sorted(FILTERS)}")
            f = FILTERS[f]
        out.append(f)
    return out


def filter_records(records: Iterable[Any], filters: Iterable[Callable[..., Result] | str] = DEFAULT_FILTERS, *,
                   all_reasons: bool = False) -> FilterResult:
    """Apply `filters` (callables record -> (ok, reason), or names from FILTERS) to every record. A record is
    rejected at its first failing filter (with `all_reasons`, every filter runs and all reasons are kept).
    counts maps each reason code (the text before ':') to the number of records rejected for it."""
    fs = _resolve_filters(filters)
    kept, rejected, counts = [], [], Counter()
    for i, rec in enumerate(records):
        reasons = []
        for f in fs:
            try:
                ok, why = f(rec)
            except Exception as e:
                raise RuntimeError(f"filter {getattr(f, '__name__', f)!r} failed on record {i}: {e}") from e
            if not ok:
                reasons.append(why)
                if not all_reasons:
                    break
        if reasons:
            rejected.append((rec, reasons))
            counts.update({r.split(":", 1)[0].strip() for r in reasons})
        else:
            kept.append(rec)
    return FilterResult(kept, rejected, dict(counts))


# --- rejection sampling -----------------------------------------------------------------------------------

class RejectionSamples(list):
    """The kept records ({"index", "item", "answer", "score", "scores"} unless `make_record` says otherwise),
    with `.summary`: total, kept, rejected, keep_rate, candidates, filtered (candidates dropped by the
    filters), errors and mean_best_score (over items with a scored candidate)."""
    summary: dict


def rejection_sample(generate: Callable[[Any, int], Sequence[Any]], items: Iterable[Any],
                     score: Callable[[Any, Any], float], *, n: int = 4, threshold: float = 0.5,
                     filters: Iterable[Callable[..., Result] | str] | None = None, on_error: str = "raise",
                     make_record: Callable[[Any, Any, float], Any] | None = None) -> RejectionSamples:
    """For each item: `generate(item, n)` -> candidate answers; candidates failing `filters` (optional, e.g.
    DEFAULT_FILTERS) are dropped; each remaining one is scored with `score(item, answer)` (NaN counts as
    -inf); the best (the first on ties) is kept when its score >= threshold. `on_error="skip"` counts an
    item whose generation or scoring raised as an error instead of stopping."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    fs = _resolve_filters(filters) if filters is not None else []
    out = RejectionSamples()
    total = n_cand = n_filtered = errors = 0
    best_scores = []
    for i, item in enumerate(items):
        total += 1
        try:
            cands = list(generate(item, n))
            n_cand += len(cands)
            scored = []
            for c in cands:
                if fs and not all(f(c)[0] for f in fs):
                    n_filtered += 1
                    continue
                s = float(score(item, c))
                scored.append((-math.inf if math.isnan(s) else s, c))
        except Exception:
            if on_error == "raise":
                raise
            errors += 1
            continue
        if not scored:
            continue
        best_s, best = max(scored, key=lambda x: x[0])  # max keeps the first of equal scores
        best_scores.append(best_s)
        if best_s >= threshold:
            out.append(make_record(item, best, best_s) if make_record else
                       {"index": i, "item": item, "answer": best, "score": best_s, "scores": [s for s, _ in scored]})
    finite = [s for s in best_scores if math.isfinite(s)]
    out.summary = {"total": total, "kept": len(out), "rejected": total - len(out), "keep_rate":
                   len(out) / total if total else 0.0, "candidates": n_cand, "filtered": n_filtered,
                   "errors": errors, "mean_best_score": sum(finite) / len(finite) if finite else 0.0}
    return out


# --- scorers ----------------------------------------------------------------------------------------------

def _gt(item: Any, key: str | Callable[[Any], Any]) -> Any:
    if callable(key):
        return key(item)
    if not isinstance(item, dict) or key not in item:
        raise KeyError(f"item has no ground truth under {key!r}")
    return item[key]


def _as_detections(v: Any) -> list[Detection]:
    """Ground truth as detections: model-style text, a Detection, a box [x1, y1, x2, y2], a dict with bbox_2d,
    or a list of these."""
    if isinstance(v, str):
        return parse_grounding(v)
    if isinstance(v, Detection):
        return [v]
    if isinstance(v, dict):
        return parse_grounding(json.dumps([v]))
    if isinstance(v, (list, tuple)):
        if len(v) == 4 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            x1, y1, x2, y2 = (float(x) for x in v)
            return [Detection(bbox=(x1, y1, x2, y2))]
        return [d for x in v for d in _as_detections(x)]
    raise TypeError(f"cannot read ground-truth boxes from a {type(v).__name__}")


def grounding_iou_scorer(item: Any, answer: Any, *, key: str | Callable[[Any], Any] = "gt",
                         match_labels: bool = False) -> float:
    """Boxes parsed from the answer (parse_grounding) matched one-to-one to the ground-truth boxes, greedily by
    IoU (metrics.box_iou); score = sum of matched IoUs / max(#predicted, #ground truth), in [0, 1]. For one
    ground-truth box and one predicted box this is their IoU; extra or missing boxes lower it. An unparsable
    answer scores 0; no box on either side scores 1. With `match_labels`, differently labelled boxes do not
    match (labels compared case-insensitively)."""
    gts = [d for d in _as_detections(_gt(item, key)) if d.bbox is not None]
    try:
        preds = [d for d in parse_grounding(answer if isinstance(answer, str) else str(answer)) if d.bbox is not None]
    except ParseError:
        return 0.0
    if not gts and not preds:
        return 1.0
    if not gts or not preds:
        return 0.0
    pairs = []
    for i, p in enumerate(preds):
        for j, g in enumerate(gts):
            if match_labels and p.label.strip().lower() != g.label.strip().lower():
                continue
            if (iou := box_iou(p.bbox, g.bbox)) > 0:
                pairs.append((iou, i, j))
    used_p, used_g, total = set(), set(), 0.0
    for iou, i, j in sorted(pairs, key=lambda x: -x[0]):
        if i not in used_p and j not in used_g:
            used_p.add(i)
            used_g.add(j)
            total += iou
    return total / max(len(preds), len(gts))


_STRIP_RE = re.compile(r"^[\s\"'`*_“”‘’]+|[\s\"'`*_“”‘’.!。！]+$")


def _norm(s: Any) -> str:
    t = re.sub(r"\s+", " ", str(s)).strip()
    t = re.sub(r"^(?:the\s+)?answer\s*(?:is|:)\s*", "", t, flags=re.I)
    return _STRIP_RE.sub("", t).casefold()


def exact_match_scorer(item: Any, answer: Any, *, key: str | Callable[[Any], Any] = "gt",
                       normalize: bool = True) -> float:
    """1.0 when the answer equals the ground truth (or one of a list of accepted answers), else 0.0. With
    `normalize`: case, surrounding whitespace/quotes/emphasis, trailing punctuation and a leading "The answer
    is" are ignored, and numbers compare by value ("3.0" == "3")."""
    gt = _gt(item, key)
    accepted = gt if isinstance(gt, (list, tuple)) else [gt]
    if not normalize:
        return float(any(str(answer) == str(g) for g in accepted))
    a = _norm(answer)
    for g in accepted:
        b = _norm(g)
        if a == b:
            return 1.0
        try:
            if float(a.replace(",", "")) == float(b.replace(",", "")):
                return 1.0
        except ValueError:
            pass
    return 0.0


def count_scorer(item: Any, answer: Any, *, key: str | Callable[[Any], Any] = "gt") -> float:
    """1.0 when the count stated in the answer (parse_count: "There are 5 ...", five, or the number of boxes)
    equals the ground-truth count, else 0.0."""
    try:
        pred = parse_count(answer if isinstance(answer, str) else str(answer))
    except ParseError:
        return 0.0
    return counting_accuracy([pred], [_gt(item, key)])
