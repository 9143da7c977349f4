"""Draft trees and the acceptance rule that makes speculative decoding lossless.

A draft is a tree rooted at the *pending* token (the last emitted token, not yet in the target's KV cache).
Node 0 is that root; node i >= 1 holds `tokens[i-1]` and hangs under `parents[i-1]`. A chain (SpS, PLD,
EAGLE when sampling) is the tree whose parents are 0, 1, 2, ... The target scores every node in one pass
with a tree attention mask; `accept` then walks down from the root.

Sampling rule (Leviathan et al. 2023, Alg. 1; Chen et al. 2023; generalised to several children as in
SpecInfer's multi-step speculative sampling): at a node with target distribution p, try each child x drawn
from q: accept with probability min(1, p(x)/q(x)); on rejection replace p by norm(max(0, p - q)) and try
the next child; if every child is rejected, sample from the current p. When all drafted tokens along the
path are accepted, the target's distribution at the last node yields the bonus token. Children of one node
must be independent draws from the same q (or a deterministic proposal, q = point mass) for this to be
exact; greedy decoding only checks that the child equals the target's argmax.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.engine import SamplingParams, probs_from_logits


@dataclass
class Draft:
    """A draft tree for one row (see module docstring); q[i] is the distribution tokens[i] was drawn
    from ([n, V]), or None when the proposal is deterministic (prompt lookup, greedy trees)."""

    tokens: list[int]
    parents: list[int]
    q: Tensor | None = None

    def __len__(self) -> int:
        return len(self.tokens)

    @staticmethod
    def chain(tokens: list[int], q: Tensor | None = None) -> Draft:
        return Draft(list(tokens), list(range(len(tokens))), q)

    def is_chain(self) -> bool:
        return self.parents == list(range(len(self.tokens)))

    def depths(self) -> list[int]:
        """Depth of every node, root included (root = 0)."""
        d = [0]
        for p in self.parents:
            d.append(d[p] + 1)
        return d

    def children(self) -> list[list[int]]:
        kids: list[list[int]] = [[] for _ in range(len(self.tokens) + 1)]
        for i, p in enumerate(self.parents):
            kids[p].append(i + 1)
        return kids


def tree_attention(drafts: list[Draft], width: int, device: torch.device | str) -> tuple[Tensor, Tensor]:
    """Visibility mask [B, width, width] (node sees its ancestors and itself; padding sees only itself)
    and depths [B, width] for a batch of drafts padded to `width` = 1 + max nodes."""
    B = len(drafts)
    mask = torch.eye(width, dtype=torch.bool).repeat(B, 1, 1)
    depth = torch.zeros(B, width, dtype=torch.long)
    for b, d in enumerate(drafts):
        mask[b, : len(d) + 1, 0] = True
        for i, p in enumerate(d.parents, start=1):
            mask[b, i] |= mask[b, p]
        depth[b, : len(d) + 1] = torch.tensor(d.depths())
    return mask.to(device), depth.to(device)


AcceptFn = Callable[..., tuple[list[int], int]]
"""accept_fn(draft, logits, params, gen, probs=None) -> (path, next token); see `accept`."""


def _uniform(gen: torch.Generator | None, device: torch.device) -> float:
    return float(torch.rand((), generator=gen, device=device))


def accept(
    draft: Draft,
    logits: Tensor,
    params: SamplingParams,
    gen: torch.Generator | None = None,
    probs: Tensor | None = None,
) -> tuple[list[int], int]:
    """Walk the tree with the target's logits [n+1, V] (row i: distribution after node i); `probs` are
    the matching sampling distributions when the caller computed them for the whole batch at once.

    Returns (accepted node indices along the path, root excluded; the next token to emit after them).
    """
    kids = draft.children()
    node, path = 0, []
    if params.temperature <= 0:
        best = logits.argmax(-1).tolist()
        while True:
            nxt = next((k for k in kids[node] if draft.tokens[k - 1] == best[node]), None)
            if nxt is None:
                return path, best[node]
            path.append(nxt)
            node = nxt
    probs = probs_from_logits(logits, params) if probs is None else probs
    while True:
        p = probs[node]
        for k in kids[node]:
            x = draft.tokens[k - 1]
            q = draft.q[k - 1] if draft.q is not None else None
            qx = float(q[x]) if q is not None else 1.0
            if _uniform(gen, logits.device) * qx < float(p[x]):
                path.append(k)
                node = k
                break
            residual = (
                (p - q).clamp_min(0) if q is not None else p.index_fill(0, torch.tensor([x], device=p.device), 0.0)
            )
            total = residual.sum()
            if total <= 0:  # p == q up to rounding: the rejection had probability ~0, p itself is the residual
                continue
            p = residual / total
        else:
            return path, int(torch.multinomial(p, 1, generator=gen))
