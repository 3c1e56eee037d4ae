"""Does a model use its images? Five measurements on held-out samples, for runs that train the vision side.

A vision-language model trained from scratch (or a vision tower fine-tuned with a high learning rate) can fall into
a state where the language model ignores the pictures: its loss is the same with the real images and with blank
ones, and the features the merger hands to the language model are one large vector shared by every visual token
(the language model uses them as an "attention sink"). The loss still falls (answer formats are learned), so the
curve alone does not show it. This module measures it:

- **media reliance**: mean answer-token loss with the real pixels and with every pixel set to the normaliser's
  mean (a flat grey picture); the gap is what the pictures are worth, in nats per token;
- **visual-token spread**: at the merger output (what the language model reads), the standard deviation across
  the tokens of one picture relative to their root-mean-square size (1 = fully varied, 0 = one shared vector);
- **gradient norms** of one backward pass, per tower (vision blocks, merger, language model);
- **answer tokens by role**: the same two losses per kind of answer token: a number's first digit, its other
  digits, the words of a `"label"` string, and everything else (the format). A model can learn the format (its
  loss near 0) while every digit and label word stays at chance and ignores the picture; this shows which;
- **position reach** (a note, not a failure): how far the language model's MRoPE turns across the largest picture's
  rows (h) and columns (w). Under about a radian, attention cannot tell the rows or columns apart by position
  (theta 1e6 with sections [16, 8, 8] at head_dim 64 gives 5e-4 rad across 16 columns; with theta 50 and
  [4, 14, 14] the embedded model's `cell` probe learned rows but not columns, which turn 0.33 rad across its 4-token
  picture). A small model trained from scratch needs this reach to learn boxes and points. Large official models
  reach below that too and still ground, having learned positions from far more data. The note also says when
  even the slowest frequency turns fast (theta 5: 0.21 rad per token): then a lookup by content at a varying
  distance is slower to learn (at theta 5 the embedded shape learned a short text copy in ≈ 90 steps against ≈ 50
  at theta 1000), and when the temporal component aliases over the longest clip (`mrope_alias`: positions several
  apart with nearly the same temporal code, as the embedded model's theta 5 with a 4-frequency t section gives).

    python -m qwenvl.train.diagnose -m CHECKPOINT --data heldout.jsonl [--n 24]
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections import defaultdict

from dataclasses import replace

import torch

from .packing import PackedBatch, collate, hidden_states, packed_loss, token_losses

log = logging.getLogger(__name__)

IGNORED_GAP = 0.01  # nats per answer token: below this the pictures do not matter to the model
COLLAPSED_SPREAD = 0.05  # visual tokens that vary by less than 5 % of their size carry (almost) no picture
FAST_ONLY = 0.05  # rad per token: a slowest MRoPE frequency above this turns > 1 rad across a 20-token question


def blank_media(batch: PackedBatch) -> PackedBatch:
    """The same packed batch with every picture / video frame flat grey (normalised pixels all zero)."""
    z = lambda t: None if t is None else torch.zeros_like(t)  # noqa: E731
    return replace(batch, pixel_values=z(batch.pixel_values), pixel_values_videos=z(batch.pixel_values_videos))


def _with_media(samples) -> list:
    return [s for s in samples if s.pixel_values is not None or s.pixel_values_videos is not None]


def media_reliance(roles: dict) -> dict:
    """Answer-token loss with the real media and with flat grey media, from answer_token_roles' per-role means."""
    n = sum(v["n"] for v in roles.values())
    real = sum(v["n"] * v["loss"] for v in roles.values()) / n
    blank = sum(v["n"] * v["loss_blank_media"] for v in roles.values()) / n
    return {"loss": real, "loss_blank_media": blank, "gap": blank - real, "loss_tokens": n}


ROLES = ("digit_first", "digit_rest", "label", "other")
_LABEL = re.compile(r'"label"\s*:\s*"([^"]*)')


def token_roles(pieces: list[str]) -> list[str]:
    """The role (one of ROLES) of each answer token, given each token's decoded text in order: a number's first
    digit, its later digits, a token inside a `"label": "..."` value, or other (format, words outside labels)."""
    text = "".join(pieces)
    spans = [m.span(1) for m in _LABEL.finditer(text)]
    roles, at, prev_digit = [], 0, False
    for p in pieces:
        a, b = at, at + len(p)
        at = b
        digit = p.strip().isdigit()
        if digit:
            roles.append("digit_rest" if prev_digit and not p[:1].isspace() else "digit_first")
        elif p.strip() and any(a < e and s < b for s, e in spans):
            roles.append("label")
        else:
            roles.append("other")
        prev_digit = digit
    return roles


def answer_token_roles(vlm, samples) -> dict:
    """{role: {n, loss, loss_blank_media}}: mean answer-token loss per role (see token_roles), real vs blank media."""
    model, tok = vlm.model, vlm.processor.tokenizer
    acc = {r: [0, 0.0, 0.0] for r in ROLES}
    with torch.no_grad():
        for s in samples:
            b = collate([s])
            real, pos = token_losses(model, hidden_states(model, b), b.labels)
            blank, _ = token_losses(model, hidden_states(model, blank_media(b)), b.labels)
            ids = b.labels.view(-1).index_select(0, pos).tolist()
            for r, x, y in zip(token_roles([tok.decode([i]) for i in ids]), real.tolist(), blank.tolist()):
                a = acc[r]
                a[0], a[1], a[2] = a[0] + 1, a[1] + x, a[2] + y
    return {r: {"n": n, "loss": x / n, "loss_blank_media": y / n} for r, (n, x, y) in acc.items() if n}


def visual_token_spread(model, samples) -> dict:
    """Mean over pictures of (std across its visual tokens) / (rms of its visual tokens) at the merger output."""
    ratios, rms = [], []
    merge = model.config.vision.spatial_merge_size ** 2
    with torch.no_grad():
        for s in samples:
            for pix, grid in ((s.pixel_values, s.image_grid_thw), (s.pixel_values_videos, s.video_grid_thw)):
                if pix is None:
                    continue
                feats = model.visual(pix.to(model.dtype), grid).float()  # (tokens of all items, C)
                start = 0
                for g in grid:
                    n = int(g.prod()) // merge
                    f = feats[start:start + n]
                    start += n
                    if n < 2:
                        continue
                    r = f.pow(2).mean().sqrt()
                    rms.append(float(r))
                    ratios.append(float(f.std(0).pow(2).mean().sqrt() / r.clamp_min(1e-12)))
    if not ratios:
        raise ValueError("no picture with at least 2 visual tokens among the samples")
    return {"spread": sum(ratios) / len(ratios), "rms": sum(rms) / len(rms), "pictures": len(ratios)}


def grad_norms(model, samples) -> dict:
    """L2 norm of each tower's gradient for one backward pass of the mean answer-token loss (weights untouched)."""
    batch = collate(samples)
    was_training = model.training
    saved = {n: p.requires_grad for n, p in model.named_parameters()}
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
        p.grad = None
    try:
        loss = packed_loss(model, batch)[0] / batch.num_loss_tokens
        loss.backward()
        sq = defaultdict(float)
        for name, p in model.named_parameters():
            if p.grad is None:
                continue
            part = "merger" if name.startswith("visual.merger.") else "vision" if name.startswith("visual.") \
                else "language_model"
            sq[part] += float(p.grad.float().pow(2).sum())
        return {k: v ** 0.5 for k, v in sorted(sq.items())}
    finally:
        for name, p in model.named_parameters():
            p.grad = None
            p.requires_grad_(saved[name])
        model.train(was_training)


def temporal_span(cfg, samples) -> int:
    """The largest spread of MRoPE temporal positions over one video's tokens in `samples` (0 without videos),
    read off the samples' own position ids."""
    span = 0
    for s in samples:
        if s.video_grid_thw is None or not len(s.video_grid_thw):
            continue
        idx = (s.input_ids == cfg.video_token_id).nonzero().flatten()  # sequence indices of the video tokens
        runs = torch.tensor_split(idx, ((idx[1:] - idx[:-1]) > 1).nonzero().flatten() + 1)  # one run per video
        for r in runs:
            if len(r):
                t = s.position_ids[0, r]  # (n,) temporal ids of one video's tokens
                span = max(span, int(t.max() - t.min()))
    return span


def position_reach(cfg, samples) -> dict:
    """MRoPE turn (radians) across the largest picture's rows and columns, and a note where it is under 1."""
    from ..model.layers import inv_freq, mrope_alias, mrope_reach

    merge = cfg.vision.spatial_merge_size
    rows = cols = 1
    for s in samples:
        for grid in (s.image_grid_thw, s.video_grid_thw):
            if grid is not None and len(grid):
                rows = max(rows, int(grid[:, 1].max()) // merge)
                cols = max(cols, int(grid[:, 2].max()) // merge)
    t = cfg.text
    out = {"rows": rows, "cols": cols,
           "h": mrope_reach(t.head_dim, t.rope_theta, t.mrope_section, rows - 1)["h"],
           "w": mrope_reach(t.head_dim, t.rope_theta, t.mrope_section, cols - 1)["w"]}
    weak = [f"{k} turns {out[k]:.2g} rad across {n} {name}" for k, n, name in (("h", rows, "rows"), ("w", cols, "columns"))
            if n > 1 and out[k] < 1.0]
    notes = [("; ".join(weak) + ": attention cannot place visual tokens along that axis by position "
              "(a smaller rope_theta or wider h/w sections help a model trained from scratch)")] if weak else []
    span_t = temporal_span(cfg, samples)
    out["t_span"] = span_t
    out["t_alias"] = mrope_alias(t.head_dim, t.rope_theta, t.mrope_section, span_t)["t"] if span_t >= 2 else None
    a = out["t_alias"]
    if a and a["aliased"]:
        notes.append(f"the temporal component aliases over the longest clip ({span_t} positions): offsets "
                     f"{a['offset']} apart look {a['similarity']:.2f} alike against {a['neighbour']:.2f} for "
                     "neighbours, so a frame's time is ambiguous from its position alone (a larger rope_theta or a "
                     "wider t section spreads the temporal frequencies)")
    out["slowest"] = float(inv_freq(t.head_dim, t.rope_theta)[-1])  # rad per token
    if out["slowest"] > FAST_ONLY:
        notes.append(f"even the slowest frequency turns {out['slowest']:.2g} rad per token: lookups by content at a "
                     "varying distance (a word copied from the question, a picture's token from an answer) are "
                     "slower to learn (a larger rope_theta keeps slow frequencies)")
    out["note"] = "; ".join(notes) or None
    return out


def diagnose(vlm, samples) -> dict:
    """All five measurements and a verdict ("uses its pictures" or why not; position reach only adds a note)."""
    samples = _with_media(samples)
    if not samples:
        raise ValueError("none of the samples has an image or a video; diagnose needs held-out records with media")
    roles = answer_token_roles(vlm, samples)
    out = {"samples": len(samples), "media_reliance": media_reliance(roles),
           "visual_tokens": visual_token_spread(vlm.model, samples), "answer_tokens": roles,
           "grad_norm": grad_norms(vlm.model, samples),
           "position_reach": position_reach(vlm.config, samples)}
    gap, spread = out["media_reliance"]["gap"], out["visual_tokens"]["spread"]
    problems = []
    if gap < IGNORED_GAP:
        problems.append(f"the answers do not depend on the pictures (loss gap {gap:.4f} nats/token < {IGNORED_GAP})")
    if spread < COLLAPSED_SPREAD:
        problems.append(f"the visual tokens have collapsed to one shared vector (spread {spread:.3f} < "
                        f"{COLLAPSED_SPREAD})")
    out["verdict"] = "; ".join(problems) if problems else "uses its pictures"
    out["ok"] = not problems
    return out


def main(argv=None) -> int:
    import qwenvl

    from .data import DataError, SFTData

    ap = argparse.ArgumentParser(prog="python -m qwenvl.train.diagnose", description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", required=True, help="checkpoint directory (HF layout)")
    ap.add_argument("--data", required=True, help="held-out JSONL (messages or qwen-vl-finetune format) with media")
    ap.add_argument("--n", type=int, default=24, help="records to use (the first N with media; default 24)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        vlm = qwenvl.load(a.model, dtype=torch.float32, pack=False)
        data = SFTData([a.data], vlm.processor)
        samples = []
        for i in range(len(data)):
            if len(samples) >= a.n:
                break
            s = data[i]
            if s.pixel_values is not None or s.pixel_values_videos is not None:
                samples.append(s)
        report = diagnose(vlm, samples)
    except (OSError, ValueError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1))
    if report["position_reach"]["note"]:
        print(f"note: {report['position_reach']['note']}", file=sys.stderr)
    print(f"verdict: {report['verdict']}", file=sys.stderr)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
