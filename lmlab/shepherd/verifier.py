"""A verifier with capacity: a frozen pretrained LM (SmolLM2-135M by default) reads each solution, and a small
trained head on its hidden state at the end of every step gives the step score (PRM) or the outcome score (ORM).

Why a head on frozen features: fine-tuning all 135M parameters (or LoRA through 30 layers) costs a backward
pass per training token, which does not fit a few CPU minutes; the forward pass is what carries the model's
knowledge of arithmetic, and it is computed once per solution and shared by every head (PRM hard/soft, ORM,
every seed). This is trl's token-classification PRM (a score at each step separator) with the body frozen.
`layers` runs only the first k transformer blocks (the quick mode's smaller slice; the full mode runs all 30).

Features are extracted with the question prefilled once per problem and its KV cache fanned out to every
solution of that problem (`complete._fan_out`), so 64 candidates cost one question prefill, not 64.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.core.model import Transformer

from .complete import _fan_out
from .policy import prompt_text


def truncated(model: Transformer, layers: int) -> Transformer:
    """A view of `model` that runs only its first `layers` blocks (then the final norm); shares all weights."""
    if not 1 <= layers <= model.cfg.num_layers:
        raise ValueError(f"layers must lie in 1..{model.cfg.num_layers}, got {layers}")
    if layers == model.cfg.num_layers:
        return model
    m = copy.copy(model)
    m._modules = dict(model._modules)
    m.layers = nn.ModuleList(list(model.layers)[:layers])
    m.cfg = dataclasses.replace(model.cfg, num_layers=layers)
    return m


def encode(tokenizer: Any, question: str, steps: Sequence[str]) -> tuple[list[int], list[list[int]]]:
    """Prompt ids and each step line's ids; the feature of a step is read at its line's last token."""
    prompt = tokenizer(prompt_text(question), add_special_tokens=False).input_ids
    return prompt, [tokenizer(s + "\n", add_special_tokens=False).input_ids or [0] for s in steps]


@torch.inference_mode()
def step_features(
    model: Transformer, tokenizer: Any, items: Sequence[tuple[str, Sequence[str]]], max_rows: int = 32
) -> list[torch.Tensor]:
    """[n_steps, hidden] features for each (question, steps) item, in input order."""
    groups: dict[str, list[int]] = {}
    for i, (q, _) in enumerate(items):
        groups.setdefault(q, []).append(i)
    out: list[torch.Tensor | None] = [None] * len(items)
    dev = model.device
    for q, idx in groups.items():
        enc = [encode(tokenizer, q, items[i][1]) for i in idx]
        prompt = enc[0][0]
        sols = [[t for s in steps for t in s] for _, steps in enc]
        longest = max(len(s) for s in sols)
        base = model.new_cache(1, len(prompt) + longest)
        model(torch.tensor([prompt], device=dev), base, logits="none")
        for a in range(0, len(idx), max_rows):
            rows = list(range(a, min(a + max_rows, len(idx))))
            T = max(len(sols[r]) for r in rows)
            cache = _fan_out(base, [0] * len(rows), [len(prompt)] * len(rows), dev)
            ids = torch.tensor([sols[r] + [0] * (T - len(sols[r])) for r in rows], device=dev)
            h = model(ids, cache, num_tokens=[len(sols[r]) for r in rows], logits="none").last_hidden
            for j, r in enumerate(rows):
                ends = torch.tensor([len(s) for s in enc[r][1]]).cumsum(0) - 1
                out[idx[r]] = h[j, ends.to(dev)].float().cpu()
    return out  # type: ignore[return-value]


class StepHead(nn.Module):
    """Standardized features -> MLP -> one logit (P(step is good) after a sigmoid)."""

    def __init__(self, dim: int, hidden: int = 128):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std).squeeze(-1)


def train_head(
    feats: Sequence[torch.Tensor],
    targets: Sequence[Sequence[float]],
    seed: int = 0,
    steps: int = 400,
    lr: float = 2e-3,
    weight_decay: float = 0.05,
    batch_size: int = 256,
    hidden: int = 128,
) -> StepHead:
    """Fit a StepHead by cross-entropy against targets in [0, 1] (hard 0/1 or soft MC fractions); NaN = no loss
    (the ORM has a target only at the last step)."""
    X = torch.cat(list(feats))
    y = torch.tensor([t for ts in targets for t in ts], dtype=torch.float32)
    if len(X) != len(y):
        raise ValueError(f"{len(y)} targets for {len(X)} step features")
    keep = ~y.isnan()
    X, y = X[keep], y[keep]
    if len(X) == 0:
        raise ValueError("no step has a target")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = StepHead(X.shape[1], hidden)
    head.mean.copy_(X.mean(0))
    head.std.copy_(X.std(0).clamp_min(1e-4) if len(X) > 1 else torch.ones(X.shape[1]))
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in range(steps):
            b = torch.randint(0, len(X), (min(batch_size, len(X)),), generator=g)
            loss = F.binary_cross_entropy_with_logits(head(X[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return head.eval()


@torch.no_grad()
def head_scores(head: StepHead, feats: Sequence[torch.Tensor]) -> list[list[float]]:
    """P(good) at every step of every item."""
    if not feats:
        return []
    p = torch.sigmoid(head(torch.cat(list(feats))))
    return [x.tolist() for x in p.split([len(f) for f in feats])]


def orm_targets(n_steps: int, correct: bool) -> list[float]:
    """Outcome supervision: one target, the final answer's correctness, at the last step."""
    return [float("nan")] * (n_steps - 1) + [float(correct)]
