"""Shared-prefix batched completion: the hot path of Monte-Carlo step labelling and best-of-N sampling.

Math-Shepherd completes every step prefix of every solution N times. Done naively that is one prefill of
the (long) prefix per completion. Here each full sequence is prefilled once (batch of sequences), and every
step prefix is a *cut* of it: the cache rows are fanned out with `KVCache.reorder` (one row per
completion) and rolled back to the cut, so prefix i of a solution reuses the K/V computed for the whole
solution. All completions of a chunk then decode together (per-row lengths; finished rows are dropped).
Hand-written because no library offers cut-and-fan-out on a per-row KV cache; it is the reason annotation
is fast (see benchmarks/shepherd_bench.py).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch

from lmlab.core.engine import SamplingParams, decode_step, eos_ids, make_generator, sample
from lmlab.core.model import KVCache, Transformer


def _fan_out(base: KVCache, index: list[int], lengths: list[int], device: torch.device) -> KVCache:
    """A new cache whose row r copies row index[r] of `base`, truncated to lengths[r] (base is untouched)."""
    c = copy.copy(base)
    c.k, c.v, c.lengths = list(base.k), list(base.v), list(base.lengths)
    c.reorder(torch.tensor(index, dtype=torch.long, device=device))
    c.rollback(lengths)
    return c


@torch.inference_mode()
def complete_cuts(
    model: Transformer,
    tokenizer: Any,
    sequences: Sequence[Sequence[int]],
    cuts: Sequence[Sequence[int]],
    n: int,
    params: SamplingParams,
    generator: torch.Generator | None = None,
    max_rows: int = 512,
) -> list[list[list[list[int]]]]:
    """For each sequence b and each cut c in cuts[b], n sampled continuations of sequences[b][:c].

    Returns token ids out[b][j][k] (cut j, sample k), without the stop token. Stops at EOS (or
    params.stop_token_ids) or after params.max_new_tokens. `max_rows` bounds the decode batch (memory).
    """
    dev = model.device
    gen = generator if generator is not None else make_generator(params.seed, dev)
    stops = set(params.stop_token_ids if params.stop_token_ids is not None else eos_ids(model, tokenizer))
    lens = [len(s) for s in sequences]
    for b, cs in enumerate(cuts):
        if any(not 0 < c <= lens[b] for c in cs):
            raise ValueError(f"sequence {b}: cuts {list(cs)} must lie in 1..{lens[b]}")
    room = model.cfg.max_position_embeddings - max(lens)
    max_new = max(1, min(params.max_new_tokens, room))
    T = max(lens)
    base = model.new_cache(len(sequences), T + max_new + 1)
    ids = torch.tensor([list(s) + [0] * (T - len(s)) for s in sequences], device=dev)
    hidden = model(ids, base, num_tokens=lens if min(lens) < T else None, logits="none").last_hidden
    jobs = [(b, j, c) for b, cs in enumerate(cuts) for j, c in enumerate(cs) for _ in range(n)]
    out: list[list[list[list[int]]]] = [[[] for _ in cs] for cs in cuts]
    per_chunk = max(n, max_rows - max_rows % n)
    for start in range(0, len(jobs), per_chunk):
        chunk = jobs[start : start + per_chunk]
        cache = _fan_out(base, [b for b, _, _ in chunk], [c for _, _, c in chunk], dev)
        pos = torch.tensor([[b, c - 1] for b, _, c in chunk], device=dev)
        logits = model.lm_head(hidden[pos[:, 0], pos[:, 1]])  # next-token logits at each cut
        tokens = _decode(model, cache, logits, params, gen, stops, max_new)
        for (b, j, _), toks in zip(chunk, tokens):
            out[b][j].append(toks)
    return out


def _decode(
    model: Transformer,
    cache: KVCache,
    logits: torch.Tensor,
    params: SamplingParams,
    gen: torch.Generator | None,
    stops: set[int],
    max_new: int,
) -> list[list[int]]:
    """Decode every cache row until a stop token or max_new tokens; finished rows leave the batch."""
    rows = list(range(cache.batch))
    tokens: list[list[int]] = [[] for _ in rows]
    for step in range(max_new):
        nxt = sample(logits, params, gen)
        keep = []
        for j, t in enumerate(nxt.tolist()):
            if t not in stops:
                tokens[rows[j]].append(t)
                keep.append(j)
        if not keep or step == max_new - 1:
            break
        if len(keep) < len(rows):
            idx = torch.tensor(keep, device=nxt.device)
            cache.reorder(idx)
            nxt, rows = nxt[idx], [rows[j] for j in keep]
        logits = decode_step(model, cache, nxt)
    return tokens
