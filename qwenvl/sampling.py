"""Sampling parameters and the per-row sampler that turns next-token logits into ids.

The HF-defined steps (repetition penalty, temperature, top-k, top-p, min-p) follow the transformers logits
processors exactly; presence/frequency penalties follow the OpenAI/vLLM formula on generated tokens only.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, fields

import torch

log = logging.getLogger(__name__)

# keys taken from a generation_config-like dict (do_sample is handled separately)
_DEFAULT_KEYS = ("temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@dataclass(frozen=True)
class SamplingParams:
    """How one sequence is continued. temperature 0 means greedy."""

    max_new_tokens: int = 256
    min_new_tokens: int = 0
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    constraint: str | None = None  # "bbox" / "point": only a grounding JSON list may be generated

    @property
    def greedy(self) -> bool:
        """True when the choice is an argmax (temperature 0, or top_k 1 which keeps only the best token)."""
        return self.temperature == 0 or self.top_k == 1

    def validate(self) -> None:
        """Raise ValueError naming the first field outside its allowed range."""
        def bad(name: str, allowed: str):
            raise ValueError(f"{name} must be {allowed}, got {getattr(self, name)!r}")

        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            bad("max_new_tokens", "an integer >= 1")
        if not _is_int(self.min_new_tokens) or self.min_new_tokens < 0:
            bad("min_new_tokens", "an integer >= 0")
        if not _is_num(self.temperature) or not self.temperature >= 0:
            bad("temperature", "a number >= 0 (0 = greedy)")
        if not _is_num(self.top_p) or not 0 < self.top_p <= 1:
            bad("top_p", "a number in (0, 1]")
        if not _is_int(self.top_k) or self.top_k < 0:
            bad("top_k", "an integer >= 0 (0 = off)")
        if not _is_num(self.min_p) or not 0 <= self.min_p <= 1:
            bad("min_p", "a number in [0, 1]")
        if not _is_num(self.repetition_penalty) or not self.repetition_penalty > 0:
            bad("repetition_penalty", "a number > 0 (1 = off)")
        for name in ("presence_penalty", "frequency_penalty"):
            v = getattr(self, name)
            if not _is_num(v) or not -2 <= v <= 2:
                bad(name, "a number in [-2, 2]")
        if self.seed is not None and not _is_int(self.seed):
            bad("seed", "an integer or None")
        if not isinstance(self.stop, tuple) or not all(isinstance(s, str) and s for s in self.stop):
            bad("stop", "a tuple of non-empty strings")
        if not isinstance(self.stop_token_ids, tuple) or not all(_is_int(t) and t >= 0 for t in self.stop_token_ids):
            bad("stop_token_ids", "a tuple of integers >= 0")
        if self.constraint not in (None, "bbox", "point"):
            bad("constraint", "None, 'bbox' or 'point' (a bbox_2d / point_2d JSON list)")

    @classmethod
    def from_options(cls, defaults: dict | None = None, **options) -> "SamplingParams":
        """Merge a generation_config-like `defaults` dict with explicit `options` (which win) and validate.

        Options set to None count as not given. `stop` may be a str or a list; `stop_token_ids` an int or a list.
        From `defaults` only temperature, top_p, top_k, repetition_penalty and max_new_tokens are read; as in
        transformers, a missing or false do_sample means greedy (temperature 0), and do_sample true without a
        temperature means temperature 1.
        """
        names = {f.name for f in fields(cls)}
        unknown = sorted(k for k in options if k not in names)
        if unknown:
            raise TypeError(f"unknown sampling option(s) {unknown}; known: {sorted(names)}")
        vals: dict = {}
        if defaults:
            vals = {k: defaults[k] for k in _DEFAULT_KEYS if defaults.get(k) is not None}
            if not defaults.get("do_sample", False):
                vals["temperature"] = 0.0
            else:
                vals.setdefault("temperature", 1.0)
        vals.update({k: v for k, v in options.items() if v is not None})
        if isinstance(vals.get("stop"), str):
            vals["stop"] = (vals["stop"],)
        if _is_int(vals.get("stop_token_ids")):
            vals["stop_token_ids"] = (vals["stop_token_ids"],)
        for k in ("stop", "stop_token_ids"):
            if isinstance(vals.get(k), list):
                vals[k] = tuple(vals[k])
        for k in ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty"):
            if _is_int(vals.get(k)):
                vals[k] = float(vals[k])
        params = cls(**vals)
        params.validate()
        return params


# row-wise steps; each takes and returns a (V,) float32 row ------------------------------------------------
def apply_penalties(row: torch.Tensor, history: list[int], n_generated: int, p: SamplingParams) -> torch.Tensor:
    """Repetition penalty on every id in `history` (HF formula), then presence/frequency on the last
    `n_generated` ids (logit -= presence * (count > 0) + frequency * count). Modifies and returns `row`."""
    V = row.shape[0]
    if p.repetition_penalty != 1.0 and history:
        ids = torch.tensor(history, dtype=torch.long, device=row.device)
        ids = ids[ids < V].unique()  # (n,)
        s = row[ids]
        row[ids] = torch.where(s < 0, s * p.repetition_penalty, s / p.repetition_penalty)
    if (p.presence_penalty or p.frequency_penalty) and n_generated > 0:
        gen = torch.tensor(history[len(history) - n_generated:], dtype=torch.long, device=row.device)
        counts = torch.bincount(gen[gen < V], minlength=V).to(row.dtype)  # (V,)
        row -= p.presence_penalty * (counts > 0).to(row.dtype) + p.frequency_penalty * counts
    return row


def apply_filters(row: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """Temperature, top-k, top-p, min-p in that order (transformers warper semantics); removed ids get -inf.
    Returns a new (V,) row; only meaningful for temperature > 0."""
    row = row / p.temperature
    neg = float("-inf")
    if 0 < p.top_k < row.shape[0]:
        kth = torch.topk(row, p.top_k).values[-1]  # ties with the k-th value survive, as in TopKLogitsWarper
        row = row.masked_fill(row < kth, neg)
    if p.top_p < 1.0:
        srt, idx = torch.sort(row, descending=False)
        remove = srt.softmax(-1).cumsum(-1) <= (1 - p.top_p)
        remove[-1] = False  # always keep the most likely token
        row = row.masked_fill(remove.scatter(0, idx, remove), neg)
    if p.min_p > 0:
        probs = row.softmax(-1)
        row = row.masked_fill(probs < p.min_p * probs.max(), neg)  # the top token is never below its own share
    return row


class Sampler:
    """Turns next-token logits of a batch into token ids, row by row parameters allowed."""

    def __init__(self, params: list[SamplingParams], vocab_size: int, device="cpu"):
        """One params per row; ids >= vocab_size (padding rows of the output layer) are never chosen, 0 = no
        limit. Draws use a per-row generator on `device`; pass the logits' device to avoid a copy per draw."""
        for p in params:
            p.validate()
        self.params = list(params)
        self.vocab_size = int(vocab_size or 0)
        if self.vocab_size < 0:
            raise ValueError(f"vocab_size must be >= 0 (0 = all logits), got {vocab_size}")
        self.device = torch.device(device)
        self.generators: list[torch.Generator] = []
        for p in self.params:
            g = torch.Generator(device=self.device)
            if p.seed is None:
                g.seed()
            else:
                g.manual_seed(p.seed)
            self.generators.append(g)

    def process(self, logits: torch.Tensor, history: list[list[int]], n_generated: list[int],
                stop_ids: list[set[int]] | None = None) -> torch.Tensor:
        """Processed float32 scores (B, vocab_size): penalties and min_new_tokens for every row, then the
        temperature/top-k/top-p/min-p filters for sampled rows (greedy rows are left unscaled)."""
        B = logits.shape[0]
        if logits.dim() != 2 or B != len(self.params) or len(history) != B or len(n_generated) != B:
            raise ValueError(f"logits {tuple(logits.shape)} must be (B, V) with B = {len(self.params)} rows, "
                             f"matching history ({len(history)}) and n_generated ({len(n_generated)})")
        V = self.vocab_size or logits.shape[1]
        if logits.shape[1] < V:
            raise ValueError(f"logits have {logits.shape[1]} entries, fewer than vocab_size {V}")
        out = logits[:, :V].to(torch.float32, copy=True)  # (B, V)
        rows = []
        for i, p in enumerate(self.params):
            row = apply_penalties(out[i], history[i], n_generated[i], p)
            if n_generated[i] < p.min_new_tokens:
                block = set(p.stop_token_ids) | (set(stop_ids[i]) if stop_ids is not None else set())
                block = [t for t in block if 0 <= t < V]
                if block:
                    row[block] = float("-inf")
            rows.append(row if p.greedy else apply_filters(row, p))
        return torch.stack(rows)

    def __call__(self, logits: torch.Tensor, history: list[list[int]], n_generated: list[int],
                 stop_ids: list[set[int]] | None = None) -> torch.Tensor:
        """Next ids (B,) int64: argmax for greedy rows, else a draw from the row's own generator."""
        scores = self.process(logits, history, n_generated, stop_ids)  # (B, V)
        out = torch.empty(scores.shape[0], dtype=torch.long, device=scores.device)
        for i, p in enumerate(self.params):
            if p.greedy:
                out[i] = scores[i].argmax()
            else:
                g = self.generators[i]
                probs = scores[i].softmax(-1).to(g.device)  # (V,); a copy only if the devices differ
                out[i] = torch.multinomial(probs, 1, generator=g)[0]
        return out
