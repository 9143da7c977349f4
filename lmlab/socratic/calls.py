"""Every LLM call of a Socratic run: through the SQLite call cache, under budgets the controller enforces.

Budgets count every call the controller asks for, whether the cache answers it or the model does, so a
resumed run takes exactly the path the uninterrupted run would have (same tree) while repeating no model
call. A call slot is reserved under a lock before the request goes out, so concurrent sub-problems never
exceed `max_calls`; `max_tokens` and `max_seconds` are checked before each call (calls already in flight
finish, so tokens can overshoot by at most the in-flight calls' length).
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

from ..core.engine import SamplingParams
from ..core.llmcache import Entry, LLMCache, Request


class BudgetExhausted(Exception):
    """The controller's named stop: `reason` is max_calls | max_tokens | max_seconds | human_stop."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


@dataclass
class Budget:
    max_calls: int | None = None
    max_tokens: int | None = None  # prompt + completion tokens
    max_seconds: float | None = None


@dataclass
class CallResult:
    text: str
    finish_reason: str
    usage: dict[str, int]
    cached: bool


class Caller:
    def __init__(
        self,
        backend: Any,
        cache: LLMCache | None = None,
        params: SamplingParams | None = None,
        budget: Budget | None = None,
    ):
        self.backend, self.cache = backend, cache
        self.params = params or SamplingParams(max_new_tokens=256)
        self.budget = budget or Budget()
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.calls = 0  # asked for (cached or not)
        self.model_calls = 0  # answered by the backend
        self.tokens = 0

    @property
    def concurrent(self) -> bool:
        """HTTP backends answer requests in parallel; the local engine runs one at a time."""
        return getattr(self.backend, "concurrency", 1) > 1

    def _reserve(self) -> None:
        b = self.budget
        with self.lock:
            if b.max_calls is not None and self.calls >= b.max_calls:
                raise BudgetExhausted("max_calls", f"{self.calls} calls used of {b.max_calls}")
            if b.max_tokens is not None and self.tokens >= b.max_tokens:
                raise BudgetExhausted("max_tokens", f"{self.tokens} tokens used of {b.max_tokens}")
            elapsed = time.monotonic() - self.started
            if b.max_seconds is not None and elapsed >= b.max_seconds:
                raise BudgetExhausted("max_seconds", f"{elapsed:.1f} s elapsed of {b.max_seconds}")
            self.calls += 1

    def call(
        self,
        messages: list[dict[str, str]],
        tag: str = "",
        max_new_tokens: int | None = None,
        sample: int = 0,
        reserved: bool = False,
        temperature: float | None = None,
    ) -> CallResult:
        """One call; `reserved`: the caller already took the budget slot (`_reserve`)."""
        if not reserved:
            self._reserve()
        params = self.params if max_new_tokens is None else replace(self.params, max_new_tokens=max_new_tokens)
        if temperature is not None:
            params = replace(params, temperature=temperature)
        if sample and params.seed is not None:
            params = replace(params, seed=params.seed + sample)
        req = Request(self.backend.name, messages, asdict(params), sample=sample, tag=tag)
        hit = self.cache.get(req.key) if self.cache is not None else None
        cached = hit is not None
        if hit is None:
            c = self.backend.complete([messages], params)[0]
            hit = Entry(c.text, c.finish_reason, c.prompt_tokens, c.completion_tokens)
            if self.cache is not None:
                self.cache.put(req, hit)
        usage = {"prompt_tokens": hit.prompt_tokens, "completion_tokens": hit.completion_tokens}
        with self.lock:
            self.tokens += hit.prompt_tokens + hit.completion_tokens
            self.model_calls += not cached
        return CallResult(hit.text, hit.finish_reason, usage, cached)

    def summary(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "model_calls": self.model_calls,
            "cached_calls": self.calls - self.model_calls,
            "tokens": self.tokens,
            "seconds": round(time.monotonic() - self.started, 3),
        }
