"""Teach the vision tower to tell shapes (and glyphs) apart without moving what the language model already reads
from it.

The embedded model's notes found the shape word missing from the visual tokens (a linear probe on the token under
a shape reads its colour, not its kind), and that moving the towers at the language model's rate through the
language loss collapses them. This stage trains the tower alone, with a direct signal: two linear heads on the
merger's output tokens name the colour and the shape of the object each token's cell lies in, while an anchor
term keeps every token near the starting tower's (relative squared error), so the language model's reading of
the tokens still holds. Text scenes (read_text / spot_text records) add a third head: which characters have their
centre in each token's cell (multi-hot, binary cross-entropy), the glyph signal OCR needs in the tokens; with
`--glyph-slots K` it names the cell's first K characters in reading order instead (one softmax per slot, "none"
when the cell holds fewer), so the order inside a cell has to be in the token too, and `--min-text-px` keeps only
text scenes with large glyphs, for a first round. The heads are dropped; the model directory written is the
starting one with the new tower. `--element-names` adds a head that names the GUI element (the word a click
instruction uses) in the cells of its box or, with `--element-cells label`, of its label's ink; `--anchor-scenes
grounding` holds only the grounding scenes' tokens, so text and GUI tokens may move while the shapes' stay;
`--element-head words` reads the names along the language model's own input embeddings of them (WordHead).

    python -m qwenvl.train.tower_aux -m MODEL --data train.jsonl [--data more.jsonl] --heldout heldout.jsonl \
        --out DIR --time-budget-min 15

Records are `qwenvl.synth` grounding records (meta.objects with boxes in the original picture's pixels) and text
records (meta.lines: each line's text and box, with meta.font and meta.font_size).
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .token_probe import label_part

log = logging.getLogger(__name__)


def scenes(path: str | Path, limit: int | None = None) -> list[tuple[str, list[dict], dict]]:
    """(image path, objects, meta) of every one-image record with grounding objects (meta.objects), text lines
    (meta.lines, read_text / spot_text) or GUI elements (computer_use; objects then empty)."""
    from ..synth.evaluate import load_records

    path = Path(path)
    out = []
    for rec in load_records(path):
        meta = rec.get("meta", {})
        objs = meta.get("objects") or []
        images = [p.get("image") for m in rec["messages"] if isinstance(m.get("content"), list)
                  for p in m["content"] if isinstance(p, dict) and p.get("type") == "image"]
        if (objs or text_lines(meta) or meta.get("task") == "computer_use") and len(images) == 1:
            out.append((str(path.parent / images[0]), objs, meta))
            if limit and len(out) >= limit:
                break
    if not out:
        raise ValueError(f"{path}: no grounding record with objects, no text record with lines and no GUI screenshot, "
                         "one image each (qwenvl.synth grounding, read_text / spot_text or computer_use records are "
                         "needed)")
    return out


def text_lines(meta: dict) -> list[dict]:
    """The text lines of a read_text / spot_text record, or a computer_use screenshot's labels (one font per
    picture, so glyph_cells can place them); [] for any other record."""
    if meta.get("task") == "computer_use":
        return [{"text": e["name"], "box": e["label_box"]} for e in meta.get("elements", []) if "label_box" in e]
    return meta.get("lines") or [] if meta.get("task") in ("read_text", "spot_text") else []


def text_px(meta: dict) -> float:
    """The font's pixel height after the processor's resize (inf for a scene without text lines)."""
    if not text_lines(meta):
        return math.inf
    (oh, _), (rh, _) = meta.get("original", meta["resized"]), meta["resized"]
    return float(meta["font_size"]) * rh / oh


def glyph_cells(lines: list[dict], meta: dict, grid_hw: tuple[int, int], cell: int) -> dict[int, list[str]]:
    """{merged-token index: the characters whose centre lies in its cell, in reading order} for rendered text lines
    (qwenvl.synth text meta: each line's text and box in the original picture's pixels, the font family and size).
    A character's centre is its advance-width midpoint along the line, on the line box's middle row; spaces are left
    out."""
    from ..synth import font

    (oh, ow), (rows, cols) = meta.get("original", meta["resized"]), grid_hw
    sx, sy = cols * cell / ow, rows * cell / oh
    fnt = font(int(meta["font_size"]), meta.get("font", "default"))
    out: dict[int, list[str]] = {}
    for ln in lines:
        text, (x0, y0, _, y1) = ln["text"], ln["box"]
        left = x0 - fnt.getbbox(text)[0]  # the pen's origin: the box starts at the first glyph's ink
        r = min(int((y0 + y1) / 2 * sy // cell), rows - 1)
        for i, ch in enumerate(text):
            if ch.isspace():
                continue
            xc = left + (fnt.getlength(text[:i]) + fnt.getlength(text[:i + 1])) / 2
            c = min(max(int(xc * sx // cell), 0), cols - 1)
            out.setdefault(r * cols + c, []).append(ch)
    return out


def cell_labels(objects: list[dict], meta: dict, grid_hw: tuple[int, int], cell: int) -> dict[int, int]:
    """{merged-token index: object index} for the cells (raster order over the resized frame, `cell` px each)
    whose centre lies inside exactly one object's box, plus each object's centre cell when no other box claims
    it. Boxes are in the original picture's pixels."""
    (oh, ow) = meta.get("original", meta["resized"])
    rows, cols = grid_hw
    rh, rw = rows * cell, cols * cell
    owner: dict[int, list[int]] = {}
    for i, o in enumerate(objects):
        x0, y0, x1, y1 = o["box"]
        x0, x1, y0, y1 = x0 * rw / ow, x1 * rw / ow, y0 * rh / oh, y1 * rh / oh
        cells = {min(int((y0 + y1) / 2 // cell), rows - 1) * cols + min(int((x0 + x1) / 2 // cell), cols - 1)}
        for r in range(rows):
            for c in range(cols):
                if x0 <= (c + 0.5) * cell <= x1 and y0 <= (r + 0.5) * cell <= y1:
                    cells.add(r * cols + c)
        for k in cells:
            owner.setdefault(k, []).append(i)
    return {k: v[0] for k, v in owner.items() if len(v) == 1}


def element_cells(meta: dict, grid_hw: tuple[int, int], cell: int, where: str = "box") -> dict[int, str]:
    """{merged-token index: element name} for a computer_use screenshot. `where="box"`: the cells of each element's
    box (where a click lands) and of its label when the label lies outside the box (a field's or a checkbox's
    caption), so the token a click needs carries the name the instruction uses; `where="label"`: only the cells of
    the label's ink (the name is read where it is written, not gathered into an empty field). Cells two elements
    claim are left out."""
    if meta.get("task") != "computer_use":
        return {}
    if where not in ("box", "label"):
        raise ValueError(f"element cells: where={where!r}; use 'box' or 'label'")
    parts, names = [], []
    for e in meta.get("elements", []):
        lb, b = e.get("label_box"), e["box"]
        if where == "label":
            if lb:
                parts.append({"box": lb})
                names.append(e["name"])
            continue
        parts.append({"box": b})
        names.append(e["name"])
        if lb and not (lb[0] >= b[0] and lb[1] >= b[1] and lb[2] <= b[2] and lb[3] <= b[3]):
            parts.append({"box": lb})
            names.append(e["name"])
    owner: dict[int, set[str]] = {}
    for part, name in zip(parts, names):
        for k in cell_labels([part], meta, grid_hw, cell):
            owner.setdefault(k, set()).add(name)
    return {k: next(iter(v)) for k, v in owner.items() if len(v) == 1}


class Batcher:
    """Pixel inputs and per-token targets for a list of scenes (one processor call per picture): class indices
    for the object parts (`classes`) and, for text scenes, a multi-hot row over `glyphs` per cell with text."""

    def __init__(self, vlm, classes: dict[str, list[str]], glyphs: list[str] = (), slots: int = 0,
                 elements: list[str] = (), element_where: str = "box"):
        self.vlm, self.classes, self.glyphs = vlm, classes, {ch: i for i, ch in enumerate(glyphs)}
        self.element_where = element_where  # "box" or "label": which cells the element head names
        self.elements = {n: i for i, n in enumerate(elements)}  # GUI element names (empty: no element head)
        self.slots = slots  # > 0: per cell, the first `slots` characters in reading order (index len(glyphs): none)
        v = vlm.config.vision
        self.patch, self.cell = v.patch_size, v.patch_size * v.spatial_merge_size

    def __call__(self, batch):
        pix, grids, idx, targets, offset = [], [], [], {p: [] for p in self.classes}, 0
        gidx, grows, eidx, etgt, shape_scene = [], [], [], [], []
        for image, objs, meta in batch:
            part = {"type": "image", "image": image, **{k: meta[k] for k in ("min_pixels", "max_pixels") if k in meta}}
            b = self.vlm.processor([{"role": "user", "content": [part, {"type": "text", "text": "."}]}])
            g = b.image_grid_thw
            rows, cols = int(g[0, 1]) * self.patch // self.cell, int(g[0, 2]) * self.patch // self.cell
            for k, i in sorted(cell_labels(objs, meta, (rows, cols), self.cell).items()):
                names = [label_part(objs[i], p) for p in self.classes]
                if all(n in self.classes[p] for n, p in zip(names, self.classes)):
                    idx.append(offset + k)
                    for n, p in zip(names, self.classes):
                        targets[p].append(self.classes[p].index(n))
            if self.glyphs and text_lines(meta):
                for k, chars in sorted(glyph_cells(text_lines(meta), meta, (rows, cols), self.cell).items()):
                    if self.slots:
                        known = [self.glyphs[ch] for ch in chars if ch in self.glyphs][:self.slots]
                        row = torch.tensor(known + [len(self.glyphs)] * (self.slots - len(known)))
                    else:
                        row = torch.zeros(len(self.glyphs))
                        row[[self.glyphs[ch] for ch in chars if ch in self.glyphs]] = 1.0
                    gidx.append(offset + k)
                    grows.append(row)
            if self.elements:
                for k, name in sorted(element_cells(meta, (rows, cols), self.cell, self.element_where).items()):
                    if name in self.elements:
                        eidx.append(offset + k)
                        etgt.append(self.elements[name])
            pix.append(b.pixel_values)
            grids.append(g)
            shape_scene += [bool(objs) and not text_lines(meta) and meta.get("task") != "computer_use"] * (rows * cols)
            offset += rows * cols
        empty = torch.zeros(0, self.slots, dtype=torch.long) if self.slots else torch.zeros(0, len(self.glyphs))
        glyph = (torch.tensor(gidx, dtype=torch.long), torch.stack(grows) if grows else empty)
        targets = {p: torch.tensor(t, dtype=torch.long) for p, t in targets.items()}
        if self.elements:  # the element head's cells and names ride along as one more part
            targets["element"] = (torch.tensor(eidx, dtype=torch.long), torch.tensor(etgt, dtype=torch.long))
        targets["shape_scene"] = torch.tensor(shape_scene, dtype=torch.bool)  # tokens of grounding scenes
        return torch.cat(pix), torch.cat(grids), torch.tensor(idx, dtype=torch.long), targets, glyph


def anchor_error(tok: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Relative squared distance of the tokens from the starting tower's: mean ||t - r||^2 / mean ||r||^2, over the
    tokens `mask` keeps (all when None; 0 when it keeps none)."""
    if mask is not None:
        if not bool(mask.any()):
            return tok.sum() * 0
        tok, ref = tok[mask], ref[mask]
    return (tok - ref).pow(2).mean() / ref.pow(2).mean().clamp_min(1e-12)


class WordHead(torch.nn.Module):
    """Element logits read along the language model's own word directions: scale * (token . E[name]) + bias, where
    E[name] is the mean input embedding of " name"'s tokens, frozen. A tower trained through it writes each label's
    name in the direction the language model already reads as that word (`--element-head words`)."""

    def __init__(self, vlm, names: list[str]):
        super().__init__()
        emb = vlm.model.model.embed_tokens.weight.detach().float()
        ids = [vlm.tokenizer.encode(" " + n) for n in names]
        if any(not i for i in ids):
            raise ValueError("--element-head words: the tokenizer gives no token for an element name")
        self.register_buffer("words", torch.stack([emb[i].mean(0) for i in ids]))  # (names, D)
        self.scale = torch.nn.Parameter(torch.tensor(1.0))
        self.bias = torch.nn.Parameter(torch.zeros(len(names)))

    def forward(self, t):  # (cells, D) -> (cells, names)
        return self.scale * (t @ self.words.T) + self.bias


def log_row(log_file: Path | None, row: dict) -> None:
    """Append one logged row to a JSONL log (nothing when there is no log file)."""
    if log_file:
        with open(log_file, "a") as f:
            f.write(json.dumps(row) + "\n")


def head_then_cosine(s: int, head_steps: int, warmup: int, lr: float, done: float) -> float:
    """The learning rate at step `s` of an auxiliary stage: 0 while the heads fit alone, then a linear warm-up and a
    cosine to 0.1x over `done` (the fraction of the run spent, 0..1)."""
    if s < head_steps:
        return 0.0
    s -= head_steps
    if s < warmup:
        return lr * (s + 1) / warmup
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, done))))


def finish_cli(ap: argparse.ArgumentParser, argv) -> argparse.Namespace | None:
    """Add --seed and --eval-every, parse, set up logging; None (after a one-line error) without a step or time
    budget."""
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=100)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if a.steps is None and a.time_budget_min is None:
        print("error: give --steps or --time-budget-min", file=sys.stderr)
        return None
    return a


def train(vlm, train_scenes, heldout_scenes, *, steps: int | None, time_budget_min: float | None, batch: int = 8,
          lr: float = 3e-4, warmup: int = 20, anchor: float = 4.0, seed: int = 0, eval_every: int = 100,
          head_steps: int = 100, head_lr: float = 3e-3, glyph_slots: int = 0, element_names: bool = False,
          element_where: str = "box", element_head: str = "free", anchor_scenes: str = "all",
          log_file: Path | None = None) -> list[dict]:
    """Train `vlm.model.visual` in place; returns the logged rows (step, losses, held-out accuracies)."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    objs = [o for _, os_, _ in train_scenes for o in os_]
    classes = {p: sorted({label_part(o, p) for o in objs}) for p in ("colour", "shape")} if objs else {}
    glyphs = sorted({ch for _, _, m in train_scenes for ln in text_lines(m) for ch in ln["text"] if not ch.isspace()})
    elements = sorted({e["name"] for _, _, m in train_scenes if m.get("task") == "computer_use"
                       for e in m.get("elements", [])}) if element_names else []
    if element_names and not elements:
        raise ValueError("the element head needs computer_use screenshots among the training records (--data)")
    if anchor_scenes == "grounding" and not objs:
        raise ValueError("--anchor-scenes grounding holds the grounding scenes' tokens, and the training records have "
                         "none: add qwenvl.synth grounding records (--data) or use --anchor-scenes all")
    tower = vlm.model.visual
    ref_tower = copy.deepcopy(tower).eval().requires_grad_(False)
    dim = vlm.config.vision.out_hidden_size
    heads = torch.nn.ModuleDict({p: torch.nn.Linear(dim, len(c)) for p, c in classes.items()})
    if glyphs:  # multi-hot over the glyphs, or `glyph_slots` softmaxes over the glyphs and "none"
        heads["glyph"] = torch.nn.Linear(dim, glyph_slots * (len(glyphs) + 1) if glyph_slots else len(glyphs))
    if elements:  # which GUI element (by name) a token's cell belongs to
        if element_head not in ("free", "words"):
            raise ValueError(f"element head: {element_head!r}; use 'free' or 'words'")
        heads["element"] = WordHead(vlm, elements) if element_head == "words" else torch.nn.Linear(dim, len(elements))

    def glyph_logits(t):  # (cells, G) multi-hot logits, or (cells, slots, G + 1)
        out = heads["glyph"](t)
        return out.view(len(t), glyph_slots, len(glyphs) + 1) if glyph_slots else out
    params = [p for p in tower.parameters()] + list(heads.parameters())
    for p in tower.parameters():
        p.requires_grad_(True)
    # group 0: the tower (warm-up after the heads' own start, then cosine to 0.1x); group 1: the heads (constant).
    opt = torch.optim.AdamW([{"params": list(tower.parameters())}, {"params": list(heads.parameters()), "lr": head_lr}],
                            lr=lr, weight_decay=0.0)
    make = Batcher(vlm, classes, glyphs, glyph_slots, elements, element_where)
    total = steps or 10**9
    deadline = time.monotonic() + time_budget_min * 60 if time_budget_min else None
    budget_s = time_budget_min * 60 if time_budget_min else None

    def progress(s):
        """Fraction of the run done: by steps, by time, whichever is further."""
        done = s / steps if steps else 0.0
        if budget_s:
            done = max(done, (time.monotonic() - t0) / budget_s)
        return min(1.0, done)

    def lr_at(s):
        return head_then_cosine(s, head_steps, warmup, lr, progress(max(s - head_steps, 0)))

    @torch.no_grad()
    def evaluate():
        tower.eval()
        hits, n, err = {p: 0 for p in classes}, 0, 0.0
        tp = fp = fn = exact = cells = e_hit = e_n = g_n = 0
        g_err = 0.0
        for i in range(0, len(heldout_scenes), batch):
            pix, grid, idx, tg, (gidx, grow) = make(heldout_scenes[i:i + batch])
            tok, ref = tower(pix, grid), ref_tower(pix, grid)
            err += anchor_error(tok, ref).item() * len(heldout_scenes[i:i + batch])
            sc = tg["shape_scene"]
            if bool(sc.any()):  # the grounding scenes' tokens alone, weighted by their count
                g_err += anchor_error(tok, ref, sc).item() * int(sc.sum())
                g_n += int(sc.sum())
            for p in classes:
                hits[p] += (heads[p](tok[idx]).argmax(-1) == tg[p]).sum().item()
            n += len(idx)
            if elements:
                eidx, etgt = tg["element"]
                e_hit += (heads["element"](tok[eidx]).argmax(-1) == etgt).sum().item()
                e_n += len(eidx)
            if glyphs and len(gidx):
                if glyph_slots:  # a slot's character is right, wrong, or missed
                    pred, none = glyph_logits(tok[gidx]).argmax(-1), len(glyphs)
                    hit, named, due = pred == grow, pred != none, grow != none
                    tp += (hit & due).sum().item()
                    fp += (~hit & named).sum().item()
                    fn += (~hit & due).sum().item()
                    exact += hit.all(-1).sum().item()
                else:
                    pred, true = glyph_logits(tok[gidx]) > 0, grow > 0.5
                    tp += (pred & true).sum().item()
                    fp += (pred & ~true).sum().item()
                    fn += (~pred & true).sum().item()
                    exact += (pred == true).all(-1).sum().item()
                cells += len(gidx)
        tower.train()
        row = {**{f"{p}_acc": round(hits[p] / max(n, 1), 4) for p in classes}, "tokens": n}
        if glyphs:  # micro F1 of the characters named per text cell, and the cells whose set is exactly right
            row.update(glyph_f1=round(2 * tp / max(1, 2 * tp + fp + fn), 4),
                       glyph_exact=round(exact / max(1, cells), 4), text_cells=cells)
        if elements:
            row.update(element_acc=round(e_hit / max(1, e_n), 4), element_cells=e_n)
        if g_n:
            row["anchor_err_grounding"] = round(g_err / g_n, 5)
        return {**row, "anchor_err": round(err / len(heldout_scenes), 5)}

    rows, step, t0 = [], 0, time.monotonic()
    tower.train()
    order = list(range(len(train_scenes)))
    from tqdm import tqdm
    bar = tqdm(total=steps, desc="tower aux", file=sys.stderr, dynamic_ncols=True)
    while step < total and (deadline is None or time.monotonic() < deadline):
        if step % max(1, len(order) // batch) == 0:
            rng.shuffle(order)
        j = (step * batch) % len(order)
        pix, grid, idx, tg, (gidx, grow) = make([train_scenes[k] for k in order[j:j + batch]]
                                                or [train_scenes[order[0]]])
        opt.param_groups[0]["lr"] = lr_at(step)
        with torch.set_grad_enabled(step >= head_steps):
            tok = tower(pix, grid)
        with torch.no_grad():
            ref = ref_tower(pix, grid)
        a = anchor_error(tok, ref, tg["shape_scene"] if anchor_scenes == "grounding" else None)
        ce = {p: F.cross_entropy(heads[p](tok[idx]), tg[p]) if len(idx) else tok.sum() * 0 for p in classes}
        if elements:
            eidx, etgt = tg["element"]
            ce["element"] = F.cross_entropy(heads["element"](tok[eidx]), etgt) if len(eidx) else tok.sum() * 0
        if glyphs and not len(gidx):
            ce["glyph"] = tok.sum() * 0
        elif glyph_slots:  # summed over the slots, averaged over the cells
            ce["glyph"] = F.cross_entropy(glyph_logits(tok[gidx]).flatten(0, 1), grow.flatten(),
                                          reduction="sum") / len(gidx)
        elif glyphs:  # summed over the characters, averaged over the cells: one cell weighs about one CE term
            ce["glyph"] = F.binary_cross_entropy_with_logits(glyph_logits(tok[gidx]), grow,
                                                             reduction="sum") / len(gidx)
        loss = sum(ce.values()) + anchor * a
        opt.zero_grad(set_to_none=True)
        if loss.requires_grad:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", anchor=f"{a.item():.4f}")
        if step % eval_every == 0 or step == total:
            row = {"step": step, "elapsed_s": round(time.monotonic() - t0, 1), "lr": lr_at(step),
                   **{f"train_{p}_ce": round(v.item(), 4) for p, v in ce.items()}, "train_anchor": round(a.item(), 5),
                   **evaluate()}
            rows.append(row)
            log.info("%s", row)
            log_row(log_file, row)
    bar.close()
    if not rows or rows[-1]["step"] != step:
        row = {"step": step, "elapsed_s": round(time.monotonic() - t0, 1), **evaluate()}
        rows.append(row)
        log_row(log_file, row)
    tower.eval().requires_grad_(False)
    return rows


def main(argv=None) -> int:
    import qwenvl

    ap = argparse.ArgumentParser(prog="python -m qwenvl.train.tower_aux", description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", required=True, help="starting checkpoint directory")
    ap.add_argument("--data", action="append", required=True,
                    help="qwenvl.synth grounding or read_text / spot_text JSONL (repeatable)")
    ap.add_argument("--heldout", action="append", required=True,
                    help="qwenvl.synth grounding or text JSONL to score the heads on (repeatable)")
    ap.add_argument("--n-heldout", type=int, default=200, help="held-out scenes per --heldout file (default 200)")
    ap.add_argument("--out", required=True, help="where to write the model directory with the new tower")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--time-budget-min", type=float, default=None)
    ap.add_argument("--batch", type=int, default=8, help="pictures per step (default 8)")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--anchor", type=float, default=4.0, help="weight of the relative anchor error (default 4)")
    ap.add_argument("--head-steps", type=int, default=100,
                    help="steps that fit the heads alone, tower fixed, before the tower moves (default 100)")
    ap.add_argument("--glyph-slots", type=int, default=0,
                    help="name each text cell's first K characters in reading order, one softmax per slot, instead "
                         "of the multi-hot set (keeps the order inside a cell; default 0: the set)")
    ap.add_argument("--min-text-px", type=float, default=0.0,
                    help="train on text scenes whose font is at least this many pixels high after the resize "
                         "(large glyphs first; grounding scenes are kept; default 0: all)")
    ap.add_argument("--element-names", action="store_true",
                    help="a head that names the GUI element each token's cell belongs to (computer_use screenshots: "
                         "the element's box and its caption), the label a click instruction uses")
    ap.add_argument("--element-cells", choices=("box", "label"), default="box",
                    help="which cells the element head names: 'box' (the element's box and an outside caption; the "
                         "default) or 'label' (only the label's ink, where the name can be read)")
    ap.add_argument("--element-head", choices=("free", "words"), default="free",
                    help="'free': a linear element head (the default); 'words': the logits are the tokens' dot "
                         "products with the language model's input embeddings of the names, frozen, so the tower "
                         "writes each name where the language model reads that word")
    ap.add_argument("--anchor-scenes", choices=("all", "grounding"), default="all",
                    help="whose tokens the anchor holds: every scene's (the default) or only the grounding scenes' "
                         "(text and GUI tokens free to move, the shapes' tokens the language model reads held)")
    a = finish_cli(ap, argv)
    if a is None:
        return 2
    try:
        train_scenes = [s for d in a.data for s in scenes(d) if text_px(s[2]) >= a.min_text_px]
        if not train_scenes:
            raise ValueError(f"no training scene left with text at least {a.min_text_px} px high (--min-text-px); "
                             "lower it or add records with larger fonts")
        held = [s for h in a.heldout for s in scenes(h, a.n_heldout)]
        vlm = qwenvl.load(a.model, dtype=torch.float32, pack=False)
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "tower_aux.jsonl").unlink(missing_ok=True)
        rows = train(vlm, train_scenes, held, steps=a.steps, time_budget_min=a.time_budget_min, batch=a.batch,
                     lr=a.lr, anchor=a.anchor, seed=a.seed, head_steps=a.head_steps, eval_every=a.eval_every,
                     glyph_slots=a.glyph_slots, element_names=a.element_names, element_where=a.element_cells,
                     element_head=a.element_head, anchor_scenes=a.anchor_scenes,
                     log_file=out / "tower_aux.jsonl")
        vlm.save(out)
        print(json.dumps(rows[-1]), flush=True)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
