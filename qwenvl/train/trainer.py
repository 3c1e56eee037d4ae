"""The training loop: packed SFT or DPO, staged freezing, AdamW + cosine warmup, accumulation, clipping, autocast,
activation checkpointing, exact resume, FSDP2 under torchrun.

Data order is a pure function of (seed, epoch): each epoch's samples are permuted, packed into bins of at most
`pack_length` true tokens, and the bins shuffled; the run walks the concatenation of the epochs' bins in groups of
`grad_accum x world` bins per optimizer step. The data position is the index of the next bin, so a resumed run
sees exactly the bins it would have seen. Checkpoints hold model, optimizer, scheduler, RNG and that position;
with the same hardware and thread count a resumed run's losses equal the uninterrupted run's bit for bit.
"""
from __future__ import annotations

import json
import logging
import math
import signal
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from . import distributed
from .config import TrainConfig
from .diagnose import IGNORED_GAP, blank_media
from .packing import collate, packed_loss, plan_bins

log = logging.getLogger(__name__)


class BinStream:
    """Deterministic sequence of bins (lists of sample indices) over epochs: each bin a random mix of samples (first
    fit in a seeded shuffle), or with `by_length` runs of same-length samples (first-fit decreasing, tighter)."""

    def __init__(self, counts: list[int], capacity: int, seed: int, epochs: float, by_length: bool = False):
        self.counts, self.capacity, self.seed, self.by_length = counts, capacity, seed, by_length
        self.full_epochs = int(math.floor(epochs))
        self.frac = epochs - self.full_epochs
        self._plans: dict[int, list[list[int]]] = {}
        self.total = sum(len(self.plan(e)) for e in range(self.full_epochs))
        if self.frac > 0:
            self.total += int(len(self.plan(self.full_epochs)) * self.frac)

    def plan(self, epoch: int) -> list[list[int]]:
        if epoch not in self._plans:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(len(self.counts), generator=g).tolist()
            bins = plan_bins(self.counts, self.capacity, order, decreasing=self.by_length)
            perm = torch.randperm(len(bins), generator=g).tolist()
            self._plans[epoch] = [bins[i] for i in perm]
        return self._plans[epoch]

    def bin(self, index: int) -> list[int]:
        e = 0
        while index >= len(self.plan(e)):
            index -= len(self.plan(e))
            e += 1
        return self.plan(e)[index]


def param_groups(model, cfg: TrainConfig) -> list[dict]:
    """Freeze per the stage switches; one AdamW group per module kind (and no decay on norms/biases)."""
    groups: dict[tuple[str, bool], list] = {}
    lrs = {"vision": cfg.vision_lr or cfg.lr, "merger": cfg.merger_lr or cfg.lr, "llm": cfg.llm_lr or cfg.lr}
    tune = {"vision": cfg.tune_vision, "merger": cfg.tune_merger, "llm": cfg.tune_llm}
    seen = set()
    for name, p in model.named_parameters():
        kind = "merger" if name.startswith("visual.merger.") else "vision" if name.startswith("visual.") else "llm"
        p.requires_grad_(tune[kind])
        if not tune[kind] or id(p) in seen:
            continue
        seen.add(id(p))
        decay = p.dim() >= 2 and "embed" not in name
        groups.setdefault((kind, decay), []).append(p)
    out = [{"params": ps, "lr": lrs[k], "weight_decay": cfg.weight_decay if decay else 0.0, "name": f"{k}"}
           for (k, decay), ps in sorted(groups.items())]
    if not out:
        raise ValueError("no trainable parameters for this stage")
    return out


class Trainer:
    def __init__(self, cfg: TrainConfig, vlm=None):
        import qwenvl
        from ..device import cpu_has_fast_bf16, varlen_friendly_sdpa
        from .data import PreferenceData, SFTData

        cfg.validate()
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        self.dist = distributed.setup(cfg.device)
        dev = self.dist.device
        varlen_friendly_sdpa(dev)  # packed lengths change every step
        self.out = Path(cfg.out_dir)
        if vlm is None:
            vlm = qwenvl.load(self._model_dir(), dtype=cfg.dtype, device=dev, pack=False)
        self.vlm = vlm
        self.model = self.vlm.model
        self.model.train()
        native_bf16 = dev.type == "cuda" or cpu_has_fast_bf16()
        self.amp = cfg.autocast == "bfloat16" or (cfg.autocast == "auto" and native_bf16)
        if cfg.activation_checkpointing:
            self.model.visual.gradient_checkpointing = True
            self.model.model.gradient_checkpointing = True
        groups = param_groups(self.model, cfg)
        if self.dist.enabled:
            distributed.shard_model(self.model, self.dist)
            groups = param_groups(self.model, cfg)  # sharded parameters replace the originals
        kw = dict(min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels, fps=cfg.fps, max_length=cfg.pack_length,
                  on_error=cfg.on_error)
        data_cls = PreferenceData if cfg.objective == "dpo" else SFTData
        self.data = data_cls(cfg.data, self.vlm.processor, **kw)
        if len(self.data) == 0:
            raise ValueError(f"no usable training records in {cfg.data}")
        self.eval_set = data_cls(cfg.eval_data, self.vlm.processor, **kw) if cfg.eval_data else None
        self.eval_n = 0
        if self.eval_set is not None:
            self.eval_n = min(len(self.eval_set), cfg.eval_max_samples or len(self.eval_set))
            if self.eval_n == 0:
                raise ValueError(f"no usable held-out records in {cfg.eval_data}")
        counts = token_counts(self.data, cfg.num_workers)
        self.stream = BinStream(counts, cfg.pack_length, cfg.seed, cfg.epochs, by_length=cfg.pack_by_length)
        self.group = cfg.grad_accum * self.dist.world
        self.total_steps = cfg.max_steps or max(1, self.stream.total // self.group)
        self.planned_steps = self.total_steps  # what the data allows; a time budget fits total_steps below it
        self.lr_anchor = None  # (step, cosine progress, warmup) once a time budget has moved total_steps
        fused = {"foreach": True} if dev.type == "cpu" else {"fused": True}
        self.opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **fused)
        # the schedule reads total_steps when called: a time budget may shorten the run after it starts
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self._lr_factor)
        self.step = 0
        self.next_bin = 0
        self.ckpt_dir = self.out / "checkpoints"
        self._stop = False
        self.clock = time.perf_counter  # the time budget's clock
        self.ref_logps = self.eval_ref_logps = None
        if cfg.objective == "dpo":
            self.ref_logps = self._reference_logps(self.data, len(self.data), "reference_logps.json")
            if self.eval_set is not None:
                self.eval_ref_logps = self._reference_logps(self.eval_set, self.eval_n,
                                                             "reference_logps_eval.json")

    def _warmup(self) -> int:
        if self.lr_anchor is not None:
            return self.lr_anchor[2]
        return self.cfg.warmup_steps or int(round(self.cfg.warmup_ratio * self.total_steps))

    def _progress(self, step: int, warmup: int) -> float:
        """Cosine progress (0 -> 1) at `step` after warm-up. Once a time budget has moved total_steps, the
        progress reached then (`lr_anchor`) is kept and the rest is spread up to the new last step."""
        if self.lr_anchor is None:
            return (step - warmup) / max(1, self.total_steps - warmup)
        s0, p0, _ = self.lr_anchor
        return p0 + (1 - p0) * (step - s0) / max(1, self.total_steps - 1 - s0)

    def _lr_factor(self, step: int) -> float:
        warmup = self._warmup()
        if warmup and step < warmup:
            return (step + 1) / warmup
        t = min(1.0, max(0.0, self._progress(step, warmup)))
        r = self.cfg.min_lr_ratio
        return r + (1 - r) * 0.5 * (1 + math.cos(math.pi * t))

    def _set_total(self, new: int) -> None:
        """Change total_steps mid-run without a jump in the learning rate (so the rate only ever goes down)."""
        if new == self.total_steps:
            return
        warmup = self._warmup()
        if self.step >= warmup:
            self.lr_anchor = (self.step, min(1.0, max(0.0, self._progress(self.step, warmup))), warmup)
        self.total_steps = new

    def _rebudget(self, t_start: float, first_step: int) -> None:
        """time_budget_min: after 10, 20, 40, ... steps of this process, re-estimate how many steps fit in the
        budget from the measured pace and set total_steps (at most what the data allows), so the cosine still ends
        at the end; past the budget, end now."""
        budget = self.cfg.time_budget_min * 60
        if budget <= 0:
            return
        elapsed, done = self.clock() - t_start, self.step - first_step
        if elapsed >= budget:
            self.total_steps = self.step
            return
        if done % 10 == 0 and (done // 10) & (done // 10 - 1) == 0:  # 10, 20, 40, 80, ...
            fit = self.step + int((budget - elapsed) / (elapsed / done))
            new = max(self.step + 1, min(self.planned_steps, fit))  # may grow again when the pace improves
            if new != self.total_steps:
                log.info("time budget %.1f min: %d steps fit (pace %.2f s/step)", self.cfg.time_budget_min, new,
                         elapsed / done)
            self._set_total(new)

    def _model_dir(self) -> str:
        """The starting checkpoint; `tiny-random` writes a fresh toy model to out_dir/init once (rank 0)."""
        from .config import TINY_RANDOM
        if self.cfg.model != TINY_RANDOM:
            if not self.cfg.model:
                raise ValueError("no starting model: set `model:` in the config or pass --model DIR")
            return self.cfg.model
        path = self.out / "init"
        if self.dist.main and not (path / "config.json").is_file():
            from ..tiny import make_random_checkpoint
            make_random_checkpoint(path, seed=self.cfg.seed)
        distributed.barrier(self.dist)
        return str(path)

    # ------------------------------------------------------------------ state
    def state(self) -> dict:
        from .checkpoint import capture_rng
        return dict(model_state=self._model_state(), optimizer_state=self.opt.state_dict(),
                    scheduler_state=self.sched.state_dict(), rng_state=capture_rng(),
                    data_state={"next_bin": self.next_bin, "step": self.step, "seed": self.cfg.seed,
                                "total_steps": self.total_steps,
                                "lr_anchor": None if self.lr_anchor is None else list(self.lr_anchor)})

    def _model_state(self) -> dict:
        if self.dist.enabled:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
            return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {k: v.detach() for k, v in self.model.state_dict().items()}

    def save(self) -> None:
        from .checkpoint import save_checkpoint
        if self.dist.enabled:
            self._save_distributed()
            return
        save_checkpoint(self.ckpt_dir, self.step, keep=self.cfg.keep, extra={"config": self.cfg.to_dict()},
                        **self.state())

    def _save_distributed(self) -> None:
        """torch.distributed.checkpoint: every rank writes its shards; rank 0 the position and RNG."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        from .checkpoint import capture_rng
        model_sd, optim_sd = get_state_dict(self.model, self.opt)
        path = self.ckpt_dir / f"dcp-step-{self.step:08d}"
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(path))
        meta = {"step": self.step, "next_bin": self.next_bin, "scheduler": self.sched.state_dict()}
        torch.save({"rng": capture_rng(), **meta}, path / f"rank{self.dist.rank}.pt")
        distributed.barrier(self.dist)
        if self.dist.main:
            (self.ckpt_dir / "latest-dcp.tmp").write_text(path.name)
            (self.ckpt_dir / "latest-dcp.tmp").replace(self.ckpt_dir / "latest-dcp")

    def has_checkpoint(self) -> bool:
        """Whether out_dir holds a checkpoint that `resume` would continue from."""
        from .checkpoint import latest_step
        if self.dist.enabled:
            return (self.ckpt_dir / "latest-dcp").is_file()
        return latest_step(self.ckpt_dir) is not None

    def resume(self) -> bool:
        """Continue from the newest complete checkpoint in out_dir; False when there is none."""
        from .checkpoint import NoCheckpointError, load_checkpoint, restore_rng
        if self.dist.enabled:
            return self._resume_distributed()
        try:
            ck = load_checkpoint(self.ckpt_dir)
        except NoCheckpointError:
            return False
        self.model.load_state_dict(ck["model_state"])
        self.opt.load_state_dict(ck["optimizer_state"])
        self.sched.load_state_dict(ck["scheduler_state"])
        restore_rng(ck["rng_state"])
        self.step, self.next_bin = ck["data_state"]["step"], ck["data_state"]["next_bin"]
        if self.cfg.time_budget_min and "total_steps" in ck["data_state"]:
            self.total_steps = ck["data_state"]["total_steps"]
            anchor = ck["data_state"].get("lr_anchor")
            self.lr_anchor = None if anchor is None else (int(anchor[0]), float(anchor[1]), int(anchor[2]))
        log.info("resumed from %s (step %d)", ck["path"], self.step)
        return True

    def _resume_distributed(self) -> bool:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        from .checkpoint import restore_rng
        latest = self.ckpt_dir / "latest-dcp"
        if not latest.is_file():
            return False
        path = self.ckpt_dir / latest.read_text().strip()
        model_sd, optim_sd = get_state_dict(self.model, self.opt)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=str(path))
        set_state_dict(self.model, self.opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
        meta = torch.load(path / f"rank{self.dist.rank}.pt", weights_only=False)
        restore_rng(meta["rng"])
        self.sched.load_state_dict(meta["scheduler"])
        self.step, self.next_bin = meta["step"], meta["next_bin"]
        return True

    # ------------------------------------------------------------------ steps
    def _autocast(self):
        if not self.amp:
            return nullcontext()
        return torch.autocast(self.dist.device.type, dtype=torch.bfloat16)

    def _my_bins(self) -> list[list[int]]:
        idx = range(self.next_bin + self.dist.rank, self.next_bin + self.group, self.dist.world)
        return [self.stream.bin(i) for i in idx]

    def train_step(self, prepared: list | None = None) -> dict:
        """One optimizer step over this rank's bins; `prepared` = those bins already made by `prepare_bin`."""
        t0 = time.perf_counter()
        bins = self._my_bins()
        items = prepared if prepared is not None else [prepare_bin(self.data, self.cfg.objective, b) for b in bins]
        if self.cfg.objective == "dpo":
            loss, n_samples, n_tokens, extra = self._dpo_step(bins, items)
        else:
            batches = items
            n_loss = distributed.all_reduce_sum(sum(b.num_loss_tokens for b in batches), self.dist)
            total = 0.0
            for b in batches:
                with self._autocast():
                    s, _, _ = packed_loss(self.model, b.to(self.dist.device))
                (s * self.dist.world / max(n_loss, 1)).backward()
                total += float(s.detach())
            loss = distributed.all_reduce_sum(total, self.dist) / max(n_loss, 1)
            n_samples = sum(len(b) for b in bins)
            n_tokens = sum(b.num_tokens for b in batches)
            extra = {"loss_tokens": int(n_loss)}
        norm = torch.nn.utils.clip_grad_norm_([p for g in self.opt.param_groups for p in g["params"]],
                                              self.cfg.max_grad_norm or float("inf"))
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        lr = self.opt.param_groups[0]["lr"]
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        self.next_bin += self.group
        dt = time.perf_counter() - t0
        n_samples = distributed.all_reduce_sum(n_samples, self.dist)
        n_tokens = distributed.all_reduce_sum(n_tokens, self.dist)
        return {"step": self.step, "loss": loss, "lr": lr, "grad_norm": float(norm), "samples": int(n_samples),
                "tokens": int(n_tokens), "seconds": dt, "samples_per_s": n_samples / dt, "tokens_per_s": n_tokens / dt,
                **extra}

    # ------------------------------------------------------------------ DPO
    def _pair_logps(self, pairs) -> torch.Tensor:
        """(2K,) summed log-probs of chosen/rejected answers, packed into one sequence."""
        samples = [s for p in pairs for s in (p.chosen, p.rejected)]
        b = collate(samples).to(self.dist.device)
        with self._autocast():
            _, per_sum, _ = packed_loss(self.model, b)
        return -per_sum

    @torch.no_grad()
    def _reference_logps(self, data, n: int, name: str) -> dict[int, tuple[float, float]]:
        """Reference log-probs of every pair, computed once with the initial (frozen) weights."""
        cache = self.out / name
        if cache.is_file():
            return {int(k): tuple(v) for k, v in json.loads(cache.read_text()).items()}
        self.model.eval()
        out = {}
        for i in range(n):
            lp = self._pair_logps([data[i]]).float().tolist()
            out[i] = (lp[0], lp[1])
        self.model.train()
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(out))
        return out

    def _dpo_step(self, bins, items):
        from .dpo import dpo_loss
        n_pairs = distributed.all_reduce_sum(sum(len(b) for b in bins), self.dist)
        total, metrics, tokens = 0.0, {}, 0
        for b, pairs in zip(bins, items):
            lp = self._pair_logps(pairs)
            ref = torch.tensor([self.ref_logps[i] for i in b], dtype=lp.dtype, device=lp.device)
            loss, m = dpo_loss(lp[0::2], lp[1::2], ref[:, 0], ref[:, 1], beta=self.cfg.beta,
                               label_smoothing=self.cfg.label_smoothing)
            (loss * len(b) * self.dist.world / n_pairs).backward()
            total += float(loss.detach()) * len(b)
            tokens += sum(p.chosen.num_tokens + p.rejected.num_tokens for p in pairs)
            for k, v in m.items():
                metrics[k] = metrics.get(k, 0.0) + float(v) * len(b) / max(n_pairs, 1)
        return distributed.all_reduce_sum(total, self.dist) / n_pairs, n_pairs, tokens, metrics

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> dict:
        """Held-out metrics with the current weights: `eval_loss` (SFT: mean loss per answer token; DPO: mean
        sigmoid loss) and, for DPO, `eval_reward_accuracy`. Every rank takes its share of the held-out records."""
        from .dpo import dpo_loss
        was_training = self.model.training
        self.model.eval()
        mine = list(range(self.dist.rank, self.eval_n, self.dist.world))
        counts = [self.eval_set.token_count(i) for i in mine]
        total, n, correct = 0.0, 0, 0.0
        media = [0.0, 0.0, 0]  # eval_media_gap: loss sums with real / blank media, and their token count
        for b in plan_bins(counts, self.cfg.pack_length):
            idx = [mine[j] for j in b]
            with self._autocast():
                if self.cfg.objective == "dpo":
                    lp = self._pair_logps([self.eval_set[i] for i in idx])
                    ref = torch.tensor([self.eval_ref_logps[i] for i in idx], dtype=lp.dtype, device=lp.device)
                    loss, m = dpo_loss(lp[0::2], lp[1::2], ref[:, 0], ref[:, 1], beta=self.cfg.beta,
                                       label_smoothing=self.cfg.label_smoothing)
                    total += float(loss) * len(idx)
                    n += len(idx)
                    correct += float(m["accuracy"]) * len(idx)
                else:
                    batch = collate([self.eval_set[i] for i in idx]).to(self.dist.device)
                    s, _, cnt = packed_loss(self.model, batch)
                    total += float(s)
                    n += int(cnt.sum())
                    if self.cfg.eval_media_gap and (batch.pixel_values is not None
                                                    or batch.pixel_values_videos is not None):
                        media[0] += float(s)
                        media[1] += float(packed_loss(self.model, blank_media(batch))[0])
                        media[2] += int(cnt.sum())
        if was_training:
            self.model.train()
        total = distributed.all_reduce_sum(total, self.dist)
        n = distributed.all_reduce_sum(n, self.dist)
        out = {"eval_loss": total / max(n, 1)}
        if self.cfg.eval_media_gap and self.cfg.objective != "dpo":
            real, blank, k = (distributed.all_reduce_sum(v, self.dist) for v in media)
            if k:
                out["eval_loss_blank_media"] = blank / k
                out["eval_media_gap"] = (blank - real) / k
                if out["eval_media_gap"] < IGNORED_GAP:
                    log.warning("held-out answers barely depend on the pictures (media gap %.4f nats/token): the "
                                "visual tokens may have collapsed; see python -m qwenvl.train.diagnose",
                                out["eval_media_gap"])
        if self.cfg.objective == "dpo":
            out["eval_reward_accuracy"] = distributed.all_reduce_sum(correct, self.dist) / max(n, 1)
        return out

    def _due_eval(self, last: bool) -> bool:
        if self.eval_set is None:
            return False
        return last or bool(self.cfg.eval_every and self.step % self.cfg.eval_every == 0)

    # ------------------------------------------------------------------ loop
    def _on_sigterm(self, *_):
        log.warning("SIGTERM: finishing this step, saving a checkpoint, then stopping")
        self._stop = True

    def fit(self, resume: bool = True) -> list[dict]:
        from tqdm import tqdm

        self.out.mkdir(parents=True, exist_ok=True)
        if resume:
            self.resume()
        old = signal.signal(signal.SIGTERM, self._on_sigterm) if self._is_main_thread() else None
        history = []
        metrics_file = (self.out / "metrics.jsonl").open("a") if self.dist.main else None
        bar = tqdm(total=self.total_steps, initial=self.step, desc=f"train {self.cfg.objective}",
                   disable=not self.dist.main, dynamic_ncols=True)
        loader = self._loader()
        t_start, first_step = self.clock(), self.step
        from tqdm.contrib.logging import logging_redirect_tqdm
        redirect = logging_redirect_tqdm() if self.dist.main else nullcontext()
        redirect.__enter__()
        try:
            while self.step < self.total_steps and self.next_bin + self.group <= self._available_bins():
                m = self.train_step(next(loader) if loader is not None else None)
                self._rebudget(t_start, first_step)
                bar.total = self.total_steps
                last = self.step >= self.total_steps or self.next_bin + self.group > self._available_bins()
                if self._due_eval(last):
                    m.update(self.evaluate())
                history.append(m)
                bar.update(1)
                post = dict(loss=f"{m['loss']:.4f}", lr=f"{m['lr']:.2e}", tok_s=f"{m['tokens_per_s']:.0f}")
                if "eval_loss" in m:
                    post["eval"] = f"{m['eval_loss']:.4f}"
                bar.set_postfix(post)
                if metrics_file:
                    metrics_file.write(json.dumps(m) + "\n")
                    metrics_file.flush()
                if self.step % self.cfg.log_every == 0:
                    log.info("step %d loss %.4f lr %.3g %.1f samples/s%s", m["step"], m["loss"], m["lr"],
                             m["samples_per_s"], f" eval_loss {m['eval_loss']:.4f}" if "eval_loss" in m else "")
                if self._stop or (self.cfg.save_every and self.step % self.cfg.save_every == 0):
                    self.save()
                if self._stop:
                    break
            if not self._stop:
                self.save()
                if self.cfg.export:
                    self.export(self.out / "export")
        finally:
            redirect.__exit__(None, None, None)
            bar.close()
            if metrics_file:
                metrics_file.close()
            if old is not None:
                signal.signal(signal.SIGTERM, old)
        return history

    def _loader(self):
        """With num_workers > 0: an iterator of this rank's prepared bins for every remaining step, made ahead of
        time by worker processes (same order and content as preparing them in the loop)."""
        if not self.cfg.num_workers:
            return None
        from torch.utils.data import DataLoader

        end = self._available_bins()
        steps = self.total_steps - self.step
        if end != float("inf"):
            steps = min(steps, int((end - self.next_bin) // self.group))
        firsts = [self.next_bin + k * self.group for k in range(max(steps, 0))]
        ds = _StepItems(self, firsts)
        return iter(DataLoader(ds, batch_size=None, shuffle=False, num_workers=self.cfg.num_workers,
                               collate_fn=_identity, prefetch_factor=2, persistent_workers=False))

    def _available_bins(self) -> float:
        return float("inf") if self.cfg.max_steps else self.stream.total  # max_steps may run past `epochs`

    @staticmethod
    def _is_main_thread() -> bool:
        import threading
        return threading.current_thread() is threading.main_thread()

    def export(self, path) -> Path:
        """An HF directory (original layout + tokenizer/processor files) readable by qwenvl.load and transformers.
        Under FSDP every rank takes part in gathering the full weights; rank 0 writes them."""
        from ..api import VLM
        from ..model.qwenvl import QwenVL

        path = Path(path)
        state = self._model_state()
        if self.dist.main:
            with torch.device("meta"):
                plain = QwenVL(self.vlm.config)
            plain.load_state_dict(state, assign=True)
            plain.tie_weights()
            VLM(plain.eval(), self.vlm.tokenizer, self.vlm.config, self.vlm.path).save(path)
            log.info("exported %s", path)
        distributed.barrier(self.dist)
        return path


def prepare_bin(data, objective: str, b: list[int]):
    """One bin's training input: a PackedBatch (SFT) or the bin's PreferencePairs (DPO)."""
    if objective == "dpo":
        return [data[i] for i in b]
    return collate([data[i] for i in b])


def _identity(x):
    return x


class _StepItems(torch.utils.data.Dataset):
    """Item k = the prepared bins of this rank for the k-th remaining optimizer step."""

    def __init__(self, trainer: Trainer, firsts: list[int]):
        self.data, self.stream, self.objective = trainer.data, trainer.stream, trainer.cfg.objective
        self.rank, self.world, self.group, self.firsts = trainer.dist.rank, trainer.dist.world, trainer.group, firsts

    def __len__(self) -> int:
        return len(self.firsts)

    def __getitem__(self, k: int) -> list:
        first = self.firsts[k]
        return [prepare_bin(self.data, self.objective, self.stream.bin(i))
                for i in range(first + self.rank, first + self.group, self.world)]


_COUNT_DATA = None


def _count_chunk(bounds: tuple[int, int]) -> list[int]:
    return [_COUNT_DATA.token_count(i) for i in range(*bounds)]


def token_counts(data, workers: int = 0) -> list[int]:
    """Every record's true token count (what packing needs); with workers > 1 and many records the headers are
    read by forked processes (same numbers, a fraction of the start-up time on large synthetic sets)."""
    n = len(data)
    if workers <= 1 or n < 2000:
        return [data.token_count(i) for i in range(n)]
    import multiprocessing as mp

    global _COUNT_DATA
    _COUNT_DATA = data
    step = max(256, n // (workers * 8))
    chunks = [(a, min(n, a + step)) for a in range(0, n, step)]
    try:
        with mp.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_count_chunk, chunks)
    finally:
        _COUNT_DATA = None
    return [c for part in parts for c in part]
