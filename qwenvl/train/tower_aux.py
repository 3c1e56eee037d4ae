"""Teach the vision tower to tell shapes apart without moving what the language model already reads from it.

The embedded model's notes found the shape word missing from the visual tokens (a linear probe on the token under
a shape reads its colour, not its kind), and that moving the towers at the language model's rate through the
language loss collapses them. This stage trains the tower alone, with a direct signal: two linear heads on the
merger's output tokens name the colour and the shape of the object each token's cell lies in, while an anchor
term keeps every token near the starting tower's (relative squared error), so the language model's reading of
the tokens still holds. The heads are dropped; the model directory written is the starting one with the new tower.

    python -m qwenvl.train.tower_aux -m MODEL --data train.jsonl [--data more.jsonl] --heldout heldout.jsonl \
        --out DIR --time-budget-min 15

Records are `qwenvl.synth` grounding records (meta.objects with boxes in the original picture's pixels).
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
    """(image path, objects, meta) of every grounding record with objects and one image."""
    from ..synth.evaluate import load_records

    path = Path(path)
    out = []
    for rec in load_records(path):
        meta = rec.get("meta", {})
        objs = meta.get("objects") or []
        images = [p.get("image") for p in rec["messages"][0]["content"]
                  if isinstance(p, dict) and p.get("type") == "image"]
        if objs and len(images) == 1:
            out.append((str(path.parent / images[0]), objs, meta))
            if limit and len(out) >= limit:
                break
    if not out:
        raise ValueError(f"{path}: no grounding record with objects and one image (qwenvl.synth grounding records "
                         "are needed)")
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


class Batcher:
    """Pixel inputs and per-token targets for a list of scenes (one processor call per picture)."""

    def __init__(self, vlm, classes: dict[str, list[str]]):
        self.vlm, self.classes = vlm, classes
        v = vlm.config.vision
        self.patch, self.cell = v.patch_size, v.patch_size * v.spatial_merge_size

    def __call__(self, batch):
        pix, grids, idx, targets, offset = [], [], [], {p: [] for p in self.classes}, 0
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
            pix.append(b.pixel_values)
            grids.append(g)
            offset += rows * cols
        return (torch.cat(pix), torch.cat(grids), torch.tensor(idx, dtype=torch.long),
                {p: torch.tensor(t, dtype=torch.long) for p, t in targets.items()})


def anchor_error(tok: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Relative squared distance of the tokens from the starting tower's: mean ||t - r||^2 / mean ||r||^2."""
    return (tok - ref).pow(2).mean() / ref.pow(2).mean().clamp_min(1e-12)


def train(vlm, train_scenes, heldout_scenes, *, steps: int | None, time_budget_min: float | None, batch: int = 8,
          lr: float = 3e-4, warmup: int = 20, anchor: float = 4.0, seed: int = 0, eval_every: int = 100,
          head_steps: int = 100, head_lr: float = 3e-3,
          log_file: Path | None = None) -> list[dict]:
    """Train `vlm.model.visual` in place; returns the logged rows (step, losses, held-out accuracies)."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    objs = [o for _, os_, _ in train_scenes for o in os_]
    classes = {p: sorted({label_part(o, p) for o in objs}) for p in ("colour", "shape")}
    tower = vlm.model.visual
    ref_tower = copy.deepcopy(tower).eval().requires_grad_(False)
    dim = vlm.config.vision.out_hidden_size
    heads = torch.nn.ModuleDict({p: torch.nn.Linear(dim, len(c)) for p, c in classes.items()})
    params = [p for p in tower.parameters()] + list(heads.parameters())
    for p in tower.parameters():
        p.requires_grad_(True)
    # group 0: the tower (warm-up after the heads' own start, then cosine to 0.1x); group 1: the heads (constant).
    opt = torch.optim.AdamW([{"params": list(tower.parameters())}, {"params": list(heads.parameters()), "lr": head_lr}],
                            lr=lr, weight_decay=0.0)
    make = Batcher(vlm, classes)
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
        if s < head_steps:
            return 0.0
        s -= head_steps
        if s < warmup:
            return lr * (s + 1) / warmup
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress(s))))

    @torch.no_grad()
    def evaluate():
        tower.eval()
        hits, n, err = {p: 0 for p in classes}, 0, 0.0
        for i in range(0, len(heldout_scenes), batch):
            pix, grid, idx, tg = make(heldout_scenes[i:i + batch])
            tok, ref = tower(pix, grid), ref_tower(pix, grid)
            err += anchor_error(tok, ref).item() * len(heldout_scenes[i:i + batch])
            for p in classes:
                hits[p] += (heads[p](tok[idx]).argmax(-1) == tg[p]).sum().item()
            n += len(idx)
        tower.train()
        return {**{f"{p}_acc": round(hits[p] / max(n, 1), 4) for p in classes}, "tokens": n,
                "anchor_err": round(err / len(heldout_scenes), 5)}

    rows, step, t0 = [], 0, time.monotonic()
    tower.train()
    order = list(range(len(train_scenes)))
    from tqdm import tqdm
    bar = tqdm(total=steps, desc="tower aux", file=sys.stderr, dynamic_ncols=True)
    while step < total and (deadline is None or time.monotonic() < deadline):
        if step % max(1, len(order) // batch) == 0:
            rng.shuffle(order)
        j = (step * batch) % len(order)
        pix, grid, idx, tg = make([train_scenes[k] for k in order[j:j + batch]] or [train_scenes[order[0]]])
        opt.param_groups[0]["lr"] = lr_at(step)
        with torch.set_grad_enabled(step >= head_steps):
            tok = tower(pix, grid)
        with torch.no_grad():
            ref = ref_tower(pix, grid)
        a = anchor_error(tok, ref)
        ce = {p: F.cross_entropy(heads[p](tok[idx]), tg[p]) for p in classes} if len(idx) else \
            {p: tok.sum() * 0 for p in classes}
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
            if log_file:
                with open(log_file, "a") as f:
                    f.write(json.dumps(row) + "\n")
    bar.close()
    if not rows or rows[-1]["step"] != step:
        row = {"step": step, "elapsed_s": round(time.monotonic() - t0, 1), **evaluate()}
        rows.append(row)
        if log_file:
            with open(log_file, "a") as f:
                f.write(json.dumps(row) + "\n")
    tower.eval().requires_grad_(False)
    return rows


def main(argv=None) -> int:
    import qwenvl

    ap = argparse.ArgumentParser(prog="python -m qwenvl.train.tower_aux", description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", required=True, help="starting checkpoint directory")
    ap.add_argument("--data", action="append", required=True, help="qwenvl.synth grounding JSONL (repeatable)")
    ap.add_argument("--heldout", required=True, help="qwenvl.synth grounding JSONL to score the heads on")
    ap.add_argument("--n-heldout", type=int, default=200, help="held-out scenes (default 200)")
    ap.add_argument("--out", required=True, help="where to write the model directory with the new tower")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--time-budget-min", type=float, default=None)
    ap.add_argument("--batch", type=int, default=8, help="pictures per step (default 8)")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--anchor", type=float, default=4.0, help="weight of the relative anchor error (default 4)")
    ap.add_argument("--head-steps", type=int, default=100,
                    help="steps that fit the heads alone, tower fixed, before the tower moves (default 100)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=100)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if a.steps is None and a.time_budget_min is None:
        print("error: give --steps or --time-budget-min", file=sys.stderr)
        return 2
    try:
        train_scenes = [s for d in a.data for s in scenes(d)]
        held = scenes(a.heldout, a.n_heldout)
        vlm = qwenvl.load(a.model, dtype=torch.float32, pack=False)
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "tower_aux.jsonl").unlink(missing_ok=True)
        rows = train(vlm, train_scenes, held, steps=a.steps, time_budget_min=a.time_budget_min, batch=a.batch,
                     lr=a.lr, anchor=a.anchor, seed=a.seed, head_steps=a.head_steps, eval_every=a.eval_every, log_file=out / "tower_aux.jsonl")
        vlm.save(out)
        print(json.dumps(rows[-1]), flush=True)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
