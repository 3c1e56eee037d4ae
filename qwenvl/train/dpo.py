"""Direct Preference Optimization (Rafailov et al., 2023): sequence log-probabilities, the sigmoid DPO loss with
optional label smoothing (conservative DPO), and reference log-probs computed once and stored.

The loss for one pair, with policy log-probs pc/pr and reference log-probs rc/rr of the chosen/rejected answer:
    z = beta * ((pc - pr) - (rc - rr))
    loss = -(1 - eps) * logsigmoid(z) - eps * logsigmoid(-z)      (eps = label_smoothing; 0 is plain DPO)
averaged over the batch. The implicit rewards are beta * (pc - rc) and beta * (pr - rr).
"""
from __future__ import annotations

import json
import math
import os
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F

from qwenvl.train.types import IGNORE, PreferencePair, TrainSample

__all__ = ["sequence_logps", "dpo_loss", "ReferenceLogps", "pair_logps_fn"]

_CHUNK_ELEMENTS = 1 << 26  # float32 elements per chunk of the vocabulary softmax (256 MiB)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _chunk_len(B: int, T: int, V: int, chunk_tokens: int | None) -> int:
    if chunk_tokens is not None:
        return max(1, int(chunk_tokens))
    return max(1, min(T, _CHUNK_ELEMENTS // max(1, B * V)))


class _SequenceLogps(torch.autograd.Function):
    """Sum over t of log softmax(logits[:, t])[labels[:, t + 1]] where labels[:, t + 1] != IGNORE.

    Memory-lean in both directions: forward and backward work on float32 copies of one chunk of positions at a
    time, and nothing but the logits and labels is kept for backward (the softmax is recomputed)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, chunk: int) -> torch.Tensor:
        B, T, V = logits.shape
        cdt = _compute_dtype(logits.dtype)
        out = torch.zeros(B, dtype=cdt, device=logits.device)
        target, mask = labels[:, 1:], labels[:, 1:] != IGNORE
        safe = target.clamp(0, V - 1).unsqueeze(-1)
        for s in range(0, T - 1, chunk):
            e = min(s + chunk, T - 1)
            x = logits[:, s:e].to(cdt)
            lp = x.gather(-1, safe[:, s:e]).squeeze(-1) - torch.logsumexp(x, dim=-1)
            out += (lp * mask[:, s:e]).sum(1)
        ctx.save_for_backward(logits, labels)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        logits, labels = ctx.saved_tensors
        B, T, V = logits.shape
        cdt = _compute_dtype(logits.dtype)
        grad = torch.zeros_like(logits)
        target, mask = labels[:, 1:], labels[:, 1:] != IGNORE
        safe = target.clamp(0, V - 1).unsqueeze(-1)
        g = grad_out.to(cdt)
        for s in range(0, T - 1, ctx.chunk):
            e = min(s + ctx.chunk, T - 1)
            d = torch.softmax(logits[:, s:e].to(cdt), dim=-1).neg_()  # d lp / d x = onehot(target) - softmax
            d.scatter_add_(-1, safe[:, s:e], torch.ones_like(safe[:, s:e], dtype=cdt))
            d *= (mask[:, s:e].to(cdt) * g[:, None]).unsqueeze(-1)
            grad[:, s:e] = d.to(logits.dtype)
        return grad, None, None


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, *, average: bool = False,
                   chunk_tokens: int | None = None) -> torch.Tensor:
    """Per-sequence log-probability of the labelled tokens: (B, T, V) logits, (B, T) labels -> (B,) float32.

    Causal shift: logits at position t predict labels[t + 1], so labels[:, 0] is never scored and the last
    position's logits are unused. Positions whose label is IGNORE (-100) contribute nothing (a row with no
    labelled token gives 0). Computed in float32 (float64 if the logits are) whatever the logits' dtype, over
    chunks of `chunk_tokens` positions (automatic: ~256 MiB of float32 per chunk), with a custom backward that
    recomputes the softmax chunk by chunk instead of storing it. `average=True` divides by the number of
    labelled tokens (the IPO / length-normalised variant)."""
    if logits.dim() != 3 or labels.dim() != 2 or logits.shape[:2] != labels.shape:
        raise ValueError(f"expected logits (B, T, V) and labels (B, T), got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")
    B, T, V = logits.shape
    labels = labels.to(device=logits.device, dtype=torch.long)
    bad = (labels[:, 1:] != IGNORE) & ((labels[:, 1:] < 0) | (labels[:, 1:] >= V))
    if bool(bad.any()):
        raise ValueError(f"labels outside [0, {V}) that are not IGNORE ({IGNORE})")
    if T < 2:
        out = logits[:, :0].sum((1, 2)).to(_compute_dtype(logits.dtype))  # zeros, still in the graph
    else:
        out = _SequenceLogps.apply(logits, labels, _chunk_len(B, T, V, chunk_tokens))
    if average:
        n = (labels[:, 1:] != IGNORE).sum(1).clamp_min(1)
        out = out / n
    return out


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1, label_smoothing: float = 0.0
             ) -> tuple[torch.Tensor, dict[str, float]]:
    """Sigmoid DPO loss over a batch of pairs (all arguments (B,) sequence log-probs; the reference ones carry no
    gradient). Returns (mean loss, metrics) with metrics "rewards/chosen", "rewards/rejected", "rewards/margins"
    (batch means of the implicit rewards beta * (policy - reference) and of their difference), "accuracy" (the
    fraction of pairs whose chosen reward beats the rejected one), "logps/chosen" and "logps/rejected"."""
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    pc = torch.as_tensor(policy_chosen)
    dev = pc.device
    pc = pc.to(dtype=_compute_dtype(pc.dtype))
    pr = torch.as_tensor(policy_rejected, device=dev).to(pc.dtype)
    rc = torch.as_tensor(ref_chosen, device=dev).to(pc.dtype).detach()
    rr = torch.as_tensor(ref_rejected, device=dev).to(pc.dtype).detach()
    if not (pc.shape == pr.shape == rc.shape == rr.shape) or pc.dim() > 1:
        raise ValueError(f"log-prob shapes differ or are not (B,): {[tuple(t.shape) for t in (pc, pr, rc, rr)]}")
    z = beta * ((pc - pr) - (rc - rr))
    losses = -F.logsigmoid(z) * (1 - label_smoothing)
    if label_smoothing:
        losses = losses - F.logsigmoid(-z) * label_smoothing
    chosen_r = beta * (pc - rc).detach()
    rejected_r = beta * (pr - rr).detach()
    metrics = {
        "rewards/chosen": chosen_r.mean().item(),
        "rewards/rejected": rejected_r.mean().item(),
        "rewards/margins": (chosen_r - rejected_r).mean().item(),
        "accuracy": (chosen_r > rejected_r).to(pc.dtype).mean().item(),
        "logps/chosen": pc.detach().mean().item(),
        "logps/rejected": pr.detach().mean().item(),
    }
    return losses.mean(), metrics


def pair_logps_fn(forward: Callable[[TrainSample], torch.Tensor], *, average: bool = False
                  ) -> Callable[[PreferencePair], tuple[float, float]]:
    """Turn `forward(sample) -> logits (1, T, V)` (or (T, V)) into the `PreferencePair -> (chosen, rejected)`
    callable that `ReferenceLogps.compute` takes."""
    def fn(pair: PreferencePair) -> tuple[float, float]:
        out = []
        for s in (pair.chosen, pair.rejected):
            logits = forward(s)
            if logits.dim() == 2:
                logits = logits.unsqueeze(0)
            out.append(float(sequence_logps(logits, s.labels.reshape(1, -1), average=average)[0]))
        return out[0], out[1]
    return fn


class ReferenceLogps:
    """Reference-model log-probs of every pair in a dataset, computed once: index -> (chosen, rejected).

    `compute(pairs, fn)` calls `fn(pair)` for each pair under torch.no_grad() (fn maps a PreferencePair to two
    log-probs, e.g. `pair_logps_fn(frozen_model_forward)`); `save`/`load` store them as JSON (written through a
    temp file + rename) with the pairs' `source` strings, so `check(pairs)` can tell a different dataset."""

    FORMAT = "qwenvl-dpo-reference-logps"

    def __init__(self, values: dict[int, tuple[float, float]] | None = None, sources: dict[int, str] | None = None,
                 meta: dict | None = None):
        self.values = {int(k): (float(v[0]), float(v[1])) for k, v in (values or {}).items()}
        self.sources = {int(k): str(v) for k, v in (sources or {}).items()}
        self.meta = dict(meta or {})

    @classmethod
    def compute(cls, pairs: Iterable[PreferencePair], fn: Callable[[PreferencePair], tuple[Any, Any]], *,
                meta: dict | None = None, progress: Callable[[int], None] | None = None) -> "ReferenceLogps":
        values, sources = {}, {}
        with torch.no_grad():
            for i, pair in enumerate(pairs):
                c, r = fn(pair)
                c, r = float(torch.as_tensor(c).reshape(())), float(torch.as_tensor(r).reshape(()))
                if not (math.isfinite(c) and math.isfinite(r)):
                    raise ValueError(f"pair {i} ({getattr(pair, 'source', '')}): non-finite reference log-probs "
                                     f"({c}, {r})")
                values[i] = (c, r)
                if getattr(pair, "source", ""):
                    sources[i] = pair.source
                if progress is not None:
                    progress(i + 1)
        return cls(values, sources, meta)

    def __len__(self) -> int:
        return len(self.values)

    def __contains__(self, index: int) -> bool:
        return int(index) in self.values

    def __getitem__(self, index: int) -> tuple[float, float]:
        try:
            return self.values[int(index)]
        except KeyError:
            raise KeyError(f"no reference log-probs for pair {index} (have {len(self)})") from None

    def batch(self, indices: Iterable[int], device: torch.device | str | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen, rejected) float32 tensors for a batch of pair indices."""
        vals = [self[i] for i in indices]
        t = torch.tensor(vals, dtype=torch.float32, device=device).reshape(-1, 2)
        return t[:, 0], t[:, 1]

    def check(self, pairs: list[PreferencePair]) -> None:
        """Raise ValueError unless these log-probs belong to `pairs` (same count, same sources)."""
        if len(pairs) != len(self):
            raise ValueError(f"reference log-probs cover {len(self)} pairs, the dataset has {len(pairs)}")
        for i, p in enumerate(pairs):
            if i not in self.values:
                raise ValueError(f"no reference log-probs for pair {i}")
            if i in self.sources and getattr(p, "source", "") and p.source != self.sources[i]:
                raise ValueError(f"pair {i} is {p.source!r} but the reference log-probs were computed for "
                                 f"{self.sources[i]!r}; recompute them")

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        doc = {"format": self.FORMAT, "version": 1, "n": len(self), "meta": self.meta,
               "logps": {str(k): list(v) for k, v in sorted(self.values.items())},
               "sources": {str(k): v for k, v in sorted(self.sources.items())}}
        tmp = path.with_name(f".tmp-{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(tmp, "w") as f:
                json.dump(doc, f, indent=None)  # float repr round-trips exactly
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ReferenceLogps":
        try:
            doc = json.loads(Path(path).read_text())
        except ValueError as e:
            raise ValueError(f"{path}: not a reference log-probs file ({e})") from None
        if not isinstance(doc, dict) or doc.get("format") != cls.FORMAT:
            raise ValueError(f"{path}: not a {cls.FORMAT} file")
        return cls({int(k): tuple(v) for k, v in doc["logps"].items()},
                   {int(k): v for k, v in doc.get("sources", {}).items()}, doc.get("meta"))
