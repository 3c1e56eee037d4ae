"""Rendered text: words and numbers in a few fonts and sizes -> read_text, spot_text; receipt cards -> key_values.

Formats (capabilities.md §2.2-2.3): read_text answers plain lines in reading order; spot_text a ```json list of
{"bbox_2d": [...], "text_content": "..."} per line (model-frame pixels); key_values a ```json object with the
template's keys. A line's box is its layout box from Pillow (`textbbox`), in original pixels in `meta`.
"""
from __future__ import annotations

import math
import random

from PIL import Image, ImageDraw

from ..tasks import prompts
from . import (FONT_FAMILIES, Ctx, background, base_meta, bold_family, fenced_json, font, frame_map, image_record,
               image_size, jitter, pale, save_png)

WORDS = tuple("""
apple river stone cloud green light table window paper garden orange silver winter summer market coffee bread
music water forest planet rocket yellow purple simple moment travel ticket office number letter castle bridge
mountain island ocean valley sunset morning evening pencil camera marble copper engine signal random circle
square triangle star button field screen report figure total amount invoice receipt store price budget salary
north south east west alpha delta gamma omega vector matrix tensor kernel model train test sample token image
video frame second minute hour today tomorrow yesterday monday friday quick brown lazy happy bright silent
gentle rapid honest clever tiny giant golden wooden metal glass cotton velvet lemon mango cherry peach melon
""".split())
CAPS = ("Alpha", "Bravo", "Delta", "Echo", "Nova", "Orion", "Vega", "Atlas", "Zenith", "Polar", "Summit",
        "Harbor", "Maple", "Cedar", "Sunrise", "Golden", "Silver", "Blue", "Green", "Red")
NOUNS = ("Bakery", "Cafe", "Market", "Books", "Pharmacy", "Hardware", "Electronics", "Deli", "Florist", "Diner",
         "Grocery", "Outlet", "Studio", "Kitchen", "Supply")
SUFFIXES = ("", "", " Ltd", " Inc", " Co", " & Sons", " LLC")
STREETS = ("Main", "Oak", "Pine", "Elm", "Lake", "Hill", "Park", "River", "Market", "Station", "Mill", "King")
STREET_KINDS = ("St", "Ave", "Rd", "Blvd", "Lane", "Way")
CITIES = ("Springfield", "Riverton", "Lakeside", "Fairview", "Georgetown", "Kingston", "Ashford", "Milton")
ITEMS = ("Coffee", "Tea", "Bagel", "Muffin", "Sandwich", "Salad", "Juice", "Water", "Soup", "Cookie", "Pasta",
         "Notebook", "Pen", "Battery", "Cable", "Tape", "Milk", "Eggs", "Rice", "Apples")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
SIZES = (12, 14, 16, 18, 20, 24, 28, 32, 40)


def token(rng: random.Random) -> str:
    """A word (lower, Title or UPPER case) or a number (integer, decimal, code, percentage)."""
    r = rng.random()
    if r < 0.65:
        w = rng.choice(WORDS)
        return rng.choice((w, w, w.title(), w.upper()))
    kind = rng.randrange(4)
    if kind == 0:
        return str(rng.randint(0, 99999))
    if kind == 1:
        return f"{rng.randint(0, 999)}.{rng.randint(0, 99):02d}"
    if kind == 2:
        return f"{rng.choice('ABCDEFGHKMNPRSTX')}{rng.choice('ABCDEFGHKMNPRSTX')}-{rng.randint(100, 9999)}"
    return f"{rng.randint(1, 100)}%"


def text_colour(rng: random.Random) -> tuple[int, int, int]:
    return tuple(rng.randint(0, 90) for _ in range(3))


def max_lines(curriculum: int) -> int:
    return (1, 3, 5, 8)[min(max(curriculum, 0), 3)]


def _fit_line(draw, rng, fnt, width: int, n_tokens: int) -> str | None:
    """A line of up to n_tokens tokens whose width fits; None if even one token does not (after a few tries)."""
    for _ in range(6):
        toks = [token(rng) for _ in range(n_tokens)]
        while toks:
            line = " ".join(toks)
            if draw.textlength(line, font=fnt) <= width:
                return line
            toks.pop()
    return None


def text_scene(ctx: Ctx, rng: random.Random):
    """(image, lines [{text, box}] top to bottom, font family, size, background kind, FrameMap)."""
    h, w = image_size(rng, ctx.curriculum)
    n = rng.randint(1, max_lines(ctx.curriculum))
    family = rng.choice(FONT_FAMILIES)
    fm = frame_map(h, w, ctx)
    # Text at least ~10 model px high; lines must fit the height with some spacing.
    min_size = max(12, round(10 * max(fm.sx, fm.sy)))
    sizes = [s for s in SIZES if s >= min_size and s * 1.5 * n <= h - 8] or [min_size]
    size = rng.choice(sizes)
    n = max(1, min(n, int((h - 8) // (size * 1.5))))
    img, bg = background(rng, h, w)
    draw = ImageDraw.Draw(img)
    fnt = font(size, family)
    colour = text_colour(rng)
    margin = 4
    lines = []
    texts = [t for _ in range(n) if (t := _fit_line(draw, rng, fnt, w - 2 * margin, rng.randint(1, 4)))]
    if not texts:  # the width does not hold a token at this size: one short number
        texts = [str(rng.randint(0, 99))]
    pitch = (h - 2 * margin) / len(texts)
    for k, t in enumerate(texts):
        x0, y0, x1, y1 = draw.textbbox((0, 0), t, font=fnt)
        lw, lh = x1 - x0, y1 - y0
        x = rng.randint(margin, max(margin, w - margin - lw)) - x0
        top = margin + k * pitch
        y = round(top + rng.uniform(0, max(0.0, pitch - lh - 2))) - y0
        draw.text((x, y), t, font=fnt, fill=jitter(colour, rng, 10))
        box = list(draw.textbbox((x, y), t, font=fnt))
        box = [max(0, box[0]), max(0, box[1]), min(w, box[2]), min(h, box[3])]
        lines.append({"text": t, "box": box})
    return img, lines, family, size, bg, fm


def _save(ctx, task, name, img):
    rel, full = ctx.media(task, name, "png")
    save_png(img, full)
    return rel


def read_text(ctx: Ctx, rng: random.Random, name: str) -> dict:
    img, lines, family, size, bg, fm = text_scene(ctx, rng)
    answer = "\n".join(ln["text"] for ln in lines)
    meta = {**base_meta(fm, ctx), "lines": lines, "font": family, "font_size": size, "background": bg}
    return image_record(ctx, _save(ctx, "read_text", name, img), prompts.READ_TEXT, answer, meta, image_first=True)


def spot_text(ctx: Ctx, rng: random.Random, name: str) -> dict:
    img, lines, family, size, bg, fm = text_scene(ctx, rng)
    answer = fenced_json([{"bbox_2d": fm.box_label(ln["box"]), "text_content": ln["text"]} for ln in lines])
    meta = {**base_meta(fm, ctx), "lines": lines, "font": family, "font_size": size, "background": bg}
    return image_record(ctx, _save(ctx, "spot_text", name, img), prompts.SPOT_TEXT, answer, meta, image_first=True)


# ----------------------------------------------------------------------------------------------- receipts

KV_KEYS = ("company", "date", "address", "total")


def _date(rng: random.Random) -> str:
    y, m, d = rng.randint(2015, 2025), rng.randint(1, 12), rng.randint(1, 28)
    return rng.choice((f"{y}-{m:02d}-{d:02d}", f"{d:02d}/{m:02d}/{y}", f"{MONTHS[m - 1]} {d}, {y}",
                       f"{d:02d}.{m:02d}.{y}"))


def receipt_fields(rng: random.Random, n_items: int) -> tuple[dict, list[tuple[str, str]]]:
    company = f"{rng.choice(CAPS)} {rng.choice(NOUNS)}{rng.choice(SUFFIXES)}"
    address = f"{rng.randint(1, 999)} {rng.choice(STREETS)} {rng.choice(STREET_KINDS)}, {rng.choice(CITIES)}"
    items = [(rng.choice(ITEMS), rng.randint(50, 4999)) for _ in range(n_items)]
    cents = sum(p for _, p in items) if items else rng.randint(100, 9999)
    cur = rng.choice(("", "$", "$", "EUR "))
    total = f"{cur}{cents // 100}.{cents % 100:02d}"
    values = {"company": company, "date": _date(rng), "address": address, "total": total}
    return values, [(name, f"{p // 100}.{p % 100:02d}") for name, p in items]


def _receipt_lines(values: dict, items, date_label: str, total_label: str):
    """(kind, left text, right text) rows of the card."""
    rows = [("company", values["company"], ""), ("address", values["address"], ""),
            ("date", f"{date_label}{values['date']}", "")]
    if items:
        rows.append(("rule", "", ""))
        rows += [("item", n, p) for n, p in items]
    rows.append(("rule", "", ""))
    rows.append(("total", total_label, values["total"]))
    return rows


def _layout(draw, rows, size: int, family: str):
    """(card width, card height, per-row (font, height)) for a font size."""
    body, head = font(size, family), font(round(size * 1.3), bold_family(family))
    widths, heights = [], []
    for kind, left, right in rows:
        f = head if kind == "company" else body
        if kind == "rule":
            widths.append(0)
            heights.append(size // 2 + 2)
            continue
        x0, y0, x1, y1 = draw.textbbox((0, 0), left or right, font=f)
        lw = draw.textlength(left, font=f) + (draw.textlength("  " + right, font=f) if right else 0)
        widths.append(lw)
        heights.append(max(y1, round(f.size * 1.2)) + 3)
    return max(widths) + 16, sum(heights) + 12, heights


def receipt(ctx: Ctx, rng: random.Random):
    n_items = rng.randint(0, min(4, ctx.curriculum + 1))
    values, items = receipt_fields(rng, n_items)
    rows = _receipt_lines(values, items, rng.choice(("Date: ", "Date ", "")),
                          rng.choice(("TOTAL", "Total", "Total due", "AMOUNT")))
    family = rng.choice(FONT_FAMILIES)
    probe = ImageDraw.Draw(Image.new("RGB", (8, 8)))
    h, w = image_size(rng, max(ctx.curriculum, 1), lo=168, ratios=(1.0, 3 / 4, 2 / 3, 4 / 3, 9 / 16))
    fm = frame_map(h, w, ctx)
    min_size = max(10, round(9 * max(fm.sx, fm.sy)))
    fits = [s for s in range(min_size, 25) if all(d <= lim for d, lim in zip(_layout(probe, rows, s, family)[:2],
                                                                             (w - 8, h - 8)))]
    if not fits:  # grow the canvas to the card at the smallest size (at most 448 per side)
        cw, ch, _ = _layout(probe, rows, min_size, family)
        if cw > 440 or ch > 440:
            rows = [r for r in rows if r[0] != "item"]
            cw, ch, _ = _layout(probe, rows, min_size, family)
        h, w = min(448, max(h, math.ceil(ch) + 8)), min(448, max(w, math.ceil(cw) + 8))
        fm = frame_map(h, w, ctx)
        fits = [min_size]
    size = rng.choice(fits[-4:])
    cw, ch, heights = _layout(probe, rows, size, family)
    cw, ch = int(cw) + 1, int(ch) + 1
    img, bg = background(rng, h, w)
    draw = ImageDraw.Draw(img)
    cx, cy = rng.randint(2, max(2, w - cw - 2)), rng.randint(2, max(2, h - ch - 2))
    paper = tuple(min(255, c + 10) for c in pale(rng))
    draw.rectangle([cx, cy, cx + cw - 1, cy + ch - 1], fill=paper, outline=jitter((150, 150, 150), rng))
    ink = text_colour(rng)
    body, head = font(size, family), font(round(size * 1.3), bold_family(family))
    y = cy + 6
    lines = []
    for (kind, left, right), rh in zip(rows, heights):
        f = head if kind == "company" else body
        if kind == "rule":
            draw.line([cx + 6, y + rh // 2, cx + cw - 7, y + rh // 2], fill=ink, width=1)
        elif right:
            draw.text((cx + 8, y), left, font=f, fill=ink)
            rx = cx + cw - 8 - draw.textlength(right, font=f)
            draw.text((rx, y), right, font=f, fill=ink)
            lines += [{"text": left, "box": list(draw.textbbox((cx + 8, y), left, font=f)), "field": kind},
                      {"text": right, "box": list(draw.textbbox((rx, y), right, font=f)), "field": kind}]
        else:
            x = cx + (cw - draw.textlength(left, font=f)) / 2 if kind == "company" else cx + 8
            draw.text((x, y), left, font=f, fill=ink)
            lines.append({"text": left, "box": list(draw.textbbox((x, y), left, font=f)), "field": kind})
        y += rh
    return img, values, lines, family, size, bg, fm


def key_values(ctx: Ctx, rng: random.Random, name: str) -> dict:
    img, values, lines, family, size, bg, fm = receipt(ctx, rng)
    answer = fenced_json({k: values[k] for k in KV_KEYS}, list_items=False)
    meta = {**base_meta(fm, ctx), "values": {k: values[k] for k in KV_KEYS}, "keys": list(KV_KEYS),
            "lines": lines, "font": family, "font_size": size, "background": bg}
    text = prompts.key_values({k: "" for k in KV_KEYS})
    return image_record(ctx, _save(ctx, "key_values", name, img), text, answer, meta)


TASKS = {"read_text": read_text, "spot_text": spot_text, "key_values": key_values}
