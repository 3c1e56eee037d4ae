"""Is what an answer needs in the visual tokens? A linear probe on the merged token at each object's centre.

A model can place a shape and still name it at chance. That is either the vision side's fault (the token under the
shape does not carry its colour or kind) or the language model's (the token carries it, the answer does not read
it). This module tells the two apart on one-object grounding scenes (`qwenvl.synth` records): it takes the merger's
output token whose cell holds the object's centre, fits a linear softmax classifier per label part (the colour
words, the shape word) on a training file, and scores it on a held-out file, next to the majority class's share.

    python -m qwenvl.train.token_probe -m CHECKPOINT [-m ANOTHER ...] --train train.jsonl --heldout heldout.jsonl

The embedded model's notes (docs/embedded-runs/notes.md) give what it found: colour is readable (≈ 0.8), the shape
word is not (at the majority share), even though the language model names colours at chance.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

PARTS = ("colour", "shape")


def one_object_scenes(path: str | Path, n: int) -> list[tuple[str, dict, dict]]:
    """(image path, object, meta) of the first `n` records that show exactly one object; `path`'s media are
    relative to its folder."""
    from ..synth.evaluate import load_records

    path = Path(path)
    out = []
    for rec in load_records(path):
        if len(out) >= n:
            break
        meta = rec.get("meta", {})
        objs = meta.get("objects") or []
        image = next((p.get("image") for p in rec["messages"][0]["content"]
                      if isinstance(p, dict) and p.get("type") == "image"), None)
        if len(objs) == 1 and image is not None:
            out.append((str(path.parent / image), objs[0], meta))
    if not out:
        raise ValueError(f"{path}: no one-object grounding record with an image (qwenvl.synth grounding records "
                         "with meta.objects are needed)")
    return out


def label_part(obj: dict, part: str) -> str:
    """The object's `colour` / `shape` (qwenvl.synth's meta); else from its label: the shape word is the last
    word, the colour what comes before it ('' when there is none)."""
    if obj.get(part):
        return obj[part]
    words = obj["label"].split()
    return words[-1] if part == "shape" else " ".join(words[:-1])


def centre_token(box, meta: dict, cell: int) -> int:
    """Index, in the merger's raster order, of the merged token whose `cell`-px square holds the box's centre; the
    box is in the original picture's pixels and is mapped to the resized frame the model saw."""
    (oh, ow), (rh, rw) = meta.get("original", meta.get("resized")), meta["resized"]
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2 * rw / ow, (y0 + y1) / 2 * rh / oh
    cols = rw // cell
    return min(int(cy // cell), rh // cell - 1) * cols + min(int(cx // cell), cols - 1)


@torch.no_grad()
def centre_features(vlm, scenes) -> torch.Tensor:
    """(n, C) float32: each scene's merged visual token at its object's centre."""
    vcfg = vlm.config.vision
    cell = vcfg.patch_size * vcfg.spatial_merge_size
    feats = []
    for image, obj, meta in scenes:
        b = vlm.processor([{"role": "user", "content": [{"type": "image", "image": image,
                                                          **{k: meta[k] for k in ("min_pixels", "max_pixels")
                                                             if k in meta}},
                                                         {"type": "text", "text": "."}]}])
        grid = b.image_grid_thw
        tokens = vlm.model.visual(b.pixel_values.to(vlm.model.device, vlm.model.dtype), grid.to(vlm.model.device))
        rh, rw = int(grid[0, 1]) * vcfg.patch_size, int(grid[0, 2]) * vcfg.patch_size
        feats.append(tokens[centre_token(obj["box"], {**meta, "resized": [rh, rw]}, cell)].float().cpu())
    return torch.stack(feats)


def linear_probe(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
                 classes: int, steps: int = 300, l2: float = 1e-3, seed: int = 0) -> float:
    """Accuracy on the test set of a softmax classifier fitted (Adam, full batch) on standardised features."""
    torch.manual_seed(seed)
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    xtr, xte = (x_train - mu) / sd, (x_test - mu) / sd
    w = torch.zeros(xtr.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=1e-2)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(xtr @ w + b, y_train) + l2 * w.pow(2).sum()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return ((xte @ w + b).argmax(1) == y_test).float().mean().item()


def probe_parts(x_train, train_objects: list[dict], x_test, test_objects: list[dict]) -> dict:
    """Per label part: probe accuracy, the majority class's share of the held-out set, and the class count.
    Held-out objects whose part never occurs in training are left out (counted in `unseen`)."""
    out = {}
    for part in PARTS:
        ytr_names = [label_part(o, part) for o in train_objects]
        yte_names = [label_part(o, part) for o in test_objects]
        names = sorted(set(ytr_names))
        idx = {v: i for i, v in enumerate(names)}
        keep = [i for i, v in enumerate(yte_names) if v in idx]
        if len(names) < 2 or not keep:
            out[part] = {"accuracy": None, "majority": None, "classes": len(names), "unseen": len(yte_names) - len(keep)}
            continue
        ytr = torch.tensor([idx[v] for v in ytr_names])
        yte = torch.tensor([idx[yte_names[i]] for i in keep])
        acc = linear_probe(x_train, ytr, x_test[keep], yte, len(names))
        majority = max((yte == k).sum().item() for k in range(len(names))) / len(keep)
        out[part] = {"accuracy": round(acc, 4), "majority": round(majority, 4), "classes": len(names),
                     "unseen": len(yte_names) - len(keep)}
    return out


def main(argv=None) -> int:
    import qwenvl

    ap = argparse.ArgumentParser(prog="python -m qwenvl.train.token_probe", description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", action="append", required=True, help="checkpoint directory (repeatable)")
    ap.add_argument("--train", required=True, help="qwenvl.synth grounding JSONL to fit the probe on")
    ap.add_argument("--heldout", required=True, help="qwenvl.synth grounding JSONL to score it on")
    ap.add_argument("--n", type=int, default=1200, help="one-object scenes to fit on (default 1200)")
    ap.add_argument("--n-heldout", type=int, default=160, help="one-object scenes to score on (default 160)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        train, test = one_object_scenes(a.train, a.n), one_object_scenes(a.heldout, a.n_heldout)
        rows = []
        for m in a.model:
            vlm = qwenvl.load(m, dtype=torch.float32, pack=False)
            res = probe_parts(centre_features(vlm, train), [o for _, o, _ in train],
                              centre_features(vlm, test), [o for _, o, _ in test])
            rows.append({"model": m, "train": len(train), "heldout": len(test), **res})
            print(json.dumps(rows[-1]), flush=True)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
