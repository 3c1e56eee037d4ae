"""GUI screenshots: a window with a title bar, menus, labelled text fields, checkboxes and buttons -> a
`computer_use` left_click on the named element's centre (capabilities.md §4.3-4.4).

The messages are `qwenvl.tasks.agent.build_messages` (system: the Nous tool prompt whose tool states the RESIZED
screen size; user: the cookbook history text with an empty history, then the screenshot, here as a file path) and
the answer is `<tool_call>\\n{"name": "computer_use", "arguments": {"action": "left_click", "coordinate": [x, y]}}\\n
</tool_call>` with (x, y) in model-frame pixels. `meta` has every element's box and the target's centre in
original pixels (click accuracy: the click lands inside the target's box).
"""
from __future__ import annotations

import json
import random
import re

from PIL import Image, ImageDraw

from ..tasks import agent
from . import FONT_FAMILIES, Ctx, base_meta, font, frame_map, image_record, image_size, jitter, save_png

MENUS = ("File", "Edit", "View", "Insert", "Format", "Tools", "Window", "Help")
FIELDS = ("Name", "Email", "Password", "Search", "City", "Phone", "Username", "Address", "Title", "Amount",
          "Country", "Company")
CHECKS = ("Remember me", "Subscribe", "Dark mode", "Auto save", "Show hidden", "Agree")
BUTTONS = ("OK", "Cancel", "Apply", "Save", "Submit", "Next", "Back", "Search", "Login", "Delete", "Open", "Close",
           "Reset", "Send")
TITLES = ("Settings", "Sign in", "Preferences", "New account", "Order form", "Contact", "Export", "Properties",
          "Untitled - Editor", "Search files")
PHRASES = {
    "button": ("Click the {} button.", "Press the {} button.", "Click on the \"{}\" button."),
    "field": ("Click the {} text field.", "Click on the {} input box.", "Select the {} field."),
    "menu": ("Open the {} menu.", "Click the {} menu."),
    "checkbox": ("Tick the {} checkbox.", "Click the {} checkbox."),
}
SCREEN_RATIOS = (4 / 3, 16 / 9, 3 / 2, 16 / 10, 1.0, 3 / 4)


def limits(curriculum: int) -> dict:
    c = min(max(curriculum, 0), 2)
    return {"fields": (1, 2, 4)[c], "checks": (0, 1, 2)[c], "buttons": (2, 3, 4)[c], "menus": (2, 3, 5)[c]}


def ink_box(draw, xy, text: str, fnt) -> list[float]:
    """The ink box of `text` drawn at `xy` (original pixels; where the label's glyphs are, for the tower's glyph
    head)."""
    return [round(v, 1) for v in draw.textbbox(xy, text, font=fnt)]


def window(ctx: Ctx, rng: random.Random, counts: dict | None = None):
    """(screenshot, elements [{type, name, box, label_box}], FrameMap, title, font family, size). `counts`
    ({kind: n}, kinds left out: none) asks for exactly that many elements of each kind rather than the curriculum's
    random numbers (the layout may still drop one that does not fit)."""
    h, w = image_size(rng, max(ctx.curriculum, 1), lo=196, ratios=SCREEN_RATIOS)
    fm = frame_map(h, w, ctx)
    lim = limits(ctx.curriculum)
    # (fewest, most) elements of each kind
    span = {"menus": (min(2, lim["menus"]), lim["menus"]), "buttons": (min(2, lim["buttons"]), lim["buttons"]),
            "fields": (1, lim["fields"]), "checks": (0, lim["checks"])}
    if counts is not None:
        plural = {"menu": "menus", "button": "buttons", "field": "fields", "checkbox": "checks"}
        span = {k: (0, 0) for k in span} | {plural[k]: (n, n) for k, n in counts.items()}
    family = rng.choice([f for f in FONT_FAMILIES if f != "dejavu-mono"] or ["default"])
    size = max(round(9 * max(fm.sx, fm.sy)), rng.randint(11, 14))
    fnt = font(size, family)
    desk = tuple(rng.randint(60, 170) for _ in range(3))
    img = Image.new("RGB", (w, h), desk)
    draw = ImageDraw.Draw(img)
    m = rng.randint(3, 16)
    x0, y0, x1, y1 = m + rng.randint(0, 8), m + rng.randint(0, 8), w - m - rng.randint(0, 8), h - m - rng.randint(0, 8)
    face = jitter((236, 236, 236), rng, 12)
    draw.rectangle([x0, y0, x1, y1], fill=face, outline=(90, 90, 90))
    # title bar
    tb = size + 8
    bar = jitter(rng.choice(((40, 90, 180), (60, 60, 70), (30, 120, 110), (110, 50, 120))), rng, 15)
    draw.rectangle([x0, y0, x1, y0 + tb], fill=bar)
    title = rng.choice(TITLES)
    draw.text((x0 + 6, y0 + 4), title, font=fnt, fill=(250, 250, 250))
    draw.text((x1 - 6 - draw.textlength("x", font=fnt), y0 + 3), "x", font=fnt, fill=(250, 250, 250))
    elements = []
    # menu bar
    mb0, mb1 = y0 + tb + 1, y0 + tb + size + 7
    draw.rectangle([x0 + 1, mb0, x1 - 1, mb1], fill=jitter((222, 222, 222), rng, 8))
    mx = x0 + 6
    for name in rng.sample(MENUS, rng.randint(*span["menus"])):
        tw = draw.textlength(name, font=fnt)
        if mx + tw + 6 > x1 - 4:
            break
        draw.text((mx + 3, mb0 + 3), name, font=fnt, fill=(20, 20, 20))
        elements.append({"type": "menu", "name": name, "box": [round(mx), mb0, round(mx + tw + 6), mb1],
                         "label_box": ink_box(draw, (mx + 3, mb0 + 3), name, fnt)})
        mx += tw + 6 + rng.randint(4, 10)
    # buttons (bottom row) first, so the form rows know the room left
    bh = size + 10
    by1 = y1 - rng.randint(6, 12)
    by0 = by1 - bh
    names = rng.sample(BUTTONS, rng.randint(*span["buttons"]))
    widths = [round(draw.textlength(n, font=fnt)) + rng.randint(14, 24) for n in names]
    gap = rng.randint(6, 12)
    while sum(widths) + gap * (len(widths) - 1) > x1 - x0 - 16 and len(names) > 1:
        names, widths = names[:-1], widths[:-1]
    total = sum(widths) + gap * (len(widths) - 1)
    align = rng.choice(("right", "left", "center"))
    bx = {"left": x0 + 8, "right": x1 - 8 - total, "center": (x0 + x1 - total) // 2}[align]
    fill = jitter(rng.choice(((250, 250, 250), (70, 130, 220), (225, 225, 225))), rng, 8)
    ink = (255, 255, 255) if sum(fill) < 500 else (20, 20, 20)
    for name, bw in zip(names, widths):
        box = [bx, by0, bx + bw, by1]
        draw.rounded_rectangle([box[0], box[1], box[2] - 1, box[3] - 1], radius=4, fill=fill, outline=(100, 100, 100))
        tw = draw.textlength(name, font=fnt)
        draw.text((bx + (bw - tw) / 2, by0 + 4), name, font=fnt, fill=ink)
        elements.append({"type": "button", "name": name, "box": box,
                         "label_box": ink_box(draw, (bx + (bw - tw) / 2, by0 + 4), name, fnt)})
        bx += bw + gap
    # form rows: fields then checkboxes
    rows = [("field", n) for n in rng.sample(FIELDS, rng.randint(*span["fields"]))]
    rows += [("checkbox", n) for n in rng.sample(CHECKS, rng.randint(*span["checks"]))]
    rng.shuffle(rows)
    fh = size + 8
    pitch = fh + rng.randint(6, 12)
    y = mb1 + rng.randint(8, 14)
    label_w = max([draw.textlength(n, font=fnt) for t, n in rows if t == "field"] or [0])
    fx0 = round(x0 + 10 + label_w + 10)
    fx1 = x1 - rng.randint(10, 30)
    for kind, name in rows:
        if y + fh > by0 - 6:
            break
        if kind == "field":
            if fx1 - fx0 < 30:
                continue
            draw.text((x0 + 10, y + 4), name, font=fnt, fill=(30, 30, 30))
            label = ink_box(draw, (x0 + 10, y + 4), name, fnt)
            box = [fx0, y, fx1, y + fh]
            draw.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=(255, 255, 255), outline=(120, 120, 120))
        else:
            box = [x0 + 10, y + 3, x0 + 10 + fh - 6, y + fh - 3]
            draw.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=(255, 255, 255), outline=(90, 90, 90))
            if rng.random() < 0.4:
                draw.line([box[0] + 2, box[1] + 2, box[2] - 3, box[3] - 3], fill=(20, 20, 20), width=2)
            draw.text((box[2] + 6, y + 4), name, font=fnt, fill=(30, 30, 30))
            label = ink_box(draw, (box[2] + 6, y + 4), name, fnt)
        elements.append({"type": kind, "name": name, "box": box, "label_box": label})
        y += pitch
    return img, elements, fm, title, family, size


# `--gui-prompt short` (qwenvl.synth.build): the tool prompt is ~820 tokens of each ~1,000-token record, so a
# click costs 6x the tokens of a pointing question; this system text keeps the task and the answer format.
SHORT_SYSTEM = ("You are a helpful assistant. You control a computer with the computer_use tool; the screen is {w}x{h}. "
                "Answer with one left_click tool call on the element the user names.")


def click_answer(x: int, y: int) -> str:
    call = {"name": "computer_use", "arguments": {"action": "left_click", "coordinate": [x, y]}}
    return f"<tool_call>\n{json.dumps(call)}\n</tool_call>"


def computer_use(ctx: Ctx, rng: random.Random, name: str) -> dict:
    img, elements, fm, title, family, size = window(ctx, rng)
    t = rng.randrange(len(elements))
    el = elements[t]
    task = rng.choice(PHRASES[el["type"]]).format(el["name"])
    b = el["box"]
    c = ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
    x, y = fm.point_label(c)
    rel, full = ctx.media("computer_use", name, "png")
    save_png(img, full)
    rh, rw = fm.resized
    msgs = agent.build_messages(task, img, [], agent.computer_use_tool(rw, rh), min_pixels=ctx.min_pixels,
                                max_pixels=ctx.max_pixels)
    if ctx.extra.get("gui_prompt") == "short":  # training data: the same screen and answer, ~40 prompt tokens
        msgs[0]["content"] = SHORT_SYSTEM.format(w=rw, h=rh)
    for part in msgs[-1]["content"]:
        if part.get("type") == "image":
            part["image"] = rel  # a file path for JSONL
    msgs.append({"role": "assistant", "content": click_answer(x, y)})
    meta = {**base_meta(fm, ctx), "instruction": task, "elements": elements, "target": t, "box": b, "point": list(c),
            "window_title": title, "font": family, "font_size": size}
    return {"messages": msgs, "meta": meta}


# Naming rungs (`--tasks gui_rungs`; not in the default task list): the same screenshots, asked what the labels say
# rather than where they are, so the language model learns what each name looks like in the vision tokens before it
# must click by name. `gui_name_at` is the click turned round (its point is the click's answer), `gui_exists` is
# the name-to-token match alone, `gui_list` reads every label of one kind in order.
NAME_ONE = ("What is the element in this window?", "Which element does this window have?")
NAME_KIND = ("Which {kind} does this window have?", "What is the {kind} in this window?")
IS_ONE = ("Is the element in this window the {name} {kind}?", "Is this window's element the {name} {kind}?")
NAME_AT = ("Which element is at ({x}, {y})?", "What is at ({x}, {y}) on the screen?")
EXISTS = ("Is there {a} {name} {kind}?", "Does this window have {a} {name} {kind}?")
LIST = ("List the {kind}s in this window.", "Which {kind}s does this window have?")
VOCAB = {"button": BUTTONS, "field": FIELDS, "menu": MENUS, "checkbox": CHECKS}


def reading_order(elements: list[dict], kind: str) -> list[str]:
    """The names of the elements of `kind`, top to bottom, then left to right (box top-left corners)."""
    return [e["name"] for e in sorted((e for e in elements if e["type"] == kind), key=lambda e: (e["box"][1],
                                                                                                  e["box"][0]))]


def _rung(ctx: Ctx, name: str, task: str, question: str, answer: str, meta: dict, img, fm) -> dict:
    rel, full = ctx.media(task, name, "png")
    save_png(img, full)
    return image_record(ctx, rel, question, answer, {**base_meta(fm, ctx), **meta})


def gui_name_at(ctx: Ctx, rng: random.Random, name: str) -> dict:
    """Which element is at (x, y) -> "The Save button." ((x, y): the element's click point, model-frame pixels)."""
    img, elements, fm, title, *_ = window(ctx, rng)
    t = rng.randrange(len(elements))
    el = elements[t]
    b = el["box"]
    x, y = fm.point_label(((b[0] + b[2]) / 2, (b[1] + b[3]) / 2))
    q = rng.choice(NAME_AT).format(x=x, y=y)
    return _rung(ctx, name, "gui_name_at", q, f"The {el['name']} {el['type']}.",
                 {"elements": elements, "target": t, "answer_name": el["name"], "answer_kind": el["type"]}, img, fm)


def one_element_window(ctx: Ctx, rng: random.Random):
    """(screenshot, [the one element], FrameMap) of a window with one element of a random kind."""
    while True:
        kind = rng.choice(sorted(VOCAB))
        img, elements, fm, *_ = window(ctx, rng, counts={kind: 1})
        if elements:  # a field whose box did not fit is left out: draw another window
            return img, elements, fm


def gui_name_one(ctx: Ctx, rng: random.Random, name: str) -> dict:
    """A window with one element -> "The Save button." The first rung: the name is copied from the label's tokens
    with no position to look up and no other label to tell apart (only the title's text is beside it)."""
    img, elements, fm = one_element_window(ctx, rng)
    el = elements[0]
    return _rung(ctx, name, "gui_name_one", rng.choice(NAME_ONE), f"The {el['name']} {el['type']}.",
                 {"elements": elements, "target": 0, "answer_name": el["name"], "answer_kind": el["type"]}, img, fm)


def gui_is_one(ctx: Ctx, rng: random.Random, name: str) -> dict:
    """A window with one element, asked whether it is a given name -> "Yes." / "No." (half each; a "no" names
    another element of the same kind, so the kind cannot answer). The first rung from a name in the prompt to the
    label: copy the label's name, then compare it with the prompt's."""
    img, elements, fm = one_element_window(ctx, rng)
    el = elements[0]
    kind = el["type"]
    yes = rng.random() < 0.5
    asked = el["name"] if yes else rng.choice([n for n in VOCAB[kind] if n != el["name"]])
    return _rung(ctx, name, "gui_is_one", rng.choice(IS_ONE).format(name=asked, kind=kind), "Yes." if yes else "No.",
                 {"elements": elements, "target": 0, "asked": asked, "kind": kind, "exists": yes}, img, fm)


def gui_name_kind(ctx: Ctx, rng: random.Random, name: str) -> dict:
    """A window with one element of the asked kind among up to two of each other kind -> "The Save button." The
    second rung: the kind picks the label (as a colour or shape picks an object), then its name is copied."""
    while True:
        kind = rng.choice(sorted(VOCAB))
        counts = {k: rng.randint(0, 2) for k in sorted(VOCAB) if k != kind} | {kind: 1}
        img, elements, fm, title, *_ = window(ctx, rng, counts=counts)
        if any(e["type"] == kind for e in elements):  # a field whose box did not fit is left out: draw another
            break
    t = next(i for i, e in enumerate(elements) if e["type"] == kind)
    el = elements[t]
    return _rung(ctx, name, "gui_name_kind", rng.choice(NAME_KIND).format(kind=kind), f"The {el['name']} {kind}.",
                 {"elements": elements, "target": t, "answer_name": el["name"], "answer_kind": kind}, img, fm)


ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth")


def gui_copy(ctx: Ctx, rng: random.Random, name: str) -> dict:
    """Text only: "The window has the Save button, the City field, the View menu. Which element comes third?" ->
    "The View menu." The copy circuit on words that arrive as their own embeddings, to train beside the rungs."""
    n = rng.randint(3, 6)
    pool = [(k, v) for k in sorted(VOCAB) for v in VOCAB[k]]
    items = rng.sample(pool, n)
    t = rng.randrange(n)
    listed = ", ".join(f"the {v} {k}" for k, v in items)
    q = f"The window has {listed}. Which element comes {ORDINALS[t]}?"
    kind, el = items[t]
    return {"messages": [{"role": "user", "content": [{"type": "text", "text": q}]},
                         {"role": "assistant", "content": f"The {el} {kind}."}],
            "meta": {"task": "gui_copy", "items": [{"type": k, "name": v} for k, v in items], "target": t,
                     "answer_name": el, "answer_kind": kind}}


def gui_exists(ctx: Ctx, rng: random.Random, name: str) -> dict:
    """Is there a <name> <kind>? -> "Yes." / "No." (half each; a "no" names an absent label of the same kind)."""
    img, elements, fm, title, *_ = window(ctx, rng)
    kind = rng.choice(sorted({e["type"] for e in elements}))
    present = {e["name"] for e in elements if e["type"] == kind}
    absent = [n for n in VOCAB[kind] if n not in present]
    yes = not absent or rng.random() < 0.5
    asked = rng.choice(sorted(present)) if yes else rng.choice(absent)
    q = rng.choice(EXISTS).format(a="an" if asked[0] in "AEIOU" else "a", name=asked, kind=kind)
    return _rung(ctx, name, "gui_exists", q, "Yes." if yes else "No.",
                 {"elements": elements, "asked": asked, "kind": kind, "exists": yes}, img, fm)


def gui_list(ctx: Ctx, rng: random.Random, name: str) -> dict:
    """List the <kind>s -> "Save, Cancel, OK." (reading order: top to bottom, then left to right)."""
    img, elements, fm, title, *_ = window(ctx, rng)
    kind = rng.choice(sorted({e["type"] for e in elements}))
    names = reading_order(elements, kind)
    q = rng.choice(LIST).format(kind=kind)
    return _rung(ctx, name, "gui_list", q, ", ".join(names) + ".",
                 {"elements": elements, "kind": kind, "names": names}, img, fm)


def words(text: str) -> list[str]:
    """Lower-case words of an answer (punctuation dropped), for the rungs' exact-match scores."""
    return re.findall(r"[a-z0-9]+", text.lower())


def rung_score(meta: dict, text: str) -> float:
    """1.0 when a rung's answer says exactly what the record's meta holds (case and punctuation ignored)."""
    task = meta["task"]
    if task in ("gui_name_at", "gui_name_one", "gui_name_kind", "gui_copy"):
        return float(words(text) == words(f"the {meta['answer_name']} {meta['answer_kind']}"))
    if task in ("gui_exists", "gui_is_one"):
        return float(words(text)[:1] == ["yes" if meta["exists"] else "no"])
    if task == "gui_list":
        return float(words(text) == words(" ".join(meta["names"])))
    raise ValueError(f"not a GUI rung: {task!r}")


TASKS = {"computer_use": computer_use}
RUNGS = {"gui_name_at": gui_name_at, "gui_exists": gui_exists, "gui_list": gui_list, "gui_name_one": gui_name_one,
         "gui_name_kind": gui_name_kind, "gui_copy": gui_copy, "gui_is_one": gui_is_one}
TEXT_ONLY = ("gui_copy",)  # records with no picture (no media file, no frame in meta)
# `--tasks gui_rungs`: the three rungs of scripts/click_names.sh's R1 (the others are asked for by name)
RUNG_GROUP = ("gui_name_at", "gui_exists", "gui_list")
