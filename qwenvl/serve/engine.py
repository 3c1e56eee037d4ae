"""The engine: one thread owns the model and runs a continuous-batching scheduler.

Requests arrive already preprocessed (a one-row `Batch`). Between two decode steps the scheduler admits waiting
requests while the batch has room: those admitted together are prefilled in one left-padded forward (vision
tower included; groups of at most PREFILL_TOKENS padded tokens), each samples its first token, and their KV
cache rows are appended to the running batch (`KVCache.extend_rows`, right-aligned, with each
row's MRoPE delta shifted to match). Every decode step then advances all running rows at once; rows that finish,
time out or whose client went away leave the batch (`keep_rows`), and slots no row uses any more are dropped
(`trim_front`). Tokens go back to each request's asyncio queue through `loop.call_soon_threadsafe`.

Admission is bounded: `reserve()` counts requests from arrival until they start generating and refuses more than
`max_queue` with a 429 (Retry-After), so memory stays bounded by max_queue prompts + max_batch running rows.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from dataclasses import dataclass

import torch

from ..batch import concat
from ..generate import Generation, decode_step, new_row, prefill
from .errors import APIError

log = logging.getLogger(__name__)
PREFILL_TOKENS = 8192  # padded prompt tokens prefilled in one forward (requests arriving together)


@dataclass
class Event:
    kind: str  # "delta" | "done" | "error"
    choice: int = 0
    text: str = ""
    generation: Generation | None = None
    error: APIError | None = None


class Job:
    """One request: a one-row prompt batch answered with len(params) choices."""

    def __init__(self, batch, params, stop_ids: set[int], loop: asyncio.AbstractEventLoop, timeout: float,
                 started: float | None = None, stream: bool = True):
        """`started` (time.monotonic() at arrival) starts the timeout clock; default now. Without `stream` only
        the final events are sent (no per-token deltas)."""
        self.stream = stream
        self.batch, self.params, self.stop_ids = batch, list(params), set(stop_ids)
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.timeout = timeout
        self.deadline = (time.monotonic() if started is None else started) + timeout
        self.cancelled = False  # set by the HTTP side when the client goes away
        self.failed = False
        self.counted = False  # its cancellation was counted

    def emit(self, ev: Event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, ev)
        except RuntimeError:  # the event loop is gone (server shutting down)
            self.cancelled = True

    def fail(self, err: APIError) -> None:
        if not self.failed:
            self.failed = True
            self.emit(Event("error", error=err))

    def cancel(self) -> None:
        self.cancelled = True

    @property
    def alive(self) -> bool:
        return not (self.cancelled or self.failed)


class _Slot:
    __slots__ = ("job", "choice", "row", "last")

    def __init__(self, job, choice, row, last):
        self.job, self.choice, self.row, self.last = job, choice, row, last


class Engine:
    """Owns `vlm.model` on a background thread; thread-safe `reserve`/`release`/`submit`/`stats`/`close`."""

    def __init__(self, vlm, max_batch: int = 16, max_queue: int = 64):
        self.vlm = vlm
        self.max_batch, self.max_queue = int(max_batch), int(max_queue)
        self._cv = threading.Condition()
        self._waiting: collections.deque[Job] = collections.deque()
        self._reserved = 0
        self._slots: list[_Slot] = []
        self._cache = None
        self._delta = None
        self._stop = False
        self.counters = collections.Counter()
        self.peak_batch = 0
        self._thread = threading.Thread(target=self._run, name="qwenvl-engine", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ called from the HTTP side
    def reserve(self) -> None:
        """Claim a place for a new request, or raise the 429 that tells the client to come back later."""
        with self._cv:
            if self._stop:
                raise APIError(503, "the server is shutting down", code="shutting_down")
            if self._reserved >= self.max_queue:
                self.counters["rejected"] += 1
                retry = 1 + len(self._waiting) // max(1, self.max_batch)
                raise APIError(429, f"the server is busy ({self._reserved} requests waiting, the --max-queue limit); "
                                    f"retry in about {retry} s", code="server_busy",
                               headers={"Retry-After": str(retry)})
            self._reserved += 1

    def release(self) -> None:
        """Give back a reservation whose request never reached submit() (bad input, client gone)."""
        with self._cv:
            self._reserved -= 1

    def submit(self, job: Job) -> None:
        if len(job.params) > self.max_batch:
            raise APIError(400, f"n={len(job.params)} exceeds the server's --max-batch {self.max_batch}", param="n")
        with self._cv:
            self._waiting.append(job)
            self._cv.notify()

    def stats(self) -> dict:
        with self._cv:
            return {"running": len(self._slots), "waiting": len(self._waiting), "queued": self._reserved,
                    "max_batch": self.max_batch, "max_queue": self.max_queue, "peak_batch": self.peak_batch,
                    "cache_slots": 0 if self._cache is None else self._cache.length,
                    **{k: self.counters[k] for k in ("completed", "cancelled", "timeouts", "rejected", "errors")}}

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout=30)

    # ------------------------------------------------------------------ engine thread
    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cv:
                    while not self._stop and not self._waiting and not self._slots:
                        self._cv.wait()
                    if self._stop:
                        break
                    admit = self._take()
                try:
                    for group in self._groups(admit):
                        self._admit(group)
                    if self._slots:
                        self._step()
                except Exception as e:  # never let the engine die: fail what was running, start clean
                    log.exception("engine step failed")
                    self.counters["errors"] += 1
                    err = APIError(500, f"generation failed: {type(e).__name__}: {e}", code="engine_error")
                    for s in self._slots:
                        s.job.fail(err)
                    for job in admit:  # jobs of a group whose admission broke off
                        job.fail(err)
                    self._slots, self._cache, self._delta = [], None, None
        err = APIError(503, "the server is shutting down", code="shutting_down")
        for s in self._slots:
            s.job.fail(err)
        for job in self._waiting:
            job.fail(err)

    def _take(self) -> list[Job]:
        """Waiting jobs that fit the batch now (under the lock); cancelled and expired ones are dropped."""
        out, room, now = [], self.max_batch - len(self._slots), time.monotonic()
        while self._waiting:
            job = self._waiting[0]
            if job.alive and now <= job.deadline and len(job.params) > room:
                break
            self._waiting.popleft()
            self._reserved -= 1
            if job.cancelled:
                self.counters["cancelled"] += 1
            elif now > job.deadline:
                self._timeout(job)
            elif job.alive:
                out.append(job)
                room -= len(job.params)
        return out

    def _timeout(self, job: Job) -> None:
        if job.failed:
            return
        self.counters["timeouts"] += 1
        job.fail(APIError(504, f"the request took longer than the server's --timeout of {job.timeout:g} s; ask for "
                               "fewer tokens (max_tokens) or a smaller image/video", code="timeout",
                          headers={"x-should-retry": "false"}))

    def _groups(self, jobs: list[Job]) -> list[list[Job]]:
        """Jobs prefilled together: at most PREFILL_TOKENS padded prompt tokens per group."""
        groups: list[list[Job]] = []
        longest = 0
        for job in jobs:
            t = job.batch.input_ids.shape[1]
            if groups and max(longest, t) * (len(groups[-1]) + 1) <= PREFILL_TOKENS:
                groups[-1].append(job)
                longest = max(longest, t)
            else:
                groups.append([job])
                longest = t
        return groups

    def _admit(self, jobs: list[Job]) -> None:
        """Prefill a group of new jobs in one left-padded batch, sample each choice's first token, and append the
        rows that go on to the running batch."""
        vlm = self.vlm
        jobs = [j for j in jobs if j.alive]
        if not jobs:
            return
        batch = concat([j.batch for j in jobs], vlm.tokenizer.pad_id)
        try:
            room = min(256, max(p.max_new_tokens for j in jobs for p in j.params))
            cache, delta, logits = prefill(vlm.model, batch, room)
        except (ValueError, RuntimeError, MemoryError) as e:
            log.warning("prefill failed: %s", e)
            self.counters["errors"] += 1
            for j in jobs:
                j.fail(APIError(500, f"prefill failed: {type(e).__name__}: {e}", code="engine_error"))
            return
        rows = [(r, j, k) for r, j in enumerate(jobs) for k in range(len(j.params))]  # one row per choice
        keep, slots = [], []
        for i, (r, job, k) in enumerate(rows):
            row = new_row(vlm.model, vlm.tokenizer, batch, r, job.params[k], job.stop_ids)
            slot = _Slot(job, k, row, None)
            if self._advance(slot, logits[r]):
                keep.append(r)
                slots.append(slot)
        if not keep:
            return
        if keep != list(range(len(jobs))):  # finished rows leave, rows of n > 1 are copied
            idx = torch.tensor(keep, device=delta.device)
            cache.keep_rows(idx)
            delta = delta[idx]
            delta = delta + cache.trim_front()
        if self._cache is None:
            self._cache, self._delta = cache, delta
        else:
            s1, s2 = self._cache.extend_rows(cache, min_max_len=max(self._cache.length, cache.length) + 64)
            self._delta = torch.cat([self._delta - s1, delta - s2])
        self._slots += slots
        self.peak_batch = max(self.peak_batch, len(self._slots))

    def _advance(self, slot: _Slot, logits: torch.Tensor) -> bool:
        """Sample the slot's next token from `logits` and report it; True while the row goes on."""
        tok, text, done = slot.row.step(logits.float())
        slot.last = tok
        job = slot.job
        if done is not None:
            job.emit(Event("done", slot.choice, text, generation=done))
            self.counters["completed"] += 1
            return False
        if text and job.stream:
            job.emit(Event("delta", slot.choice, text))
        return True

    def _step(self) -> None:
        now = time.monotonic()
        keep = []
        for j, s in enumerate(self._slots):
            if s.job.cancelled:
                if not s.job.counted:
                    s.job.counted = True
                    self.counters["cancelled"] += 1
            elif s.job.failed:
                pass
            elif now > s.job.deadline:
                self._timeout(s.job)
            else:
                keep.append(j)
        self._keep(keep)
        if not self._slots:
            return
        logits = decode_step(self.vlm.model, self._cache, [s.last for s in self._slots], self._delta)
        self._keep([j for j, s in enumerate(self._slots) if self._advance(s, logits[j])])

    def _keep(self, idx: list[int]) -> None:
        if len(idx) == len(self._slots):
            return
        if not idx:
            self._slots, self._cache, self._delta = [], None, None
            return
        t = torch.tensor(idx, device=self._delta.device)
        self._cache.keep_rows(t)
        self._delta = self._delta[t]
        self._slots = [self._slots[i] for i in idx]
        self._delta = self._delta + self._cache.trim_front()
