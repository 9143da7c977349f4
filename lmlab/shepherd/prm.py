"""Process reward model (PRM) and outcome reward model (ORM) that score with the LM head.

Math-Shepherd's PRM is a causal LM: each step ends with a step tag (`ки`), and the score of step i is
P('+') / (P('+') + P('-')) read from the next-token logits *at* the i-th tag (the released
`peiyi9979/math-shepherd-mistral-7b-prm` is scored exactly so). Training puts the loss only at the tag
positions: cross-entropy between the two-way softmax over ('+', '-') and the target, which is 0/1 (hard
estimation) or the fraction of completions that reached the gold answer (soft estimation).

The ORM is the same model and code with one target at the last tag: the final answer's correctness.
`PRM.score_steps(question, steps) -> list[float]` is the per-step reward API (step-level PPO uses it).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lmlab.core.errors import LmlabError
from lmlab.core.loader import load_model, save_checkpoint
from lmlab.core.model import Transformer
from lmlab.core.paths import cache_dir
from lmlab.core.train import TrainConfig, train

from .data import STEP_TAG, StepSolution
from .policy import prompt_text


@dataclass(frozen=True)
class PRMFormat:
    """How a (question, steps) pair becomes scorer input, and which tokens carry the verdict.

    style "lmlab": the policy's prompt, then one line per step ending in the tag (the tiny PRM);
    style "math-shepherd": "<question> Step 1: <s1> ки\\nStep 2: <s2> ки" (the released PRM's format).
    """

    step_tag: str = STEP_TAG
    good: str = "+"
    bad: str = "-"
    style: str = "lmlab"

    def render(self, question: str, steps: Sequence[str]) -> str:
        if self.style == "math-shepherd":
            return f"{question} " + "\n".join(f"Step {i}: {s} {self.step_tag}" for i, s in enumerate(steps, 1))
        if self.style == "lmlab":
            return prompt_text(question) + "".join(f"{s}{self.step_tag}\n" for s in steps)
        raise LmlabError(f"unknown PRM format style {self.style!r}", hint="use 'lmlab' or 'math-shepherd'")


MATH_SHEPHERD_FORMAT = PRMFormat(style="math-shepherd")


def _last_id(tokenizer: Any, text: str, what: str) -> int:
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if not ids:
        raise LmlabError(f"{what} {text!r} encodes to no token", hint="choose a string the tokenizer knows")
    return ids[-1]


class PRM:
    """A causal LM used as a step scorer (see module docstring)."""

    def __init__(self, model: Transformer, tokenizer: Any, fmt: PRMFormat = PRMFormat()):
        self.model, self.tokenizer, self.fmt = model, tokenizer, fmt
        self.tag_id = _last_id(tokenizer, fmt.step_tag, "step tag")
        self.label_ids = [_last_id(tokenizer, fmt.good, "good label"), _last_id(tokenizer, fmt.bad, "bad label")]
        if self.label_ids[0] == self.label_ids[1]:
            raise LmlabError(f"labels {fmt.good!r} and {fmt.bad!r} map to the same token")

    @classmethod
    def load(
        cls, name: str, fmt: PRMFormat = PRMFormat(), dtype: torch.dtype = torch.float32, device: str = "cpu"
    ) -> PRM:
        lm = load_model(name, dtype=dtype, device=device)
        return cls(lm.model, lm.tokenizer, fmt)

    def encode(self, question: str, steps: Sequence[str]) -> tuple[list[int], list[int]]:
        """Token ids and the positions of the step tags (one per step)."""
        ids = self.tokenizer(self.fmt.render(question, steps), add_special_tokens=True).input_ids
        pos = [i for i, t in enumerate(ids) if t == self.tag_id]
        if len(pos) != len(steps):
            raise LmlabError(
                f"found {len(pos)} step tags for {len(steps)} steps",
                hint=f"a step's text must not contain the tag {self.fmt.step_tag!r}, and the tag must tokenize alike everywhere",
            )
        return ids, pos

    def _tag_logits(
        self, batch: list[tuple[list[int], list[int]]], model: torch.nn.Module | None = None
    ) -> list[torch.Tensor]:
        """Two-way logits ('+', '-') at every tag of every item: a list of [n_tags, 2] tensors."""
        m = model if model is not None else self.model
        T = max(len(ids) for ids, _ in batch)
        dev = self.model.device
        ids = torch.tensor([ids + [0] * (T - len(ids)) for ids, _ in batch], device=dev)
        hidden = m(
            ids, self.model.new_cache(len(batch), T), logits="none"
        ).last_hidden  # right padding is invisible (causal)
        rows = torch.tensor([b for b, (_, pos) in enumerate(batch) for _ in pos], device=dev)
        cols = torch.tensor([p for _, pos in batch for p in pos], device=dev)
        head = self.model.lm_head.weight[self.label_ids]  # [2, H]: only two vocab rows are needed
        logits = hidden[rows, cols] @ head.T.to(hidden.dtype)
        return list(logits.float().split([len(pos) for _, pos in batch]))

    @torch.inference_mode()
    def score_batch(self, items: Sequence[tuple[str, Sequence[str]]], batch_size: int = 32) -> list[list[float]]:
        """P('+') at each step of each (question, steps) item."""
        enc = [self.encode(q, s) for q, s in items]
        order = sorted(range(len(enc)), key=lambda i: len(enc[i][0]))  # length-sorted batches waste less padding
        scores: dict[int, list[float]] = {}
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            for j, lg in zip(idx, self._tag_logits([enc[j] for j in idx])):
                scores[j] = lg.softmax(-1)[:, 0].tolist()
        return [scores[i] for i in range(len(enc))]

    def score_steps(self, question: str, steps: Sequence[str]) -> list[float]:
        """Per-step rewards in [0, 1]; the PRM's public API (best-of-N uses min, step-level PPO uses each)."""
        return self.score_batch([(question, steps)])[0]


# ------------------------------------------------------------------------------------------ training
@dataclass
class PRMTrainConfig:
    mode: str = "prm"  # "prm": a target at every step tag; "orm": one target (final correctness) at the last tag
    targets: str = "hard"  # "hard" (0/1: any completion correct) or "soft" (fraction correct); prm only
    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("prm", "orm") or self.targets not in ("hard", "soft"):
            raise LmlabError(f"mode={self.mode!r} targets={self.targets!r}", hint="mode is prm|orm, targets hard|soft")


def step_targets(sol: StepSolution, cfg: PRMTrainConfig) -> list[float]:
    """Per-tag targets (NaN = no loss at that tag). sol.labels are soft MC estimates in [0, 1]."""
    if cfg.mode == "orm":
        correct = float(sol.answer is not None and sol.answer == sol.gold)
        return [float("nan")] * (len(sol.steps) - 1) + [correct]
    if sol.labels is None:
        raise LmlabError(f"solution {sol.id!r} has no step labels", hint="annotate it first (lmlab shepherd annotate)")
    return [float(x > 0) for x in sol.labels] if cfg.targets == "hard" else [float(x) for x in sol.labels]


def tag_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the ('+', '-') softmax against target P('+'); NaN targets are skipped."""
    keep = ~target.isnan()
    logp = F.log_softmax(logits[keep], dim=-1)
    q = target[keep]
    return -(q * logp[:, 0] + (1 - q) * logp[:, 1]).mean()


def _batches(data: list[Any], bs: int, seed: int) -> Iterator[list[Any]]:
    """Endless random minibatches of (encoded item, targets)."""
    rng = random.Random(seed)
    while True:
        yield rng.sample(data, min(bs, len(data)))


def train_reward_model(
    init: str,
    solutions: list[StepSolution],
    cfg: PRMTrainConfig,
    out: Path | None = None,
    fmt: PRMFormat = PRMFormat(),
    device: str = "cpu",
) -> Path:
    """Fine-tune a causal LM (usually the policy) into a PRM or ORM; cached by (init, data, config)."""
    if not solutions:
        raise LmlabError("no training solutions", hint="annotate some problems first")
    h = hashlib.sha256(
        json.dumps(
            [init, asdict(cfg), asdict(fmt), [(s.question, s.steps, s.labels, s.answer, s.gold) for s in solutions]]
        ).encode()
    ).hexdigest()[:12]
    out = out or cache_dir("shepherd") / f"{cfg.mode}-{h}"
    if (out / "config.json").exists():
        return out
    lm = load_model(init, dtype=torch.float32, device=device, cache=False)  # a private copy: training edits it
    prm = PRM(lm.model, lm.tokenizer, fmt)
    data = [(prm.encode(s.question, s.steps), step_targets(s, cfg)) for s in solutions]

    def loss_fn(model: torch.nn.Module, batch: list[Any]) -> torch.Tensor:
        logits = torch.cat(prm._tag_logits([enc for enc, _ in batch], model))
        target = torch.tensor([t for _, ts in batch for t in ts], device=logits.device)
        return tag_loss(logits, target)

    tc = TrainConfig(steps=cfg.steps, lr=cfg.lr, warmup=min(30, cfg.steps // 10), seed=cfg.seed, weight_decay=0.0)
    train(lm.model, _batches(data, cfg.batch_size, cfg.seed), loss_fn, tc)
    save_checkpoint(lm.model, lm.tokenizer, out)
    (out / "lmlab_reward.json").write_text(
        json.dumps(
            {
                "init": init,
                "config": asdict(cfg),
                "format": asdict(fmt),
                "examples": len(solutions),
                "final_loss": tc.history[-1]["loss"],
            },
            indent=2,
        )
    )
    return out
