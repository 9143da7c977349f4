"""Weight search over a discretized space (arXiv:2310.08309, Sec. 3.3): beam search, coordinate by coordinate in
demonstration order, as the official `beam_search`; exhaustive search over space^k as an oracle for small k.

`score` maps candidate weight vectors W [N, k] to scores [N] (lower is better, e.g. `Scorer.msp`); every step's
candidates go to it as one batch, so they run as rows of one forward over the shared demonstration cache.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lmlab.core.errors import LmlabError

SPACE = (0.9, 1.0, 1.1)
Score = Callable[[Tensor], Tensor]


@dataclass
class SearchResult:
    weights: list[float]
    score: float
    evaluations: int  # distinct weight vectors scored
    trace: list[dict] = field(default_factory=list)


def _scored(score: Score, cands: list[tuple[float, ...]], memo: dict[tuple[float, ...], float]) -> None:
    todo = [c for c in dict.fromkeys(cands) if c not in memo]
    if todo:
        vals = score(torch.tensor(todo, dtype=torch.float32))
        memo.update(zip(todo, vals.tolist()))


def beam_search(score: Score, k: int, space: Sequence[float] = SPACE, beam: int = 1) -> SearchResult:
    """beams = [1]*k; for i in 0..k-1: every beam with w_i set to each value of the space; keep the `beam` best.
    Beam 1 is greedy coordinate descent. Identical vectors are scored once (the official code re-scores them)."""
    if beam < 1 or not space:
        raise LmlabError("beam width must be >= 1 and the weight space non-empty")
    memo: dict[tuple[float, ...], float] = {}
    beams = [tuple([1.0] * k)]
    trace = []
    for i in range(k):
        cands = list(dict.fromkeys(b[:i] + (x,) + b[i + 1 :] for b in beams for x in space))
        _scored(score, cands, memo)
        cands.sort(key=lambda c: memo[c])
        beams = cands[:beam]
        trace.append({"step": i, "best": list(beams[0]), "score": memo[beams[0]]})
    if k == 0:
        _scored(score, beams, memo)
    return SearchResult(list(beams[0]), memo[beams[0]], len(memo), trace)


def exhaustive_search(
    score: Score, k: int, space: Sequence[float] = SPACE, chunk: int = 64, limit: int = 20000
) -> SearchResult:
    """The best vector of space^k (the oracle beam search approximates); refuses more than `limit` vectors."""
    n = len(space) ** k
    if n > limit:
        raise LmlabError(
            f"exhaustive search over {len(space)}^{k} = {n} vectors",
            hint=f"use beam search, or k with |space|^k <= {limit}",
        )
    memo: dict[tuple[float, ...], float] = {}
    allv = list(itertools.product(space, repeat=k))
    for s in range(0, n, chunk):
        _scored(score, allv[s : s + chunk], memo)
    best = min(allv, key=lambda c: memo[c])
    return SearchResult(list(best), memo[best], len(memo))


def random_weights(k: int, n: int, seed: int, space: Sequence[float] = SPACE) -> Tensor:
    """n weight vectors drawn uniformly from space^k (seeded)."""
    rng = random.Random(seed)
    return torch.tensor([[rng.choice(space) for _ in range(k)] for _ in range(n)], dtype=torch.float32)
