"""Micro-batching for the local engine: many controllers (threads) call `complete([one prompt])`; a worker
gathers the requests that arrive within `window` seconds (same sampling parameters) into one batched
`generate`. On the 135M model on 2 CPU cores one batch of 8 decodes ~3.6x the tokens per second of 8 single
calls (measured 10.9 vs 3.0 tok/s under load 12, torch path), which is what makes the reproduction fit.

With greedy decoding each row's reply does not depend on its batch-mates (up to float rounding on the
torch path); sampled rows share one generator, so their text depends on the batch (the call cache keeps a
rerun consistent).

Identical requests (same prompt, parameters and seed) while one is queued or running share its result
instead of being decoded twice: in the reproduction the methods that share a prefix (direct and
direct+check draw the same samples; Socratic with and without a checker share the decomposition, the
sub-problems and the integration) would otherwise compute those calls twice when they run concurrently."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import asdict
from typing import Any

from ..core.engine import SamplingParams
from .calls import BudgetExhausted


class MicroBatcher:
    def __init__(self, backend: Any, max_batch: int = 8, window: float = 0.05, deadline: float | None = None):
        """`deadline` (time.monotonic()): requests still queued after it fail with BudgetExhausted."""
        self.backend, self.max_batch, self.window, self.deadline = backend, max_batch, window, deadline
        self.name = backend.name
        self.concurrency = max_batch  # tells controllers they may call from several threads
        self.q: queue.Queue = queue.Queue()
        self.batches: list[int] = []  # sizes, for the report
        self.profile: list[dict[str, Any]] = []  # per batch: rows, prompt / completion tokens, seconds, CPU seconds
        self.shared = 0  # requests answered by an identical one in flight
        self.pending: dict[str, Future] = {}
        self.lock = threading.Lock()
        threading.Thread(target=self._worker, daemon=True).start()

    def complete(self, prompts: Sequence[Any], params: SamplingParams, json_schema: dict | None = None) -> list:
        futs = []
        for p in prompts:
            key = json.dumps([p, asdict(params), json_schema], sort_keys=True)
            with self.lock:
                f = self.pending.get(key)
                if f is not None:
                    self.shared += 1
                else:
                    f = self.pending[key] = Future()
                    f.add_done_callback(lambda _, k=key: self._forget(k))
                    self.q.put((p, params, json_schema, f))
            futs.append(f)
        return [f.result() for f in futs]

    def _forget(self, key: str) -> None:
        with self.lock:
            self.pending.pop(key, None)

    def stream(self, prompt: Any, params: SamplingParams):
        yield from self.backend.stream(prompt, params)

    @staticmethod
    def _key(params: SamplingParams, schema: dict | None) -> str:
        """Requests that may share a batch: equal parameters, except that the seed is ignored for greedy
        decoding (it has no effect) and a sampled batch uses its first row's seed."""
        d = asdict(params)
        d.pop("seed")
        return json.dumps([d, schema], sort_keys=True)

    def _worker(self) -> None:
        held: list = []  # requests that did not fit the last batch, oldest first
        while True:
            first = held.pop(0) if held else self.q.get()
            key = self._key(first[1], first[2])
            batch = [first]
            for item in list(held):
                if len(batch) < self.max_batch and self._key(item[1], item[2]) == key:
                    batch.append(item)
                    held.remove(item)
            end = time.monotonic() + self.window  # wait at most `window` after the first request
            try:
                while len(batch) < self.max_batch and (left := end - time.monotonic()) > 0:
                    item = self.q.get(timeout=left)
                    if self._key(item[1], item[2]) == key:
                        batch.append(item)
                    else:
                        held.append(item)
            except queue.Empty:
                pass
            if self.deadline is not None and time.monotonic() > self.deadline:
                for b in batch:
                    b[3].set_exception(BudgetExhausted("max_seconds", "the time guard passed while queued"))
                continue
            self.batches.append(len(batch))
            try:
                t0, c0 = time.perf_counter(), time.thread_time()
                outs = self.backend.complete([b[0] for b in batch], first[1], first[2])
                self.profile.append(
                    {
                        "rows": len(batch),
                        "prompt_tokens": sum(getattr(o, "prompt_tokens", 0) for o in outs),
                        "max_prompt_tokens": max((getattr(o, "prompt_tokens", 0) for o in outs), default=0),
                        "completion_tokens": sum(getattr(o, "completion_tokens", 0) for o in outs),
                        "max_completion_tokens": max((getattr(o, "completion_tokens", 0) for o in outs), default=0),
                        "seconds": time.perf_counter() - t0,
                        "cpu_seconds": time.thread_time() - c0,
                    }
                )
                for b, o in zip(batch, outs):
                    b[3].set_result(o)
            except BaseException as e:  # hand the failure to every waiting caller
                for b in batch:
                    b[3].set_exception(e)
