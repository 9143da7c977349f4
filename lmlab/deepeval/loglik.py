"""Log-likelihood scoring of the four options on lmlab's native engine (no answer parsing at all).

The four continuations share the question prefix, so the prefix is prefilled once and the four options run packed
side by side in one row on top of its KV cache (each option restarts its RoPE positions after the prefix and sees
only the prefix and itself, through the engine's draft-tree `positions` / `tree_mask`). Scoring each option as its
own full prompt (`option_logprobs_separate`, the lm-evaluation-harness way) costs four prefills; `lmlab deepeval
bench` measures the ratio in the same run (benchmarks/RESULTS.md, "deepeval")."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..core import kernels
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
    """Summed log-probabilities of each continuation after `prefix`: one prefill, then the continuations packed
    into one row on top of it (see `_shared`)."""
    return _shared(model, prefix, conts)[0]


def _groups(lens: Sequence[int], cap: int) -> list[list[int]]:
    """Consecutive options packed into groups of at most `cap` tokens (an option longer than cap stands alone)."""
    out: list[list[int]] = []
    used = cap
    for i, n in enumerate(lens):
        if out and used + n <= cap:
            out[-1].append(i)
            used += n
        else:
            out.append([i])
            used = n
    return out


def _shared(
    model: Transformer, prefix: Sequence[int], conts: Sequence[Sequence[int]]
) -> tuple[list[float], torch.Tensor]:
    """Prefill once, then pack the options side by side into one row on top of the prefix: RoPE positions restart
    at len(prefix) for each option and a block-diagonal causal `tree_mask` lets each option token see the prefix
    and its own option's earlier tokens only. That is exactly the real tokens' work (no padding, no rollback
    loop) in one more forward call per `kernels.MAX_ROWS` tokens of options; each token sees exactly the keys it
    would see in its own full prompt, so the numbers equal `option_logprobs_separate` (tests/deepeval)."""
    lens = [len(c) for c in conts]
    dev, L = model.device, len(prefix)
    cap = max(kernels.MAX_ROWS, 1)
    groups = _groups(lens, cap)
    with torch.inference_mode():
        cache = model.new_cache(1, L + max(sum(lens[i] for i in g) for g in groups))
        h0 = chunked_forward(model, torch.tensor([list(prefix)], device=dev), cache, logits="none").last_hidden
        first = torch.log_softmax(model.lm_head(h0[:, -1]).float(), -1)[0]  # next-token distribution after prefix
        hs: list[torch.Tensor] = [h0[0, :0]] * len(conts)
        for g in groups:
            if len(g) == 1 and lens[g[0]] > cap:  # one long option: plain causal pieces, then back to the prefix
                ids = torch.tensor([list(conts[g[0]])], device=dev)
                hs[g[0]] = chunked_forward(model, ids, cache, logits="none").last_hidden[0]
            else:
                ids = torch.tensor([[t for i in g for t in conts[i]]], device=dev)
                pos = torch.cat([torch.arange(lens[i], device=dev) for i in g]) + L
                seg = torch.cat([torch.full((lens[i],), j, device=dev) for j, i in enumerate(g)])
                T = ids.shape[1]
                tril = torch.ones(T, T, dtype=torch.bool, device=dev).tril()
                mask = tril & (seg[:, None] == seg[None, :])
                h = model(ids, cache, positions=pos[None], tree_mask=mask[None], logits="none").last_hidden[0]
                for i, part in zip(g, h.split([lens[i] for i in g])):
                    hs[i] = part
            cache.rollback(L)
        # one lm_head pass over every option's scored positions (all but each option's last token)
        keep = [h[: n - 1] for h, n in zip(hs, lens)]
        rows = torch.cat(keep) if keep else h0[0, :0]
        targets = torch.tensor([t for c in conts for t in c[1:]], dtype=torch.long, device=dev)
        tok_lp = rows.new_zeros(0)
        if len(targets):
            logp = torch.log_softmax(model.lm_head(rows).float(), -1)
            tok_lp = logp[torch.arange(len(targets), device=dev), targets]
        out = []
        for c, part in zip(conts, tok_lp.split([n - 1 for n in lens])):
            out.append(float(first[c[0]]) + float(part.sum()))
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
