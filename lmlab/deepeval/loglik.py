"""Log-likelihood scoring of the four options on lmlab's native engine (no answer parsing at all).

The four continuations share the question prefix, so the prefix is prefilled once, its KV cache is fanned out to
four rows with `KVCache.reorder`, and the four short continuations run as one [4, T] block on top. Scoring each
option as its own full prompt (`option_logprobs_separate`, the lm-evaluation-harness way) costs four prefills;
`lmlab deepeval bench` measures the ratio in the same run (benchmarks/RESULTS.md, "deepeval")."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..core.engine import chunked_forward, encode_chat
from ..core.model import Transformer
from .data import LETTERS


@dataclass
class OptionScores:
    logprob: list[float]  # summed log p(continuation tokens | prefix), one per option
    tokens: list[int]  # continuation lengths in tokens
    letter_logprob: list[float]  # log p(letter | prefix) for A-D as the next token (max over "A" / " A")

    @property
    def mean(self) -> list[float]:
        return [lp / max(n, 1) for lp, n in zip(self.logprob, self.tokens)]

    def pick(self, how: str = "mean") -> str:
        vals = {"mean": self.mean, "sum": self.logprob, "letter": self.letter_logprob}[how]
        return LETTERS[max(range(len(vals)), key=lambda i: vals[i])]


def _gather(logp: torch.Tensor, ids: Sequence[int]) -> float:
    return float(logp[torch.arange(len(ids)), torch.tensor(list(ids))].sum())


def option_logprobs_shared(model: Transformer, prefix: Sequence[int], conts: Sequence[Sequence[int]]) -> list[float]:
    """Summed log-probabilities of each continuation after `prefix`: one prefill, cache fanned out to len(conts)
    rows, one batched forward over the (right-padded) continuations."""
    return _shared(model, prefix, conts)[0]


PAD_WASTE = 1.25  # fan out to a padded [n, T] block while padding adds under this much work, else row by row


def _shared(
    model: Transformer, prefix: Sequence[int], conts: Sequence[Sequence[int]]
) -> tuple[list[float], torch.Tensor]:
    """Prefill once. Options of similar length: fan the cache out to n rows (`KVCache.reorder`) and run the
    right-padded [n, T] block. Very unequal lengths (deep-semantics options run 30-100 tokens): run each option
    on the one-row cache and `rollback` to the prefix after it, which does exactly the real tokens' work (the
    padded block would do up to 1.6x that on the release). Both give the same numbers (tests/deepeval)."""
    n, lens = len(conts), [len(c) for c in conts]
    T = max(lens)
    dev = model.device
    with torch.inference_mode():
        cache = model.new_cache(1, len(prefix) + T)
        h0 = chunked_forward(model, torch.tensor([list(prefix)], device=dev), cache, logits="none").last_hidden
        first = torch.log_softmax(model.lm_head(h0[:, -1]).float(), -1)[0]  # next-token distribution after prefix
        if n * T <= PAD_WASTE * sum(lens):
            cache.reorder(torch.zeros(n, dtype=torch.long, device=dev))
            ids = torch.tensor([list(c) + [0] * (T - len(c)) for c in conts], device=dev)
            # Right padding needs no num_tokens: a pad sits after its row's real tokens, so causally no real token
            # sees it, and the block stays uniform, so chunked_forward runs it in kernel-sized pieces.
            hs = list(chunked_forward(model, ids, cache, logits="none").last_hidden)  # n x [T, H]
        else:
            hs = []
            for c in conts:
                hs.append(
                    chunked_forward(model, torch.tensor([list(c)], device=dev), cache, logits="none").last_hidden[0]
                )
                cache.rollback(len(prefix))
        out = []
        for c, h in zip(conts, hs):
            lp = float(first[c[0]])
            if len(c) > 1:
                lp += _gather(torch.log_softmax(model.lm_head(h[: len(c) - 1]).float(), -1), c[1:])
            out.append(lp)
    return out, first


def option_logprobs_separate(model: Transformer, prefix: Sequence[int], conts: Sequence[Sequence[int]]) -> list[float]:
    """The same quantities, each option scored as its own full prompt (prefix + continuation): the baseline."""
    dev = model.device
    out = []
    with torch.inference_mode():
        for c in conts:
            full = list(prefix) + list(c)
            cache = model.new_cache(1, len(full))
            h = chunked_forward(model, torch.tensor([full], device=dev), cache, logits="none").last_hidden
            logp = torch.log_softmax(model.lm_head(h[0, len(prefix) - 1 : len(full) - 1]).float(), -1)
            out.append(_gather(logp, c))
    return out


class LoglikScorer:
    """Scores the options of a prompt with a native model: prefix = the chat-templated prompt (or raw text),
    continuation = the option text. Also reads the next-token probability of each letter."""

    def __init__(self, lm, chat: bool = True):
        self.model, self.tok, self.chat = lm.model, lm.tokenizer, chat
        self.letter_ids = [
            sorted(
                {
                    self.tok(x, add_special_tokens=False).input_ids[0],
                    self.tok(" " + x, add_special_tokens=False).input_ids[-1],
                }
            )
            for x in LETTERS
        ]

    def encode(self, prompt: str, options: Sequence[str]) -> tuple[list[int], list[list[int]]]:
        if self.chat:
            prefix = encode_chat(self.tok, [{"role": "user", "content": prompt}])
            conts = [self.tok(o.strip(), add_special_tokens=False).input_ids for o in options]
        else:
            prefix = self.tok(prompt, add_special_tokens=False).input_ids
            conts = [self.tok(" " + o.strip(), add_special_tokens=False).input_ids for o in options]
        conts = [c or [self.tok.eos_token_id] for c in conts]  # an empty option still gets a score
        return prefix, conts

    def score(self, prompt: str, options: Sequence[str], shared: bool = True) -> OptionScores:
        prefix, conts = self.encode(prompt, options)
        if shared:
            lps, first = _shared(self.model, prefix, conts)
        else:
            lps = option_logprobs_separate(self.model, prefix, conts)
            with torch.inference_mode():
                cache = self.model.new_cache(1, len(prefix))
                h = chunked_forward(self.model, torch.tensor([prefix], device=self.model.device), cache, logits="none")
                first = torch.log_softmax(self.model.lm_head(h.last_hidden[:, -1]).float(), -1)[0]
        letters = [max(float(first[i]) for i in ids) for ids in self.letter_ids]
        return OptionScores(lps, [len(c) for c in conts], letters)
