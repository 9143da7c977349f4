"""Continuous batching over the native engine: sequences join and leave the running batch between decode steps.

The design follows vLLM's and llama.cpp's servers, sized for one CPU model: one engine thread owns a slot cache of
`max_batch` rows (the `model.KVCache` layout, rows 0..n-1 running). Each iteration of its loop

1. drops cancelled and timed-out rows (a client hung up, a time limit passed): at most one step late;
2. prefills waiting prompts in pieces of at most `prefill_chunk` tokens in all (into a private one-row cache, the
   way a lone request is prefilled), so a long prompt delays the running rows by one piece per step, not by its
   whole length;
3. moves rows whose prefill is complete into the slot cache (one row's K/V copied) and runs ONE decode step for
   every running row; a finished row frees its slot at once (the last row moves into it).

Each row keeps its own sampling parameters, stop strings, grammar matcher and `torch.Generator`, so a seeded row
draws the same numbers whatever its batch mates. On lmlab's CPU kernels (`kernels.enabled()`) every row's logits
are bit-identical to a lone request's, so greedy and seeded outputs are exactly a lone request's; on other paths
(torch's GEMM and SDPA with a mask) they agree to rounding, which tests/core/test_serve.py measures and states.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .engine import (
    LogitsProcessor,
    SamplingParams,
    StreamEvent,
    _RowText,
    chunked_forward,
    eos_ids,
    make_generator,
    sample,
)
from .model import KVCache, Transformer


def _row(cache: KVCache, j: int) -> KVCache:
    """Row j of a cache as a one-row KVCache (views)."""
    v = KVCache.__new__(KVCache)
    v.k, v.v = [t[j : j + 1] for t in cache.k], [t[j : j + 1] for t in cache.v]
    v.lengths, v.capacity, v.batch, v.key_bias = [cache.lengths[j]], cache.capacity, 1, None
    return v


class QueueFull(Exception):
    """The waiting queue is at its bound: the server answers 429 with Retry-After."""

    def __init__(self, waiting: int, limit: int, retry_after_s: float):
        super().__init__(f"server busy: {waiting} sequences waiting (limit {limit}); retry in {retry_after_s:.0f} s")
        self.retry_after_s = retry_after_s


class QueueTimeout(Exception):
    """A sequence waited in the queue past its deadline without being admitted."""


Sink = Callable[[int, "StreamEvent | Exception"], None]
"""sink(choice, event): called on the engine thread for every event of a request (it must be thread-safe)."""


@dataclass
class Sequence:
    """One generated sequence (one choice of a request)."""

    prompt: list[int]
    params: SamplingParams
    max_new: int
    choice: int
    sink: Sink
    processor: LogitsProcessor | None = None
    deadline: float | None = None  # time.monotonic() after which the row is cut (finish_reason "length")
    group: object = None  # sequences of one request (n > 1) share their prompt's prefill
    cancelled: bool = False
    # engine-thread state
    text: _RowText | None = None
    generator: torch.Generator | None = None
    prefilled: int = 0
    cache: KVCache | None = None  # private one-row cache while prefilling
    logits: Tensor | None = None  # [1, V] after the prefill
    pending: int = 0  # the token to feed at the next decode step
    generated: int = 0
    arrived: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None


class Request:
    """Handle of one submitted request: `cancel()` stops all its sequences within one engine step."""

    def __init__(self, seqs: list[Sequence]):
        self.seqs = seqs

    def cancel(self) -> None:
        for s in self.seqs:
            s.cancelled = True


@dataclass
class Stats:
    steps: int = 0
    prefill_pieces: int = 0
    admitted: int = 0
    finished: int = 0
    cancelled: int = 0
    timed_out: int = 0
    generated_tokens: int = 0
    prompt_tokens: int = 0
    max_running: int = 0


class Scheduler:
    """The engine thread and its slot cache. `submit` is thread-safe; events go to each sequence's sink."""

    def __init__(
        self,
        model: Transformer,
        tokenizer: Any,
        max_batch: int = 16,
        max_queue: int = 64,
        prefill_chunk: int = 256,
        on_step: Callable[[int, float], None] | None = None,
        on_finish: Callable[[Sequence, str], None] | None = None,
    ):
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.max_queue, self.prefill_chunk = max_batch, max_queue, max(1, prefill_chunk)
        self.on_step, self.on_finish = on_step, on_finish
        self.ctx = model.cfg.max_position_embeddings
        self.eos = set(eos_ids(model, tokenizer))
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.prefilling: list[Sequence] = []
        self.running: list[Sequence] = []  # running[i] owns slot i of self.cache
        self.cache: KVCache | None = None
        self.stats = Stats()
        self.step_s = 0.05  # running mean of a decode step (Retry-After estimates)
        self._cv = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="lmlab-scheduler", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ client side (any thread)
    def submit(self, seqs: list[Sequence]) -> Request:
        with self._cv:
            if len(self.waiting) + len(seqs) > self.max_queue:
                raise QueueFull(len(self.waiting), self.max_queue, self.retry_after())
            self.waiting.extend(seqs)
            self._cv.notify()
        return Request(seqs)

    def retry_after(self) -> float:
        """Seconds until a queue's worth of sequences has likely passed through (at least 1)."""
        return max(1.0, round(self.step_s * 32 * (1 + len(self.waiting) / self.max_batch)))

    @property
    def busy(self) -> int:
        return len(self.waiting) + len(self.prefilling) + len(self.running)

    def close(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout)

    # ------------------------------------------------------------------ engine thread
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stop and not (self.waiting or self.prefilling or self.running):
                    self._cv.wait(0.5)
                if self._stop:
                    return
            try:
                with torch.inference_mode():
                    self._iteration()
            except Exception as e:  # a bug or an out-of-memory: fail the affected rows, keep serving
                for s in self.prefilling + self.running:
                    s.sink(s.choice, e)
                self.prefilling, self.running, self.cache = [], [], None

    def _iteration(self) -> None:
        now = time.monotonic()
        self._reap(now)
        self._admit()
        self._prefill()
        self._decode()

    def _finish(self, s: Sequence, reason: str) -> None:
        self.stats.finished += 1
        if self.on_finish is not None:
            self.on_finish(s, reason)

    def _reap(self, now: float) -> None:
        """Free the slots of cancelled and timed-out rows (before this step's compute)."""
        for s in list(self.running):
            if s.cancelled or (s.deadline is not None and now > s.deadline):
                if not s.cancelled:
                    self.stats.timed_out += 1
                    s.sink(s.choice, StreamEvent(s.choice, None, s.text.flush(), "length"))
                    self._finish(s, "timeout")
                else:
                    self.stats.cancelled += 1
                    self._finish(s, "cancelled")
                self._free(self.running.index(s))
        for s in list(self.prefilling):
            if s.cancelled or (s.deadline is not None and now > s.deadline):
                self.prefilling.remove(s)
                self.stats.cancelled += s.cancelled
                self.stats.timed_out += not s.cancelled
                if not s.cancelled:
                    s.sink(s.choice, StreamEvent(s.choice, None, "", "length"))
                self._finish(s, "cancelled" if s.cancelled else "timeout")
        with self._cv:  # queued rows too: a hung-up or expired request must not hold a queue place until a slot frees
            gone = [s for s in self.waiting if s.cancelled or (s.deadline is not None and now > s.deadline)]
            for s in gone:
                self.waiting.remove(s)
        for s in gone:
            if s.cancelled:
                self.stats.cancelled += 1
                self._finish(s, "cancelled")
            else:
                self.stats.timed_out += 1
                s.sink(s.choice, QueueTimeout("the request waited in the queue past its time limit"))
                self._finish(s, "timeout")

    def _admit(self) -> None:
        with self._cv:
            while self.waiting and len(self.running) + len(self.prefilling) < self.max_batch:
                s = self.waiting.popleft()  # cancelled / expired rows were dropped by _reap just before
                s.text = _RowText(self.tokenizer, s.params.stop)
                seed = s.params.seed
                s.generator = make_generator(None if seed is None else seed + s.choice, self.model.device)
                self.prefilling.append(s)
                self.stats.admitted += 1
                self.stats.prompt_tokens += len(s.prompt)

    def _prefill(self) -> None:
        """At most `prefill_chunk` prompt tokens this iteration, oldest first; sequences of one request share one.

        Fresh prompts of the same length that fit the budget go in one batched pass (`chunked_forward`: on the kernels
        each row's bits are a lone prefill's); other prompts go one row at a time, a long one in pieces."""
        budget = self.prefill_chunk
        fresh, groups = [], set()
        for s in self.prefilling:  # not started, and one per request (siblings then share its prefill)
            if s.cache is None and not self._sibling_busy(s) and (s.group is None or id(s.group) not in groups):
                fresh.append(s)
                groups.add(id(s.group))
        if len(fresh) >= 2:
            n = len(fresh[0].prompt)
            same = [s for s in fresh if len(s.prompt) == n][: max(1, budget // n)]
            if len(same) >= 2:
                cache = self.model.new_cache(len(same), n + 1)
                ids = torch.tensor([s.prompt for s in same], device=self.model.device)
                out = chunked_forward(self.model, ids, cache)
                self.stats.prefill_pieces += 1
                budget -= n * len(same)
                for j, s in enumerate(same):
                    s.cache, s.logits, s.prefilled = _row(cache, j), out.logits[j : j + 1], n
        for s in list(self.prefilling):
            if budget <= 0:
                break
            if s.logits is not None:
                continue
            if s.cache is None:
                if self._sibling_busy(s):
                    continue  # a sibling (same request, same prompt) is prefilling it: wait for its cache
                s.cache = self.model.new_cache(1, len(s.prompt) + 1)
            piece = s.prompt[s.prefilled : s.prefilled + budget]
            out = chunked_forward(self.model, torch.tensor([piece], device=self.model.device), s.cache)
            self.stats.prefill_pieces += 1
            s.prefilled += len(piece)
            budget -= len(piece)
            if s.prefilled == len(s.prompt):
                s.logits = out.logits
        for s in list(self.prefilling):
            if s.logits is None:
                continue
            self.prefilling.remove(s)
            for o in self.prefilling:  # siblings take the prompt's K/V and first logits (read-only, then copied)
                if o.group is s.group and o.group is not None and o.cache is None:
                    o.cache, o.logits, o.prefilled = s.cache, s.logits.clone(), s.prefilled
            self._start(s)

    def _sibling_busy(self, s: Sequence) -> bool:
        return s.group is not None and any(o.group is s.group and o.cache is not None for o in self.prefilling)

    def _start(self, s: Sequence) -> None:
        """First token from the prefill logits; the row takes a slot unless it is already finished."""
        assert s.logits is not None and s.cache is not None
        t = self._sample(s, s.logits)
        s.first_token_at = time.monotonic()
        if self._advance(s, t):
            slot = len(self.running)
            self._ensure(len(s.prompt) + 1)
            assert self.cache is not None
            n = len(s.prompt)
            for i in range(len(self.cache.k)):
                self.cache.k[i][slot, :, :n] = s.cache.k[i][0, :, :n]
                self.cache.v[i][slot, :, :n] = s.cache.v[i][0, :, :n]
            self.cache.lengths[slot] = n
            self.running.append(s)
            self.stats.max_running = max(self.stats.max_running, len(self.running))
        s.cache, s.logits = None, None

    def _ensure(self, need: int) -> None:
        """A slot cache with `max_batch` rows and at least `need` slots (grows by doubling as rows lengthen, keeps
        the rows): memory follows the longest running row, not the context window."""
        if self.cache is not None and self.cache.capacity >= need:
            return
        cap = 128
        while cap < need:
            cap *= 2
        cap = min(cap, self.ctx + 1)
        new = self.model.new_cache(self.max_batch, cap)
        if self.cache is not None:
            n, old = len(self.running), self.cache.capacity
            for i in range(len(new.k)):
                new.k[i][:n, :, :old] = self.cache.k[i][:n]
                new.v[i][:n, :, :old] = self.cache.v[i][:n]
            new.lengths[:n] = self.cache.lengths[:n]
        self.cache = new

    def _free(self, slot: int) -> None:
        """Give slot `slot` back: the last running row moves into it (its K/V copied), so rows stay 0..n-1."""
        assert self.cache is not None
        last = len(self.running) - 1
        if slot != last:
            n = self.cache.lengths[last]
            for i in range(len(self.cache.k)):
                self.cache.k[i][slot, :, :n] = self.cache.k[i][last, :, :n]
                self.cache.v[i][slot, :, :n] = self.cache.v[i][last, :, :n]
            self.cache.lengths[slot] = n
            self.running[slot] = self.running[last]
        self.running.pop()
        self.cache.lengths[last] = 0

    def _view(self, n: int) -> KVCache:
        """Rows 0..n-1 of the slot cache as a KVCache (views: the forward pass writes into the slot cache)."""
        assert self.cache is not None
        v = KVCache.__new__(KVCache)
        v.k = [t[:n] for t in self.cache.k]
        v.v = [t[:n] for t in self.cache.v]
        v.lengths, v.capacity, v.batch, v.key_bias = self.cache.lengths[:n], self.cache.capacity, n, None
        return v

    def _decode(self) -> None:
        n = len(self.running)
        if n == 0:
            return
        t0 = time.perf_counter()
        assert self.cache is not None
        self._ensure(max(self.cache.lengths[:n]) + 1)
        view = self._view(n)
        tokens = torch.tensor([[s.pending] for s in self.running], device=self.model.device)
        logits = self.model(tokens, view).logits
        assert self.cache is not None
        self.cache.lengths[:n] = view.lengths
        done = []
        for j, s in enumerate(self.running):
            if not self._advance(s, self._sample(s, logits[j : j + 1])):
                done.append(j)
        for j in reversed(done):  # highest slot first: a moved row is never one still to be freed
            self._free(j)
        dt = time.perf_counter() - t0
        self.step_s = 0.9 * self.step_s + 0.1 * dt
        self.stats.steps += 1
        if self.on_step is not None:
            self.on_step(n, dt)

    def _sample(self, s: Sequence, logits: Tensor) -> int:
        if s.processor is not None:
            assert s.text is not None
            logits = s.processor([0], [s.text.ids], logits)
        return int(sample(logits, s.params, s.generator)[0])

    def _advance(self, s: Sequence, t: int) -> bool:
        """Emit token `t` of row `s` (the same rules as engine.stream_generate); False once the row is finished."""
        assert s.text is not None
        p = s.params
        stops = set() if p.ignore_eos else self.eos if p.stop_token_ids is None else set(p.stop_token_ids)
        if t in stops:
            s.sink(s.choice, StreamEvent(s.choice, None, s.text.flush(), "stop"))
            self._finish(s, "stop")
            return False
        delta = s.text.push(t)
        s.generated += 1
        self.stats.generated_tokens += 1
        if s.text.stopped:
            s.sink(s.choice, StreamEvent(s.choice, t, delta + s.text.flush(), "stop"))
            self._finish(s, "stop")
            return False
        if s.generated >= s.max_new:
            s.sink(s.choice, StreamEvent(s.choice, t, delta + s.text.flush(), "length"))
            self._finish(s, "length")
            return False
        s.sink(s.choice, StreamEvent(s.choice, t, delta))
        s.pending = t
        return True
