"""QwenVL HTML: parse the model's document-parsing output into `DocBlock`s, render it back, convert it.

The model answers the `QwenVL HTML` prompt with (usually) a fenced ```html block holding
`<html><body>...</body></html>`: one top-level element per layout block in reading order, each with
`data-bbox="x1 y1 x2 y2"` in the resized image's pixels. Choices made here:

- Tables: `rows` is a grid in which a cell with colspan/rowspan is repeated in every position it covers (so
  columns line up); rows without cells are dropped; `text` is the rows joined by tab and newline; `.html`
  keeps the original structure. A chart that contains a table gets `rows` too.
- Lists: a `ul`/`ol` with a bbox gives a `list` block (text "") followed by one `list_item` per `li`;
  without a bbox only the items are kept (as the cookbook's drawing does). Nested items carry attrs["level"].
- `attrs` holds every attribute but data-bbox (class, format, data-polygon, ...), plus `img_bbox` (raw) when
  the block wraps an `<img data-bbox>`; an unparseable data-bbox stays in attrs and the bbox is None.
- Text is whitespace-normalised per line; `<br>` and block boundaries give newlines; empty lines dropped.
"""
from __future__ import annotations

import html as _html
import math
import re
from collections.abc import Iterator, Sequence
from html.parser import HTMLParser

from qwenvl.tasks.types import Box, DocBlock, ParseError

__all__ = ["parse_document", "render_qwenvl_html", "to_html", "to_markdown"]

_HEADINGS = frozenset(f"h{i}" for i in range(1, 7))
_VOID = frozenset("area base br col embed hr img input link meta param source track wbr".split())
_SKIP = frozenset("style script head title meta link br hr col colgroup template".split())
_CLOSES_P = _HEADINGS | frozenset("p div table ul ol li pre blockquote section article header footer aside "
                                  "figure hr dl form".split())
_BREAKS = _HEADINGS | frozenset("p div li tr table ul ol pre blockquote section article header footer aside "
                                "figure figcaption caption dl dt dd hr".split())
_SPECIAL = frozenset("formula chart image image_caption image_ocr music_sheet chemical_formula".split())
_DIV_CLASS = {"chart": "chart", "formula": "formula", "image_caption": "image caption",
              "image_ocr": "image ocr", "music_sheet": "music sheet", "chemical_formula": "chemical formula"}
_MAX_DEPTH = 256
_MAX_SPAN = 100
_ATTR_NAME = re.compile(r"[A-Za-z_:][-\w:.]*\Z")


class _El:
    """A minimal DOM node: tag, attributes, children (elements or text)."""
    __slots__ = ("tag", "attrs", "children")

    def __init__(self, tag: str, attrs: dict[str, str]):
        self.tag, self.attrs, self.children = tag, attrs, []

    def elements(self) -> list[_El]:
        return [c for c in self.children if isinstance(c, _El)]

    def iter(self) -> Iterator[_El]:
        """Descendants in document order (iterative, so deep trees are fine)."""
        stack = list(reversed(self.elements()))
        while stack:
            el = stack.pop()
            yield el
            stack.extend(reversed(el.elements()))


class _Builder(HTMLParser):
    """Forgiving tree builder: implied end tags for p/li/tr/td/headings, stray end tags ignored."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = _El("#root", {})
        self.stack = [self.root]

    def _make(self, tag: str, attrs: list[tuple[str, str | None]]) -> _El:
        self._close_implied(tag)
        el = _El(tag, {})
        for k, v in attrs:
            el.attrs.setdefault(k, v or "")
        self.stack[-1].children.append(el)
        return el

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        el = self._make(tag, attrs)
        if tag not in _VOID and len(self.stack) < _MAX_DEPTH:
            self.stack.append(el)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._make(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        self._pop_through({tag}, set())

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)

    def _pop_through(self, names: set[str], stop: set[str]) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            t = self.stack[i].tag
            if t in names:
                del self.stack[i:]
                return
            if t in stop:
                return

    def _close_implied(self, tag: str) -> None:
        top = self.stack[-1].tag
        if (tag in _CLOSES_P and top == "p") or (tag in _HEADINGS and top in _HEADINGS):
            self.stack.pop()
        if tag == "li":
            self._pop_through({"li"}, {"ul", "ol", "table"})
        elif tag == "tr":
            self._pop_through({"tr"}, {"table"})
        elif tag in ("td", "th"):
            self._pop_through({"td", "th"}, {"tr", "table"})


def _tree(source: str) -> _El:
    (b := _Builder()).feed(source)
    b.close()
    return b.root


def _find(el: _El, tags: set[str] | frozenset[str]) -> list[_El]:
    """Top-most descendants of `el` whose tag is in `tags` (does not look inside a match)."""
    found, stack = [], list(reversed(el.elements()))
    while stack:
        d = stack.pop()
        if d.tag in tags:
            found.append(d)
        else:
            stack.extend(reversed(d.elements()))
    return found


def _extract(text: str) -> str:
    """The HTML part of a model answer: the ```html fence (or first fence with a tag), else the whole text.
    A tag cut off by the token limit at the very end is dropped."""
    fences = [(m.group(1).lower(), m.group(2))
              for m in re.finditer(r"```[ \t]*([\w+-]*)[^\n]*\n?(.*?)(?:```|\Z)", text, re.S)]
    body = next((b for lang, b in fences if lang == "html"), None)
    if body is None:
        body = next((b for _, b in fences if "<" in b), text)
    i = body.rfind("<")
    if i >= 0 and ">" not in body[i:]:
        body = body[:i]
    return body


def _parse_bbox(raw: str | None) -> Box | None:
    """'x1 y1 x2 y2' (spaces and/or commas, optional brackets) → ordered float box; None if not 4 numbers."""
    if raw is None:
        return None
    parts = [p for p in re.split(r"[\s,;\[\]()]+", raw.strip()) if p]
    if len(parts) != 4 or not all(re.fullmatch(r"[-+]?\d+(?:\.\d*)?", p) for p in parts):
        return None
    x1, y1, x2, y2 = (float(p) for p in parts)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return None
    return (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))


def _norm_kind(name: str) -> str:
    k = re.sub(r"\W+", "_", name.strip().lower()).strip("_")
    if k.startswith("formula"):
        return "formula"
    if re.fullmatch(r"table_?\d*", k):
        return "table"
    return k


_TAG_KIND = {"table": "table", "ul": "list", "ol": "list", "li": "list_item", "img": "image",
             **{h: h for h in _HEADINGS}}


def _kind(el: _El) -> str:
    """Block kind: from the tag for headings/table/lists/img, else from the normalised class, else the tag."""
    return _TAG_KIND.get(el.tag) or _norm_kind(el.attrs.get("class", "")) or el.tag


_BREAK = object()


def _text(el: _El, skip: frozenset[str] = frozenset()) -> str:
    """Plain text of `el`: `<br>` and block boundaries are newlines; each line whitespace-normalised."""
    lines: list[list[str]] = [[]]
    stack: list[object] = list(reversed(el.children))
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            lines[-1].append(node)
            continue
        if node is _BREAK or getattr(node, "tag", "") == "br":
            lines.append([])
            continue
        assert isinstance(node, _El)
        if node.tag in skip or node.tag in ("style", "script"):
            continue
        if node.tag in ("td", "th"):
            lines[-1].append(" ")
        if node.tag in _BREAKS:
            lines.append([])
            stack.append(_BREAK)
        stack.extend(reversed(node.children))
    norm = (" ".join("".join(parts).split()) for parts in lines)
    return "\n".join(line for line in norm if line)


def _span(v: str | None) -> int:
    try:
        return max(1, min(_MAX_SPAN, int(str(v).strip())))
    except ValueError:
        return 1


def _raw_rows(el: _El) -> list[list[tuple[str, int, int]]]:
    """Rows of (cell text, colspan, rowspan) in document order; cells are not searched for nested rows."""
    rows, stack = [], [el]
    while stack:
        node = stack.pop()
        cells = [(_text(c), _span(c.attrs.get("colspan")), _span(c.attrs.get("rowspan")))
                 for c in node.elements() if c.tag in ("td", "th")]
        if cells:
            rows.append(cells)
        stack.extend(reversed([c for c in node.elements() if c.tag not in ("td", "th")]))
    return rows


def _grid(raw: list[list[tuple[str, int, int]]]) -> list[list[str]]:
    """Expand colspan/rowspan: a spanning cell's text is repeated in every grid position it covers."""
    grid: list[list[str]] = []
    pending: dict[int, tuple[str, int]] = {}  # column -> (text, rows still covered)

    for cells in raw:
        row: list[str] = []

        def take() -> None:
            while len(row) in pending:
                text, left = pending.pop(len(row))
                if left > 1:
                    pending[len(row)] = (text, left - 1)
                row.append(text)

        for text, cs, rs in cells:
            take()
            for _ in range(cs):
                if rs > 1:
                    pending[len(row)] = (text, rs - 1)
                row.append(text)
        take()
        while pending and max(pending) >= len(row):
            if len(row) in pending:
                take()
            else:
                row.append("")
        if row:
            grid.append(row)
    return grid


def _rows_text(rows: list[list[str]]) -> str:
    return "\n".join("\t".join(r) for r in rows)


def _clean_attrs(attrs: dict[str, str]) -> dict[str, str]:
    """Drop positions and colour styles (the cookbook's "ordinary HTML" cleanup)."""
    out = {}
    for k, v in attrs.items():
        if k in ("data-bbox", "data-polygon"):
            continue
        if k == "style":
            v = ";".join(d for d in v.split(";") if d.strip() and "color" not in d.split(":")[0].lower()
                         and d.split(":")[0].strip().lower() != "background")
            if not v:
                continue
        out[k] = v
    return out


def _serialize(el: _El, clean: bool = False) -> str:
    """The element's HTML; clean=True drops positions, colour styles and src-less img placeholders."""
    if clean and el.tag == "img" and "src" not in el.attrs:
        return ""
    attrs = _clean_attrs(el.attrs) if clean else el.attrs
    out = ["<" + el.tag + "".join(f' {k}="{_html.escape(v)}"' for k, v in attrs.items() if _ATTR_NAME.match(k))
           + ">"]
    if el.tag in _VOID:
        return out[0]
    for c in el.children:
        if isinstance(c, str):
            out.append(_html.escape(re.sub(r"\s+", " ", c) if clean else c, quote=False))
        else:
            out.append(_serialize(c, clean))
    return "".join(out) + f"</{el.tag}>"


def _block(el: _El, kind: str | None = None, skip: frozenset[str] = frozenset()) -> DocBlock:
    kind = kind or _kind(el)
    raw = el.attrs.get("data-bbox")
    bbox = _parse_bbox(raw)
    attrs = {k: v for k, v in el.attrs.items() if k != "data-bbox" or (raw is not None and bbox is None)}
    img = next((d for d in el.iter() if d.tag == "img" and "data-bbox" in d.attrs), None)
    if img is not None:
        attrs["img_bbox"] = img.attrs["data-bbox"]
        if bbox is None and kind == "image":
            bbox = _parse_bbox(img.attrs["data-bbox"])
    rows = None
    if el.tag == "table" or (kind in ("table", "chart") and _find(el, {"table", "tr"})):
        rows = _grid(_raw_rows(el))
    text = _rows_text(rows) if rows is not None else _text(el, skip)
    return DocBlock(kind, bbox, text, rows, _serialize(el), attrs)


def _is_wrapper(el: _El) -> bool:
    """A bbox-less container (body, page div, ...) whose children are the real blocks."""
    if "data-bbox" in el.attrs:
        return False
    if el.tag in ("html", "body"):
        return True
    if el.tag in _HEADINGS or el.tag in ("p", "table", "li", "img", "tr", "td", "th") or _kind(el) in _SPECIAL:
        return False
    return any("data-bbox" in d.attrs for d in el.iter())


def _list(el: _El, out: list[DocBlock], level: int) -> None:
    lvl = {"level": str(level)} if level > 1 else {}
    if "data-bbox" in el.attrs:
        b = _block(el, "list")
        b.text = ""
        b.attrs.update(lvl)
        out.append(b)
    for c in el.elements():
        if c.tag == "li":
            item = _block(c, "list_item", frozenset({"ul", "ol"}))
            item.attrs.update(lvl)
            out.append(item)
            for sub in _find(c, {"ul", "ol"}):
                _list(sub, out, level + 1)
        elif c.tag in ("ul", "ol"):
            _list(c, out, level + 1)
        elif c.tag not in _SKIP:
            out.append(_block(c))


def _walk(parent: _El, out: list[DocBlock], keep_text: bool) -> None:
    for child in parent.children:
        if isinstance(child, str):
            t = " ".join(child.split())
            if keep_text and t:
                out.append(DocBlock("p", None, t, html=_html.escape(t, quote=False)))
        elif child.tag in ("ul", "ol"):
            _list(child, out, 1)
        elif child.tag in _SKIP:
            continue
        elif _is_wrapper(child):
            _walk(child, out, True)
        else:
            out.append(_block(child))


def parse_document(text: str) -> list[DocBlock]:
    """Parse a QwenVL HTML answer into layout blocks in reading order (bboxes in model-frame pixels).

    Accepts fenced or bare HTML, prose around it, and output truncated at the token limit (complete blocks
    are kept, the last unclosed one with its text so far). Raises ParseError (only) when there is no HTML."""
    if not isinstance(text, str):
        raise ParseError("model output is not a string", repr(text))
    try:
        root = _tree(_extract(text))
        blocks: list[DocBlock] = []
        _walk(root, blocks, keep_text=False)
        if not blocks and not any(el.tag in ("html", "body") for el in root.iter()):
            raise ParseError("no QwenVL HTML element found", text)
        return blocks
    except ParseError:
        raise
    except Exception as e:  # the parser must never fail with anything else
        raise ParseError(f"could not parse QwenVL HTML ({type(e).__name__}: {e})", text) from e


def _esc(s: str) -> str:
    return _html.escape(s, quote=False).replace("\n", "<br>")


def _fmt_box(b: Box) -> str:
    return " ".join(str(int(round(v))) for v in b)


def _level(b: DocBlock) -> int:
    try:
        return max(1, min(32, int(b.attrs.get("level", 1))))
    except (TypeError, ValueError):
        return 1


def _rows_of(b: DocBlock) -> list[list[str]]:
    if b.rows is not None:
        return b.rows
    return [line.split("\t") for line in b.text.split("\n")] if b.text else []


def _table_html(b: DocBlock, box: str | None, clean: bool) -> str:
    """The block's own table HTML when it still matches `rows` (keeps spans), else a table built from rows."""
    rows = _rows_of(b)
    bb = f' data-bbox="{box}"' if box else ""
    if b.html:
        tables = _find(_tree(b.html), {"table"})
        if tables and _grid(_raw_rows(tables[0])) == rows:
            t = tables[0]
            t.attrs = {k: v for k, v in t.attrs.items() if k != "data-bbox"}
            if box:
                t.attrs = {"data-bbox": box, **t.attrs}
            return _serialize(t, clean)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table{bb}>{body}</table>"


def _element(b: DocBlock, clean: bool) -> str:
    """One non-list block as a single line of HTML ('' to drop it)."""
    k = b.kind
    box = None if clean or b.bbox is None else _fmt_box(b.bbox)
    bb = f' data-bbox="{box}"' if box else ""
    if clean and not b.text and not b.rows:
        return ""
    extra = ""
    for name in ("format",) if clean else ("format", "data-polygon"):
        if name in b.attrs:
            extra += f' {name}="{_html.escape(b.attrs[name])}"'
    text = _esc(b.text)
    if k in _HEADINGS or k == "p":
        return f"<{k}{extra}{bb}>{text}</{k}>"
    if k == "table":
        return _table_html(b, box, clean)
    if k not in _SPECIAL:
        return f'<div class="{_html.escape(k)}"{extra}{bb}>{text}</div>'
    cls = "image" if k == "image" else _DIV_CLASS[k]
    if k == "formula" and not clean and b.attrs.get("class", "").lower().startswith("formula"):
        cls = b.attrs["class"]
    img = ""
    if not clean and b.bbox is not None:
        ib = _parse_bbox(b.attrs.get("img_bbox")) or b.bbox
        img = f'<img data-bbox="{_fmt_box(ib)}"/>'
    if b.rows:
        inner = _table_html(DocBlock("table", rows=b.rows, html=b.html), None, clean)
    elif not b.text or clean:
        inner = text
    elif k in ("formula", "music_sheet", "chemical_formula"):
        inner = f"<div>{text}</div>"
    else:
        inner = f"<p>{text}</p>"
    return f'<div class="{_html.escape(cls)}"{extra}{bb}>{img}{inner}</div>'


def _emit(blocks: Sequence[DocBlock], clean: bool) -> str:
    lines: list[str] = []
    buf: list[str] = []
    open_lists: list[list] = []  # [tag, li still open] per open ul/ol; a nested list goes inside the open li

    def close_to(depth: int) -> None:
        while len(open_lists) > depth:
            tag, li_open = open_lists.pop()
            buf.append(("</li>" if li_open else "") + f"</{tag}>")
        if not open_lists and buf:
            lines.append("".join(buf))
            buf.clear()

    for b in blocks:
        if b.kind not in ("list", "list_item"):
            close_to(0)
            line = _element(b, clean)
            if line:
                lines.append(line)
            continue
        level = _level(b)
        want = level - 1 if b.kind == "list" else level
        close_to(want)
        while len(open_lists) < want:
            buf.append("<ul>")
            open_lists.append(["ul", False])
        bb = "" if clean or b.bbox is None else f' data-bbox="{_fmt_box(b.bbox)}"'
        if b.kind == "list":
            tag = "ol" if b.html.startswith("<ol") else "ul"
            buf.append(f"<{tag}{bb}>")
            open_lists.append([tag, False])
        elif not (clean and not b.text):
            if open_lists[-1][1]:
                buf.append("</li>")
            buf.append(f"<li{bb}>{_esc(b.text)}")
            open_lists[-1][1] = True
    close_to(0)
    return "<html><body>\n" + "".join(line + "\n" for line in lines) + "</body></html>"


def render_qwenvl_html(blocks: Sequence[DocBlock]) -> str:
    """Blocks → QwenVL HTML (the model's format, bboxes as ints); `parse_document` of it gives them back."""
    return _emit(blocks, clean=False)


def _as_blocks(blocks_or_text: str | Sequence[DocBlock]) -> Sequence[DocBlock]:
    return parse_document(blocks_or_text) if isinstance(blocks_or_text, str) else blocks_or_text


def to_html(blocks_or_text: str | Sequence[DocBlock]) -> str:
    """Ordinary HTML: no data-bbox/data-polygon/colour styles/img placeholders, formula classes normalised,
    empty blocks dropped, tables kept, one line per top-level element."""
    return _emit(_as_blocks(blocks_or_text), clean=True)


def _md_cell(s: str) -> str:
    return s.replace("\\", "\\\\").replace("|", "\\|").replace("\n", "<br>")


def _md_table(rows: list[list[str]]) -> str:
    if not rows:
        return ""
    width = max(len(r) for r in rows)
    padded = [[_md_cell(c) for c in r] + [""] * (width - len(r)) for r in rows]
    lines = ["| " + " | ".join(r) + " |" for r in padded]
    lines.insert(1, "|" + " --- |" * width)
    return "\n".join(lines)


def to_markdown(blocks_or_text: str | Sequence[DocBlock]) -> str:
    """Markdown: #-headings, paragraphs, `- ` list items, pipe tables (first row = header), `$$formula$$`,
    italic image captions, fenced music/chemistry, `<!-- image -->` for images."""
    parts: list[tuple[str, bool]] = []
    for b in _as_blocks(blocks_or_text):
        k, t, item = b.kind, b.text, False
        one_line = " ".join(t.split())
        if k == "list":
            continue
        if k in _HEADINGS:
            s = "#" * int(k[1]) + " " + one_line if one_line else ""
        elif k == "list_item":
            s, item = "  " * (_level(b) - 1) + "- " + one_line, True
        elif k == "table" or (k == "chart" and b.rows):
            s = _md_table(_rows_of(b))
        elif k == "formula":
            s = f"$${one_line}$$" if one_line else ""
        elif k == "image":
            s = "<!-- image -->" + (f"\n\n{t}" if t else "")
        elif k == "image_caption":
            s = "*" + one_line.replace("*", "\\*") + "*" if one_line else ""
        elif k in ("music_sheet", "chemical_formula"):
            lang = (b.attrs.get("format", "").split() or [""])[0]
            s = f"```{lang}\n{t}\n```" if t else ""
        else:
            s = t
        if s:
            parts.append((s, item))
    out = ""
    for i, (s, item) in enumerate(parts):
        if i:
            out += "\n" if item and parts[i - 1][1] else "\n\n"
        out += s
    return out + "\n" if out else ""
