"""Teach the language model to find the element a click instruction names, with a dense signal.

The embedded model's notes (twenty-ninth session) found the name-to-token direction missing: the vision tower writes
each label's name into its tokens and the language model can copy a name out of them, but given a name in the
prompt it does not find the token that holds it (`gui_exists` at chance). A click's answer is a few digits, one
weak signal per screenshot. This stage adds a direct one: a linear head on the visual tokens' hidden states after
decoder layer `--layer` scores every cell of the screenshot, and a softmax over each screenshot's cells is trained
to put its mass on the named element's cells (its box, and its caption when that lies outside the box). The
instruction comes before the screenshot in the prompt, so each visual token can see the name it is asked about.
Refer and point records get the same loss on the referred object's box. The answer loss trains beside it; the
towers stay frozen and the head is dropped at the end.

`--head-data` with `--freeze-head` fits the head first on records the model already answers (refer / point: it
reads the mark the model writes on a referred object) and then holds it, so the language model must mark the named
element in that same direction, the one its pointing answers already read.

    python -m qwenvl.train.click_aux -m MODEL --data clicks.jsonl [--data more.jsonl] --heldout heldout.jsonl \\
        --out DIR --time-budget-min 20 [--head-data refer_point.jsonl --freeze-head]

Records without a target (any other SFT record) train on the answer loss alone. The log (DIR/click_aux.jsonl)
holds, for each held-out file (named by its folder), the answer loss and `find`: the share of its screenshots whose
top-scoring cell lies in the target's cells.
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from ..model.layers import apply_rotary
from .packing import collate, token_losses
from .tower_aux import cell_labels, finish_cli, head_then_cosine, log_row

log = logging.getLogger(__name__)


def target_cells(meta: dict, grid_hw: tuple[int, int], cell: int) -> list[int]:
    """Merged-token indices (raster order) of what a record's answer points at: for a computer_use click, the named
    element's box and its label's ink when that lies outside the box (a field's or a checkbox's caption); for a
    refer or point record, the referred object's box; [] for any other record."""
    task = meta.get("task")
    if task in ("refer", "point") and meta.get("box"):
        return sorted(cell_labels([{"box": meta["box"]}], meta, grid_hw, cell))
    if task != "computer_use" or "target" not in meta:
        return []
    el = meta["elements"][meta["target"]]
    parts = [el["box"]]
    lb = el.get("label_box")
    b = el["box"]
    if lb and not (lb[0] >= b[0] and lb[1] >= b[1] and lb[2] <= b[2] and lb[3] <= b[3]):
        parts.append(lb)
    cells: set[int] = set()
    for box in parts:
        cells |= set(cell_labels([{"box": box}], meta, grid_hw, cell))
    return sorted(cells)


def set_loss(scores: torch.Tensor, target: list[int]) -> torch.Tensor:
    """-log of the softmax mass (over one screenshot's cells) on the target cells."""
    return torch.logsumexp(scores, 0) - torch.logsumexp(scores[target], 0)


class Finder(torch.nn.Module):
    """One score per visual token: a linear read of its RMS-normalised hidden state."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = torch.nn.Linear(dim, 1)

    def forward(self, h):  # (n, C) -> (n,)
        h = h.float()
        return self.proj(h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)).squeeze(-1)


def digit_ids(tokenizer, vocab_size: int) -> torch.Tensor:
    """Ids of the tokens that decode to digits (the embedded tokenizer splits numbers digit by digit)."""
    return torch.tensor([i for i in range(vocab_size) if tokenizer.decode([i]).strip().isdigit()], dtype=torch.long)


def look_loss(attn, x, cos, sin, qpos, kpos, tgt, heads: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Where `heads` of one attention module look inside the screenshot from the positions `qpos`: (sum over
    positions and heads of -log the share of their image attention on the target cells, that share's sum). The
    softmax runs over the image's keys only, so the loss says where in the picture to look, not how much."""
    n_h, n_kv, d = attn.n_heads, attn.n_kv, attn.head_dim
    q = attn.q_proj(x[qpos]).view(len(qpos), n_h, d)
    k = attn.k_proj(x[kpos]).view(len(kpos), n_kv, d)
    q = apply_rotary(q, cos[qpos].unsqueeze(1), sin[qpos].unsqueeze(1))
    k = apply_rotary(k, cos[kpos].unsqueeze(1), sin[kpos].unsqueeze(1))
    loss = share = x.new_zeros((), dtype=torch.float32)
    for h in heads:
        logp = torch.log_softmax((q[:, h] @ k[:, h // (n_h // n_kv)].T).float() / d ** 0.5, -1)  # (nq, n_img)
        on = torch.logsumexp(logp[:, tgt], -1)
        loss = loss - on.sum()
        share = share + on.detach().exp().sum()
    return loss, share


def batch_losses(vlm, head, data, idx: list[int], layer: int, look: dict | None = None,
                 digits: torch.Tensor | None = None, look_tasks: set[str] | None = None) -> dict:
    """Losses of records `idx` packed into one sequence: answer (sum, tokens), finder (sum, screenshots with a
    target, hits) and, with `look` ({decoder layer (1-based): [heads]}), the look loss at the positions that predict
    an answer's digits (sum, terms, target share), on records whose task is in `look_tasks` (None: all)."""
    samples = [data[i] for i in idx]
    metas = [data.record(i).get("meta", {}) for i in idx]
    b = collate(samples)
    grabbed, hooks = {}, []
    layers = vlm.model.model.layers
    hooks.append(layers[layer - 1].register_forward_hook(lambda m, i, o: grabbed.update(h=o)))
    for li in (look or {}):  # the attention module's inputs: normed x, cos, sin
        hooks.append(layers[li - 1].self_attn.register_forward_pre_hook(
            lambda m, args, li=li: grabbed.update({li: args[:3]})))
    try:
        hidden = vlm.model(b.input_ids, pixel_values=b.pixel_values, image_grid_thw=b.image_grid_thw,
                           position_ids=b.position_ids, segments=b.segments, return_hidden=True)
    finally:
        for hk in hooks:
            hk.remove()
    losses, _ = token_losses(vlm.model, hidden, b.labels)
    h = grabbed["h"][0]  # (L, C)
    img_id = vlm.config.image_token_id
    v = vlm.config.vision
    merge, cell = v.spatial_merge_size, v.patch_size * v.spatial_merge_size
    zero = hidden.new_zeros((), dtype=torch.float32)
    out = {"answer": losses.sum(), "n_answer": int(losses.numel()), "find": zero, "n_find": 0, "hits": 0,
           "look": zero, "n_look": 0, "look_share": 0.0}
    is_digit = torch.isin(b.labels[0], digits) if look else None
    for s, meta, (a, z) in zip(samples, metas, b.segments):
        if s.image_grid_thw is None or len(s.image_grid_thw) != 1:
            continue
        grid = s.image_grid_thw[0]
        rows, cols = int(grid[1]) // merge, int(grid[2]) // merge
        tgt = target_cells(meta, (rows, cols), cell)
        pos = (b.input_ids[0, a:z] == img_id).nonzero().view(-1) + a
        if not tgt or len(pos) != rows * cols:
            continue
        scores = head(h[pos])
        out["find"] = out["find"] + set_loss(scores, tgt)
        out["n_find"] += 1
        out["hits"] += int(int(scores.argmax()) in tgt)
        if look and (look_tasks is None or meta.get("task") in look_tasks):
            qpos = is_digit[a:z].nonzero().view(-1) + a
            if len(qpos):
                for li, heads in look.items():
                    x, cos, sin = grabbed[li]
                    lo, sh = look_loss(layers[li - 1].self_attn, x[0], cos[0], sin[0], qpos, pos, tgt, heads)
                    out["look"] = out["look"] + lo
                    out["look_share"] += float(sh)
                    out["n_look"] += len(qpos) * len(heads)
    return out


def train(vlm, data, held, *, layer: int, steps: int | None, time_budget_min: float | None, batch: int = 8,
          lr: float = 2e-4, head_lr: float = 3e-3, warmup: int = 20, head_steps: int = 50, aux: float = 1.0,
          seed: int = 0, eval_every: int = 100, autocast: bool = True, head_data=None, freeze_head: bool = False,
          look: dict | None = None, look_weight: float = 1.0, look_tasks: set[str] | None = None,
          log_file: Path | None = None) -> list[dict]:
    """Train the language model (embeddings, decoder, lm_head) in place; the towers stay as they are. `held`:
    [(name, records)] scored every `eval_every` steps. `head_data`: the records the first `head_steps` (the finder
    alone) draw from instead of `data`; `freeze_head`: the finder stays as those steps left it, so the language
    model must write its mark in the direction the head learnt there (the referent's, when `head_data` holds
    refer / point records the model already answers). `look` ({decoder layer: [heads]}): those heads, at the
    positions that predict an answer's digits, are taught to look at the target's cells (weight `look_weight`), on
    the records whose task is in `look_tasks` (None: every record with a target)."""
    n_layers, n_heads = len(vlm.model.model.layers), vlm.config.text.num_attention_heads
    for li, hs in (look or {}).items():
        if not 1 <= li <= n_layers or not all(0 <= h < n_heads for h in hs):
            raise ValueError(f"--look {li}:{','.join(map(str, hs))}: the language model has {n_layers} decoder layers "
                             f"(1..{n_layers}) of {n_heads} heads (0..{n_heads - 1})")
    digits = digit_ids(vlm.tokenizer, vlm.config.text.vocab_size) if look else None
    if not 1 <= layer <= len(vlm.model.model.layers):
        raise ValueError(f"--layer {layer}: the language model has {len(vlm.model.model.layers)} decoder layers; "
                         "give 1 to that number")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    vlm.model.visual.requires_grad_(False)
    lm = [p for n, p in vlm.model.named_parameters() if not n.startswith("visual.")]
    for p in lm:
        p.requires_grad_(True)
    head = Finder(vlm.config.text.hidden_size)
    opt = torch.optim.AdamW([{"params": lm, "weight_decay": 0.01}, {"params": list(head.parameters()), "lr": head_lr,
                                                                     "weight_decay": 0.0}], lr=lr)
    amp = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if autocast else nullcontext
    total = steps or 10**9
    t0 = time.monotonic()
    budget_s = time_budget_min * 60 if time_budget_min else None

    def lr_at(s):
        k = max(s - head_steps, 0)
        done = max(k / steps if steps else 0.0, (time.monotonic() - t0) / budget_s if budget_s else 0.0)
        return head_then_cosine(s, head_steps, warmup, lr, done)

    @torch.no_grad()
    def evaluate():
        vlm.model.eval()
        row = {}
        for name, part in held:
            t = {"answer": 0.0, "n_answer": 0, "find": 0.0, "n_find": 0, "hits": 0, "look_share": 0.0, "n_look": 0}
            for i in range(0, len(part), batch):
                with amp():
                    o = batch_losses(vlm, head, part, list(range(i, min(i + batch, len(part)))), layer, look, digits)
                for k in t:
                    t[k] += float(o[k])
            row.update({f"{name}_answer_loss": round(t["answer"] / max(t["n_answer"], 1), 4),
                        f"{name}_find_loss": round(t["find"] / max(t["n_find"], 1), 4),
                        f"{name}_find": round(t["hits"] / max(t["n_find"], 1), 4)})
            if look:
                row[f"{name}_look_share"] = round(t["look_share"] / max(t["n_look"], 1), 4)
        vlm.model.train()
        return row

    from tqdm import tqdm
    rows, step = [], 0
    first = {"step": 0, **evaluate()}  # the starting model, before any step
    log.info("%s", first)
    rows.append(first)
    log_row(log_file, first)
    order = list(range(len(data)))
    head_order = list(range(len(head_data))) if head_data is not None else order
    if head_data is not None:
        rng.shuffle(head_order)
    bar = tqdm(total=steps, desc="click aux", file=sys.stderr, dynamic_ncols=True, mininterval=30)
    vlm.model.train()
    while step < total and (budget_s is None or time.monotonic() - t0 < budget_s):
        if step % max(1, len(order) // batch) == 0:
            rng.shuffle(order)
        src, pool = (head_data, head_order) if head_data is not None and step < head_steps else (data, order)
        j = (step * batch) % len(pool)
        idx = pool[j:j + batch] or pool[:batch]
        lm_on = step >= head_steps
        opt.param_groups[0]["lr"] = lr_at(step)
        with amp():
            o = batch_losses(vlm, head, src, idx, layer, look, digits, look_tasks)
        a, na, f, n = o["answer"], o["n_answer"], o["find"], o["n_find"]
        loss = a / max(na, 1) + aux * f / max(n, 1)
        if look and lm_on:
            loss = loss + look_weight * o["look"] / max(o["n_look"], 1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if not lm_on:  # the head alone first: what the hidden states already hold
            for p in lm:
                p.grad = None
        elif freeze_head:
            for p in head.parameters():
                p.grad = None
        torch.nn.utils.clip_grad_norm_(lm + list(head.parameters()), 1.0)
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(answer=f"{float(a.detach()) / max(na, 1):.3f}", find=f"{float(f.detach()) / max(n, 1):.3f}")
        if step % eval_every == 0 or step == head_steps:
            row = {"step": step, "elapsed_s": round(time.monotonic() - t0, 1), "lr": lr_at(step),
                   "train_answer_loss": round(float(a.detach()) / max(na, 1), 4),
                   "train_find_loss": round(float(f.detach()) / max(n, 1), 4),
                   **({"train_look_loss": round(float(o["look"].detach()) / max(o["n_look"], 1), 4)} if look else {}),
                   **evaluate()}
            rows.append(row)
            log.info("%s", row)
            log_row(log_file, row)
    bar.close()
    if rows[-1]["step"] != step:
        rows.append({"step": step, "elapsed_s": round(time.monotonic() - t0, 1), **evaluate()})
        log_row(log_file, rows[-1])
    vlm.model.eval().requires_grad_(False)
    return rows


def main(argv=None) -> int:
    import qwenvl
    from .data import SFTData

    ap = argparse.ArgumentParser(prog="python -m qwenvl.train.click_aux", description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", required=True, help="starting checkpoint directory")
    ap.add_argument("--data", action="append", required=True, help="SFT JSONL (computer_use records get the finder)")
    ap.add_argument("--heldout", action="append", required=True, help="computer_use JSONL to score on (repeatable)")
    ap.add_argument("--n-heldout", type=int, default=60, help="held-out records scored per --heldout file (default 60)")
    ap.add_argument("--out", required=True, help="where to write the model directory")
    ap.add_argument("--layer", type=int, default=2, help="the decoder layer whose output the finder reads (default 2)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--time-budget-min", type=float, default=None)
    ap.add_argument("--batch", type=int, default=8, help="records per step (default 8)")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--aux", type=float, default=1.0, help="weight of the finder loss (default 1; 0: answers only)")
    ap.add_argument("--head-steps", type=int, default=50, help="steps that fit the finder alone first (default 50)")
    ap.add_argument("--head-data", action="append", default=None,
                    help="SFT JSONL the finder-only steps draw from instead of --data (repeatable), e.g. refer / point "
                         "records, so the head learns the mark the model already writes on a referred object")
    ap.add_argument("--freeze-head", action="store_true",
                    help="keep the finder as the finder-only steps left it: the language model then marks the "
                         "named element in that direction")
    ap.add_argument("--look", action="append", default=[], metavar="LAYER:HEADS",
                    help="teach these attention heads (e.g. 3:1,3,4 = decoder layer 3, heads 1, 3 and 4; repeatable) "
                         "to look at the target's cells from the positions that predict an answer's digits")
    ap.add_argument("--look-weight", type=float, default=1.0, help="weight of the look loss (default 1)")
    ap.add_argument("--look-task", action="append", default=None, metavar="TASK",
                    help="apply the look loss only to records of this task (repeatable, e.g. computer_use; default: "
                         "every record with a target, refer and point included)")
    a = finish_cli(ap, argv)
    if a is None:
        return 2
    try:
        look = parse_look(a.look)
        vlm = qwenvl.load(a.model, dtype=torch.float32, pack=False)
        data = SFTData(a.data, vlm.processor)
        head_data = SFTData(a.head_data, vlm.processor) if a.head_data else None
        tasks = {data.record(i).get("meta", {}).get("task") for i in range(len(data))}
        for t in a.look_task or []:
            if t not in tasks:
                raise ValueError(f"--look-task {t}: no --data record has this task; use one of "
                                 f"{', '.join(sorted(x for x in tasks if x))}")
        held = []
        for h in a.heldout:  # each file scored on its own, named by its folder ("gu/heldout.jsonl" -> gu)
            d = SFTData([h], vlm.processor)
            held.append((Path(h).parent.name or Path(h).stem, _Subset(d, list(range(min(a.n_heldout, len(d)))))))
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "click_aux.jsonl").unlink(missing_ok=True)
        rows = train(vlm, data, held, layer=a.layer, steps=a.steps, time_budget_min=a.time_budget_min,
                     batch=a.batch, lr=a.lr, aux=a.aux, head_steps=a.head_steps, seed=a.seed,
                     eval_every=a.eval_every, head_data=head_data, freeze_head=a.freeze_head, look=look,
                     look_weight=a.look_weight, look_tasks=set(a.look_task) if a.look_task else None,
                     log_file=out / "click_aux.jsonl")
        vlm.save(out)
        print(json.dumps(rows[-1]), flush=True)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def parse_look(specs: list[str]) -> dict[int, list[int]]:
    """["3:1,3,4", "4:0"] -> {3: [1, 3, 4], 4: [0]} (decoder layers 1-based, heads 0-based)."""
    out: dict[int, list[int]] = {}
    for spec in specs:
        layer, _, heads = spec.partition(":")
        try:
            out.setdefault(int(layer), []).extend(int(h) for h in heads.split(","))
        except ValueError:
            raise ValueError(f"--look {spec!r}: write LAYER:HEADS, e.g. 3:1,3,4 (decoder layer 3, heads 1, 3, "
                             "4)") from None
    return out


class _Subset:
    """The first records of an SFTData (held-out scoring)."""

    def __init__(self, data, keep: list[int]):
        self.data, self.keep = data, keep

    def __len__(self):
        return len(self.keep)

    def __getitem__(self, i):
        return self.data[self.keep[i]]

    def record(self, i):
        return self.data.record(self.keep[i])


if __name__ == "__main__":
    sys.exit(main())
