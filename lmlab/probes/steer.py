"""The model's own addition accuracy and steering along probe directions (the paper's intervention).

Steering follows NumProbe's `intervene_linear.py`: at every layer of a window, add alpha times the unit
probe direction to the residual stream at the last position of each forward pass - the prompt's last token
at prefill and each new token while decoding - then compare the greedy answer with the clean one. A move
"in the expected direction" means a larger answer for alpha > 0 and a smaller (non-zero) one for alpha < 0.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lmlab.core.engine import SamplingParams, generate
from lmlab.core.model import Transformer

from .data import Problem

_INT = re.compile(r"\d[\d,]*")


def parse_answer(text: str) -> int | None:
    """The model's numeric answer: the first integer after '=' on the first non-empty line, else its first integer."""
    line = next((l for l in text.splitlines() if l.strip()), "")
    tail = line.split("=", 1)[1] if "=" in line else line
    m = _INT.search(tail)
    return int(m.group().replace(",", "")) if m else None


def answers(
    model: Transformer,
    tokenizer: Any,
    token_ids: Sequence[Sequence[int]],
    max_new_tokens: int,
    hooks: dict[int, Callable[[Tensor], Tensor]] | None = None,
    batch_size: int = 32,
) -> list[int | None]:
    """Greedy answers for prompts (batched; rows of different lengths share a batch without padding waste)."""
    out: list[int | None] = []
    params = SamplingParams(max_new_tokens=max_new_tokens, stop=["\n"])
    for s in range(0, len(token_ids), batch_size):
        chunk = [list(t) for t in token_ids[s : s + batch_size]]
        kw = {"hooks": _bind(hooks, [len(t) for t in chunk])} if hooks else {}
        out += [parse_answer(g.text) for g in generate(model, tokenizer, chunk, params, **kw)]
    return out


def _bind(hooks: dict[int, Callable[[Tensor], Tensor]], lengths: list[int]) -> dict[int, Callable[[Tensor], Tensor]]:
    """Hooks that see each row's last prompt token at prefill (rows are right-padded) and the new token after."""
    last = torch.tensor(lengths) - 1

    def wrap(h: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
        def hook(x: Tensor) -> Tensor:
            rows = torch.arange(x.shape[0], device=x.device)
            cols = last.to(x.device) if x.shape[1] > 1 else torch.zeros_like(rows)
            x = x.clone()
            x[rows, cols] = h(x[rows, cols])
            return x

        return hook

    return {layer: wrap(h) for layer, h in hooks.items()}


def addition_accuracy(problems: Sequence[Problem], predicted: Sequence[int | None]) -> dict[int, float]:
    """Exact-match accuracy of the model's answers per digit count."""
    by: dict[int, list[bool]] = {}
    for p, y in zip(problems, predicted):
        by.setdefault(p.digits, []).append(y == p.sum)
    return {d: float(np.mean(v)) for d, v in sorted(by.items())}


def add_direction(
    vectors: dict[int, np.ndarray], alpha: float, dtype: torch.dtype, device: torch.device
) -> dict[int, Callable[[Tensor], Tensor]]:
    """{block index: h -> h + alpha * v} for unit vectors v (hidden-state index l is block l-1's output)."""
    return {
        l - 1: (lambda v: lambda h: h + v)(torch.tensor(alpha * u, dtype=dtype, device=device))
        for l, u in vectors.items()
    }


def moved(clean: Sequence[int | None], steered: Sequence[int | None], sign: float) -> list[bool]:
    """Per prompt: did the answer move the expected way? (invalid/absent answers count as not moved)."""
    return [
        c is not None and s is not None and s > 0 and ((s > c) if sign > 0 else (s < c)) for c, s in zip(clean, steered)
    ]


def moved_rate(clean: Sequence[int | None], steered: Sequence[int | None], sign: float) -> float:
    """Fraction of prompts whose answer moved the expected way (invalid/absent steered answers count as not moved)."""
    return sum(moved(clean, steered, sign)) / max(1, len(clean))
