"""Document pages: a heading, paragraphs and a small ruled table -> QwenVL HTML with data-bbox (capabilities.md §2.1).

The answer is `render_qwenvl_html(blocks)` in a ```html fence, every block's data-bbox in model-frame pixels;
system prompt `prompts.DOCUMENT_SYSTEM`, user text `prompts.DOCUMENT_USER` after the image. `meta["blocks"]` has
each block's kind, text, rows (tables) and box in original pixels. A paragraph's text is its words joined by
single spaces (line breaks from wrapping are layout, not content).
"""
from __future__ import annotations

import random

from PIL import Image, ImageDraw

from ..tasks import prompts
from ..tasks.document import render_qwenvl_html
from ..tasks.types import DocBlock
from . import FONT_FAMILIES, Ctx, base_meta, bold_family, font, frame_map, image_record, image_size, save_png
from .text import CAPS, ITEMS, NOUNS, WORDS, text_colour

PAGE_RATIOS = (3 / 4, 2 / 3, 1 / 1.414, 1.0, 4 / 3)  # width / height: mostly portrait pages


def sentence(rng: random.Random, lo: int = 4, hi: int = 10) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]
    if rng.random() < 0.3:
        words.insert(rng.randrange(len(words)), str(rng.randint(2, 2025)))
    return " ".join(words).capitalize() + "."


def wrap(draw, text: str, fnt, width: float) -> list[str]:
    """Greedy word wrap; a word wider than the line gets a line of its own (then clipped by the caller's check)."""
    lines, cur = [], ""
    for word in text.split():
        cand = f"{cur} {word}" if cur else word
        if cur and draw.textlength(cand, font=fnt) > width:
            lines.append(cur)
            cur = word
        else:
            cur = cand
    if cur:
        lines.append(cur)
    return lines


def table_rows(rng: random.Random, curriculum: int) -> list[list[str]]:
    n_cols = rng.randint(2, 3)
    n_rows = rng.randint(2, 3 + min(curriculum, 2))
    headers = rng.sample(("Item", "Qty", "Price", "Name", "Score", "Year", "Code", "Total"), n_cols)
    rows = [headers]
    for _ in range(n_rows - 1):
        row = [rng.choice(ITEMS)]
        for _ in range(n_cols - 1):
            row.append(rng.choice((str(rng.randint(1, 999)), f"{rng.randint(0, 99)}.{rng.randint(0, 99):02d}")))
        rows.append(row)
    return rows


def _text_lines(draw, lines, x, y, fnt, ink, pitch) -> list[int]:
    """Draw lines from (x, y); return the union of their layout boxes."""
    box = None
    for k, ln in enumerate(lines):
        draw.text((x, y + k * pitch), ln, font=fnt, fill=ink)
        b = draw.textbbox((x, y + k * pitch), ln, font=fnt)
        box = list(b) if box is None else [min(box[0], b[0]), min(box[1], b[1]), max(box[2], b[2]), max(box[3], b[3])]
    return box


def _table(draw, rows, x, y, fnt, ink, pad: int, col_w: list[int], row_h: int) -> list[int]:
    width, height = sum(col_w), row_h * len(rows)
    for r, row in enumerate(rows):
        cx = x
        for c, cell in enumerate(row):
            draw.text((cx + pad, y + r * row_h + pad), cell, font=fnt, fill=ink)
            cx += col_w[c]
    for r in range(len(rows) + 1):
        draw.line([x, y + r * row_h, x + width, y + r * row_h], fill=ink, width=1)
    cx = x
    for c in range(len(col_w) + 1):
        draw.line([cx, y, cx, y + height], fill=ink, width=1)
        cx += col_w[c] if c < len(col_w) else 0
    return [x, y, x + width + 1, y + height + 1]


def page(ctx: Ctx, rng: random.Random):
    """(image, blocks [{kind, text, rows, box}] in reading order, FrameMap, font family, body size)."""
    h, w = image_size(rng, max(ctx.curriculum, 1), lo=196, ratios=PAGE_RATIOS)
    fm = frame_map(h, w, ctx)
    family = rng.choice(FONT_FAMILIES)
    min_size = max(10, round(9 * max(fm.sx, fm.sy)))
    size = rng.randint(min_size, max(min_size, min(16, w // 24)))
    body = font(size, family)
    level = rng.choice(("h1", "h2"))
    head = font(round(size * (1.8 if level == "h1" else 1.4)), bold_family(family))
    shade = rng.randint(238, 255)
    img = Image.new("RGB", (w, h), (shade, shade, min(255, shade + rng.randint(-6, 6))))
    draw = ImageDraw.Draw(img)
    ink = text_colour(rng)
    margin = rng.randint(8, 16)
    width = w - 2 * margin
    pitch = round(size * rng.uniform(1.2, 1.45))
    gap = rng.randint(round(size * 0.6), round(size * 1.4))
    blocks = []
    y = margin

    def room(need: float) -> bool:
        return y + need <= h - margin

    title = " ".join([rng.choice(CAPS), rng.choice(NOUNS), *(t.title() for t in rng.sample(WORDS, rng.randint(0, 2)))])
    tlines = wrap(draw, title, head, width)
    if len(tlines) > 1:
        title = tlines[0]
        tlines = tlines[:1]
    hpitch = round(head.size * 1.25)
    box = _text_lines(draw, tlines, margin, y, head, ink, hpitch)
    blocks.append({"kind": level, "text": title, "rows": None, "box": box})
    y = box[3] + gap
    plan = ["p"] + (["table"] if ctx.curriculum >= 1 or rng.random() < 0.5 else []) + \
        ["p"] * rng.randint(0, min(ctx.curriculum, 2))
    rng.shuffle(plan)
    for kind in plan:
        if kind == "p":
            text = " ".join(sentence(rng) for _ in range(rng.randint(1, 2 + min(ctx.curriculum, 2))))
            lines = wrap(draw, text, body, width)
            while lines and not room(len(lines) * pitch):  # shorten to the room left (whole lines)
                lines = lines[:-1]
            if not lines:
                break
            text = " ".join(lines)
            box = _text_lines(draw, lines, margin, y, body, ink, pitch)
            blocks.append({"kind": "p", "text": text, "rows": None, "box": box})
            y = box[3] + gap
        else:
            rows = table_rows(rng, ctx.curriculum)
            pad = max(2, size // 4)
            col_w = [max(int(draw.textlength(r[c], font=body)) for r in rows) + 2 * pad for c in range(len(rows[0]))]
            row_h = round(size * 1.25) + 2 * pad
            while len(rows) > 2 and not room(row_h * len(rows) + 2):
                rows = rows[:-1]
            if sum(col_w) + 1 > width or not room(row_h * len(rows) + 2):
                continue
            x = margin + rng.randint(0, (width - sum(col_w) - 1) // 3)
            box = _table(draw, rows, x, y, body, ink, pad, col_w, row_h)
            blocks.append({"kind": "table", "text": "\n".join("\t".join(r) for r in rows), "rows": rows, "box": box})
            y = box[3] + gap
    for b in blocks:  # layout boxes stay on the page
        x1, y1, x2, y2 = b["box"]
        b["box"] = [max(0, x1), max(0, y1), min(w, x2), min(h, y2)]
    return img, blocks, fm, family, size


def document(ctx: Ctx, rng: random.Random, name: str) -> dict:
    img, blocks, fm, family, size = page(ctx, rng)
    html = render_qwenvl_html([DocBlock(b["kind"], tuple(fm.box_label(b["box"])), b["text"], b["rows"])
                               for b in blocks])
    answer = f"```html\n{html}\n```"
    rel, full = ctx.media("document", name, "png")
    save_png(img, full)
    meta = {**base_meta(fm, ctx), "blocks": blocks, "font": family, "font_size": size}
    return image_record(ctx, rel, prompts.DOCUMENT_USER, answer, meta, system=prompts.DOCUMENT_SYSTEM,
                        image_first=True)


TASKS = {"document": document}
