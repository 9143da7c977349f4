"""The speculative decoding loop: draft, verify all drafted tokens in one target pass, accept, repeat.

Batched: every row keeps its own KV length, accepts its own number of tokens per pass, and leaves the
batch when it finishes (transformers' assisted generation is limited to batch size 1). Events and stop
handling are exactly those of `lmlab.core.engine.stream_generate`, so callers cannot tell the two apart,
except by speed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from ..core.engine import (
    Generation,
    SamplingParams,
    StreamEvent,
    _RowText,
    check_context,
    collect,
    eos_ids,
    make_generator,
    prefill_forward,
    probs_from_logits,
    sample,
)
from ..core.model import Transformer
from .eagle import target_features
from .verify import AcceptFn, Draft, accept, tree_attention


class Drafter(Protocol):
    """What a drafting method provides. `ctx[b]` is row b's committed tokens, prompt included, ending with
    the pending token (emitted, not yet in the target's cache)."""

    name: str
    max_nodes: int  # most draft nodes one proposal may hold (sizes the KV caches)

    def begin(self, prompts: list[list[int]], hidden: Tensor, capacity: int) -> None:
        """After the target's prefill; `hidden` is its final normed hidden state [B, T, H] (right-padded), or,
        for a drafter with a non-empty `feature_layers` attribute, those hidden states concatenated."""

    def propose(self, ctx: list[list[int]], params: SamplingParams, gen: torch.Generator | None) -> list[Draft]: ...

    def update(self, ctx: list[list[int]], drafts: list[Draft], paths: list[list[int]], hidden: Tensor) -> None:
        """After verification: `ctx` already holds the newly committed tokens, `paths` the accepted nodes,
        `hidden` the target's features (as in `begin`) over [root, nodes...] [B, 1+n, ...]."""

    def keep(self, index: Tensor) -> None:
        """Rows `index` stay in the batch (finished rows leave)."""


@dataclass
class SpecStats:
    """Counters for Spec-Bench's metrics and for Leviathan et al.'s speedup formula."""

    passes: int = 0  # target verification passes (row-passes when batched)
    accepted: int = 0  # draft tokens accepted
    proposed: int = 0  # draft tokens (tree nodes) sent to the target
    tries: int = 0  # positions along accepted paths where a draft token was judged (alpha's denominator)
    depth: int = 0  # sum over passes of the deepest draft level (gamma)
    new_tokens: int = 0
    draft_s: float = 0.0
    verify_s: float = 0.0
    total_s: float = 0.0
    rounds: int = 0  # batched rounds (one draft + one verify call each)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mean_accepted_tokens(self) -> float:
        """Tokens emitted per target pass (accepted drafts + the target's own token), Spec-Bench's tau."""
        return (self.accepted + self.passes) / max(1, self.passes)

    @property
    def acceptance_rate(self) -> float:
        """Per-position acceptance alpha: accepted / judged positions (geometric-model MLE)."""
        return self.accepted / max(1, self.tries)

    @property
    def mean_gamma(self) -> float:
        return self.depth / max(1, self.passes)

    def merge(self, o: SpecStats) -> None:
        for k in (
            "passes",
            "accepted",
            "proposed",
            "tries",
            "depth",
            "new_tokens",
            "draft_s",
            "verify_s",
            "total_s",
            "rounds",
        ):
            setattr(self, k, getattr(self, k) + getattr(o, k))


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class _Emitter:
    """Per-row stop handling identical to `engine.stream_generate` (EOS, stop strings, length)."""

    def __init__(self, tokenizer: Any, params: SamplingParams, stops: set[int], max_new: int, B: int):
        self.texts = [_RowText(tokenizer, params.stop) for _ in range(B)]
        self.count = [0] * B
        self.stops, self.max_new = stops, max_new
        self.ids: list[list[int]] = [[] for _ in range(B)]

    def emit(self, r: int, tokens: list[int]) -> tuple[list[StreamEvent], bool]:
        """Events for row r's new tokens, and whether the row finished (later tokens are dropped)."""
        evs = []
        for t in tokens:
            self.count[r] += 1
            if t in self.stops:
                evs.append(StreamEvent(r, None, self.texts[r].flush(), "stop"))
                return evs, True
            self.ids[r].append(t)
            delta = self.texts[r].push(t)
            if self.texts[r].stopped:
                evs.append(StreamEvent(r, t, delta + self.texts[r].flush(), "stop"))
                return evs, True
            if self.count[r] >= self.max_new:
                evs.append(StreamEvent(r, t, delta + self.texts[r].flush(), "length"))
                return evs, True
            evs.append(StreamEvent(r, t, delta))
        return evs, False


def spec_stream(
    model: Transformer,
    tokenizer: Any,
    drafter: Drafter,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams | None = None,
    accept_fn: AcceptFn = accept,
    stats: SpecStats | None = None,
) -> Iterator[StreamEvent]:
    """Speculative version of `engine.stream_generate` (same events); `stats` collects counters if given."""
    p = params or SamplingParams()
    st = stats if stats is not None else SpecStats()
    dev = model.device
    max_new = check_context(model, prompts, p.max_new_tokens)
    stops = set(
        [] if p.ignore_eos else (p.stop_token_ids if p.stop_token_ids is not None else eos_ids(model, tokenizer))
    )
    gen = make_generator(p.seed, dev)
    B = len(prompts)
    out = _Emitter(tokenizer, p, stops, max_new, B)
    t_start = _now(dev)
    with torch.inference_mode():
        capacity = max(len(x) for x in prompts) + max_new + drafter.max_nodes + 2
        cache = model.new_cache(B, capacity)
        layers = tuple(getattr(drafter, "feature_layers", ()))
        fo = prefill_forward(model, cache, prompts, **({"output_hidden_states": True} if layers else {}))
        first = sample(fo.logits, p, gen).tolist()
        ctx = [list(x) + [t] for x, t in zip(prompts, first)]
        rows = list(range(B))
        keep = []
        for j, r in enumerate(rows):
            evs, done = out.emit(r, [first[j]])
            yield from evs
            if not done:
                keep.append(j)
        if getattr(
            drafter, "uses_target_cache", False
        ):  # a self-draft reads (and temporarily extends) the target's cache
            drafter.cache = cache
        drafter.begin([list(x) for x in prompts], target_features(fo, layers), capacity)
        while keep:
            if len(keep) < len(rows):
                idx = torch.tensor(keep, device=dev)
                cache.reorder(idx)
                drafter.keep(idx)
                rows, ctx = [rows[j] for j in keep], [ctx[j] for j in keep]
            t0 = _now(dev)
            drafts = drafter.propose(ctx, p, gen)
            t1 = _now(dev)
            width = 1 + max(len(d) for d in drafts)
            ids = torch.tensor(
                [[c[-1]] + d.tokens + [0] * (width - 1 - len(d)) for c, d in zip(ctx, drafts)], device=dev
            )
            L = list(cache.lengths)
            if all(d.is_chain() and len(d) == width - 1 for d in drafts):
                vo = model(ids, cache, logits="all", output_hidden_states=bool(layers))  # plain causal chains: no mask
            else:
                mask, depth = tree_attention(drafts, width, dev)
                pos = torch.tensor(L, device=dev)[:, None] + depth
                vo = model(ids, cache, positions=pos, tree_mask=mask, logits="all", output_hidden_states=bool(layers))
            paths, nexts = [], []
            probs = probs_from_logits(vo.logits, p) if p.temperature > 0 else None  # one batched call, not one per row
            for b, d in enumerate(drafts):
                path, nxt = accept_fn(
                    d, vo.logits[b, : len(d) + 1], p, gen, probs=None if probs is None else probs[b, : len(d) + 1]
                )
                paths.append(path)
                nexts.append(nxt)
                if path != list(range(1, len(path) + 1)):  # a tree branch: move its K/V next to the root
                    cache.gather_slots(b, torch.tensor(path, device=dev) + L[b], L[b] + 1)
            cache.rollback([L[b] + 1 + len(paths[b]) for b in range(len(drafts))])
            t2 = _now(dev)
            st.draft_s += t1 - t0
            st.verify_s += t2 - t1
            st.rounds += 1
            new = []
            for b, d in enumerate(drafts):
                toks = [d.tokens[i - 1] for i in paths[b]] + [nexts[b]]
                new.append(toks)
                ctx[b] = ctx[b] + toks
                st.passes += 1
                st.accepted += len(paths[b])
                st.proposed += len(d)
                st.depth += max(d.depths())
                end = paths[b][-1] if paths[b] else 0
                st.tries += len(paths[b]) + (1 if d.children()[end] else 0)  # + the rejected level, if any
            drafter.update(ctx, drafts, paths, target_features(vo, layers))
            keep = []
            for j, r in enumerate(rows):
                evs, done = out.emit(r, new[j])
                yield from evs
                if not done:
                    keep.append(j)
    st.new_tokens += sum(out.count)
    st.total_s += _now(dev) - t_start


def spec_generate(
    model: Transformer,
    tokenizer: Any,
    drafter: Drafter,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams | None = None,
    accept_fn: AcceptFn = accept,
    stats: SpecStats | None = None,
) -> list[Generation]:
    """Speculative version of `engine.generate` (same results under greedy decoding, same distribution when sampling)."""
    return collect(spec_stream(model, tokenizer, drafter, prompts, params, accept_fn, stats), prompts)
