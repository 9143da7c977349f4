"""What a target verification pass over n tokens costs on this machine, in units of a 1-token decoding step.

Leviathan et al.'s formula assumes a k-token pass costs one step; on a GPU that holds up to dozens of tokens, on
a CPU it does not (on the 2-core reference machine with lmlab's kernels: 1.01 at 4 tokens, 1.14 at 8, 1.39 at
16 with a 100-token context, and 1.05 / 1.28 / 1.73 at 1,000 tokens, where attention over the context is compute
once per draft token; benchmarks/specdec_pass_cost.py). A draft tree should therefore be as large as its expected extra accepted tokens pay for
on *this* hardware (Sequoia, Chen et al. 2024, sizes trees the same way). `PassCost` measures the curve once
per model and context bucket, on a throwaway cache, so every tree decision reads a measured number.
"""

from __future__ import annotations

import bisect
import time
import weakref

import torch

from ..core.model import Transformer

WIDTHS = (1, 2, 4, 8, 12, 16, 24, 32)
CONTEXTS = (64, 512)


def _time_pass(model: Transformer, cache, ctx: int, n: int, reps: int) -> float:
    ids = torch.zeros(1, n, dtype=torch.long, device=model.device)
    best = float("inf")
    for _ in range(reps):
        cache.rollback(ctx)
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
        t = time.perf_counter()
        model(ids, cache, logits="all")
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
        best = min(best, time.perf_counter() - t)
    return best


class PassCost:
    """cost(n, L): a pass over n new tokens at context length L, divided by a 1-token step at L.

    Measured at construction (best of `reps`, widths `WIDTHS`, contexts `CONTEXTS`; ~1-2 s for a 135M model on a
    CPU), interpolated linearly in n and L, extrapolated linearly past the last context (attention grows with
    L), never below 1 for n >= 1. `table` holds the measured ratios."""

    def __init__(
        self, model: Transformer, widths: tuple[int, ...] = WIDTHS, contexts: tuple[int, ...] = CONTEXTS, reps: int = 2
    ):
        self.widths, self.contexts = (
            widths,
            tuple(c for c in contexts if c + max(widths) <= model.cfg.max_position_embeddings) or (16,),
        )
        self.table: dict[int, list[float]] = {}
        self.step_s: dict[int, float] = {}  # seconds of a 1-token step at each measured context
        with torch.inference_mode():
            for ctx in self.contexts:
                cache = model.new_cache(1, ctx + max(widths))
                model(torch.zeros(1, ctx, dtype=torch.long, device=model.device), cache, logits="none")
                _time_pass(model, cache, ctx, 1, 1)  # warm-up (packing, allocator)
                one = _time_pass(model, cache, ctx, 1, reps)
                self.step_s[ctx] = one
                self.table[ctx] = [
                    max(1.0, _time_pass(model, cache, ctx, n, reps) / one) if n > 1 else 1.0 for n in widths
                ]
                # a cost curve only rises: measurement noise must not make a wider pass look cheaper
                for i in range(1, len(widths)):
                    self.table[ctx][i] = max(self.table[ctx][i], self.table[ctx][i - 1])

    def _at(self, ctx: int, n: float) -> float:
        row, w = self.table[ctx], self.widths
        if n >= w[-1]:  # past the widest measured pass: extend the last segment's slope
            return row[-1] + (row[-1] - row[-2]) / (w[-1] - w[-2]) * (n - w[-1])
        i = max(1, bisect.bisect_left(w, n))
        return row[i - 1] + (row[i] - row[i - 1]) * (n - w[i - 1]) / (w[i] - w[i - 1])

    def __call__(self, n: float, ctx: int) -> float:
        if n <= 1:
            return 1.0
        cs = self.contexts
        if len(cs) == 1:
            return self._at(cs[0], n)
        lo, hi = (cs[0], cs[1]) if ctx <= cs[1] else (cs[-2], cs[-1])
        a, b = self._at(lo, n), self._at(hi, n)
        return max(1.0, a + (b - a) * (ctx - lo) / (hi - lo))

    def step_seconds(self, ctx: int) -> float:
        """Seconds of one 1-token step at context `ctx` (interpolated), to express draft time in steps."""
        cs = sorted(self.step_s)
        if len(cs) == 1:
            return self.step_s[cs[0]]
        lo, hi = (cs[0], cs[1]) if ctx <= cs[1] else (cs[-2], cs[-1])
        a, b = self.step_s[lo], self.step_s[hi]
        return max(min(a, b), a + (b - a) * (ctx - lo) / (hi - lo))


_CACHE: weakref.WeakKeyDictionary[Transformer, PassCost] = weakref.WeakKeyDictionary()


def pass_cost(model: Transformer) -> PassCost:
    """The model's cost curve, measured on first use and kept as long as the model lives."""
    if model not in _CACHE:
        _CACHE[model] = PassCost(model)
    return _CACHE[model]


def best_size(gains: list[list[float]], cost, ctx: int, draft: float) -> int:
    """How many draft nodes per row to verify: gains[b][n] is row b's expected accepted draft tokens with its n
    best nodes (gains[b][0] = 0), cost(n_tokens, ctx) a pass's cost in steps, draft the drafting time already
    spent in steps. Maximises emitted tokens per unit of time, sum_b (1 + gains[b][n]) / (cost(B (n + 1)) + draft):
    rows share one padded pass, so one n serves the batch."""
    B = len(gains)
    return max(
        range(min(len(g) for g in gains)), key=lambda n: sum(1 + g[n] for g in gains) / (cost(B * (n + 1), ctx) + draft)
    )
