"""Prompts, label scoring, the masked self-prediction score (MSP), accuracy and the validation indicator.

Everything takes a batch of candidate weight vectors W [N, k] and evaluates them as rows over one shared
demonstration cache (`attention.NativeLM` / `attention.HFLM`), so a search step is one batched forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from lmlab.core.errors import LmlabError

from .attention import RowState, WeightPlan
from .tasks import Example, Template

MSP_MODES = ("span", "last_token")
LABEL_MODES = ("sum", "first", "single")


class LM(Protocol):
    kind: str
    tokenizer: Any

    def prefix(self, ids: list[int]) -> Any: ...

    def logits_at(
        self, prefix: Any, rows: list[list[int]], picks: list[list[int]], st: RowState, columns: list[int] | None = None
    ) -> list[Tensor]: ...


def _encode(tok: Any, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def _adds_bos(tok: Any) -> bool:
    bos = getattr(tok, "bos_token_id", None)
    return bos is not None and list(tok("a")["input_ids"])[:1] == [bos]


def label_ids(tok: Any, template: Template, mode: str = "sum") -> list[list[int]]:
    """Token ids of each label's answer string (e.g. ' positive'), checked: every word must be representable in the
    vocabulary (no unknown token), distinct, and one token in mode 'single'; mode 'first' (the official code) scores
    the first token only, so first tokens must differ."""
    if mode not in LABEL_MODES:
        raise LmlabError(f"unknown label mode {mode!r}", hint=f"use one of {', '.join(LABEL_MODES)}")
    unk = getattr(tok, "unk_token_id", None)
    out = []
    for word, ans in zip(template.labels, template.answers()):
        ids = _encode(tok, ans)
        if not ids or (unk is not None and unk in ids and getattr(tok, "unk_token", None) not in ans):
            raise LmlabError(
                f"label word {word!r} is not in the model's vocabulary (it tokenizes to the unknown token)",
                hint="choose label words the tokenizer knows",
            )
        if mode == "single" and len(ids) != 1:
            pieces = [tok.decode([i]) for i in ids]
            raise LmlabError(
                f"label word {word!r} is not a single token in the vocabulary ({pieces})",
                hint="use --label-mode sum to score multi-token words by summed log-probability",
            )
        out.append(ids[:1] if mode == "first" else ids)
    if len({tuple(x) for x in out}) != len(out):
        raise LmlabError(
            f"label words {list(template.labels)} are not distinguishable after tokenization ({out})",
            hint="use --label-mode sum or different label words",
        )
    return out


@dataclass
class Prompt:
    """The demonstration block: token ids (the tokenizer's BOS if it adds one, then each demonstration tokenized
    on its own, as the official code does) and each demonstration's token span."""

    ids: list[int]
    spans: list[tuple[int, int]]
    demos: list[Example]


def build_prompt(tok: Any, template: Template, demos: list[Example]) -> Prompt:
    ids = [tok.bos_token_id] if _adds_bos(tok) else []
    spans = []
    for d in demos:
        piece = _encode(tok, template.demo(d))
        spans.append((len(ids), len(ids) + len(piece)))
        ids += piece
    return Prompt(ids, spans, list(demos))


def length_batches(lens: list[int], max_rows: int, key: list | None = None, slack: float = 0.125, small: int = 256):
    """Row indices in batches of similar length (sorted; identical rows adjacent, so a batch can compute them once
    where the weights do not act yet). A batch closes at max_rows rows, or when the next row would pad it beyond
    `slack` of its real tokens once it holds >= `small` tokens: right-padding is wasted work on every layer."""
    order = sorted(range(len(lens)), key=lambda i: (lens[i], key[i]) if key is not None else lens[i])
    out: list[list[int]] = []
    cur: list[int] = []
    real = 0
    for i in order:
        n, top = len(cur) + 1, lens[i]
        if cur and (n > max_rows or (n * top > (1 + slack) * (real + top) and len(cur) * lens[cur[-1]] >= small)):
            out.append(cur)
            cur, real = [], 0
        cur.append(i)
        real += top
    if cur:
        out.append(cur)
    return out


class Scorer:
    """Label log-probabilities of queries under candidate weights, on one shared demonstration cache."""

    def __init__(
        self,
        lm: LM,
        template: Template,
        prompt: Prompt,
        placement: str = "skm",
        layers: list[int] | None = None,
        heads: list[int] | None = None,
        label_mode: str = "sum",
        batch_rows: int = 64,
        cache: Any = None,
    ):
        self.lm, self.template, self.prompt = lm, template, prompt
        self.plan = WeightPlan(prompt.spans, placement, layers, heads)
        self.labels = label_ids(lm.tokenizer, template, label_mode)
        self.batch_rows = batch_rows
        self.cache = lm.prefix(prompt.ids) if cache is None else cache  # shared across placements
        self._q: dict[int, list[int]] = {}

    @property
    def k(self) -> int:
        return len(self.prompt.spans)

    def query_ids(self, ex: Example) -> list[int]:
        key = id(ex)
        if key not in self._q:
            self._q[key] = _encode(self.lm.tokenizer, self.template.query(ex))
        return self._q[key]

    def label_logprobs(self, queries: list[list[int]], W: Tensor | None, visible: Tensor | None = None) -> Tensor:
        """[R, C] log p(label | prompt, query) normalised over the label set; W [R, k] per-row weights (None:
        uniform ICL), visible [R, P] prefix key visibility (None: all). Multi-token words: summed log-probability."""
        single = all(len(x) == 1 for x in self.labels)
        C = len(self.labels)
        extra = 0 if single else max(len(x) for x in self.labels)
        step = self.batch_rows if single else max(1, self.batch_rows // C)
        out, order = [], []
        for sel in length_batches([len(q) + extra for q in queries], step, key=queries):
            order += sel
            qs = [queries[i] for i in sel]
            n = len(qs)
            w = None if W is None else W[sel]
            vis = None if visible is None else visible[sel]
            if single:
                rows, picks = qs, [[len(q) - 1] for q in qs]
            else:
                rows = [q + lab for q in qs for lab in self.labels]
                picks = [list(range(len(q) - 1, len(q) + len(lab) - 1)) for q in qs for lab in self.labels]
                w = None if w is None else w.repeat_interleave(C, 0)
                vis = None if vis is None else vis.repeat_interleave(C, 0)
            st = RowState(self.plan, w, vis)
            if single:  # log-softmax over the label words needs only their logits (the vocabulary's norm cancels)
                lg = self.lm.logits_at(self.cache, rows, picks, st, columns=[lab[0] for lab in self.labels])
                lp = torch.cat(lg)
            else:
                lg = self.lm.logits_at(self.cache, rows, picks, st)
                lp = torch.stack(
                    [
                        x.log_softmax(-1).gather(1, torch.tensor(lab)[:, None]).sum()
                        for x, lab in zip(lg, self.labels * n)
                    ]
                ).view(n, C)
            out.append(lp.log_softmax(-1))
        res = torch.cat(out)
        return res[torch.tensor(order).argsort()]

    # -------------------------------------------------------------------------------------- indicators
    def accuracy(self, items: list[Example], W: Tensor | None = None) -> Tensor:
        """[N] accuracy on `items` for each candidate row of W [N, k] (None: uniform ICL -> [1])."""
        qs = [self.query_ids(e) for e in items]
        gold = torch.tensor([e.label for e in items])
        N, M = (1 if W is None else W.shape[0]), len(items)
        lp = self.label_logprobs(qs * N, None if W is None else W.repeat_interleave(M, 0))
        return (lp.argmax(-1).view(N, M) == gold[None]).float().mean(1)

    def predictions(self, items: list[Example], w: Tensor | None = None) -> Tensor:
        qs = [self.query_ids(e) for e in items]
        W = None if w is None else w.view(1, -1).expand(len(items), -1)
        return self.label_logprobs(qs, W).argmax(-1)

    def msp(self, W: Tensor, mode: str = "span") -> Tensor:
        """Negative masked self-prediction score per candidate (lower is better): mean over demonstrations j of
        -log p_w(y_j | prompt with demonstration j masked, x_j). mode 'span' (paper): every token of demonstration j
        is hidden from the query; 'last_token' (the released code): only its last token (the ' \\n ' piece)."""
        if mode not in MSP_MODES:
            raise LmlabError(f"unknown MSP mode {mode!r}", hint=f"use one of {', '.join(MSP_MODES)}")
        N, k, P = W.shape[0], self.k, len(self.prompt.ids)
        vis = torch.ones(k, P, dtype=torch.bool)
        for j, (b, e) in enumerate(self.prompt.spans):
            vis[j, b:e] = False if mode == "span" else vis[j, b:e]
            if mode == "last_token":
                vis[j, e - 1] = False
        qs = [self.query_ids(d) for d in self.prompt.demos]
        gold = torch.tensor([d.label for d in self.prompt.demos])
        lp = self.label_logprobs(qs * N, W.repeat_interleave(k, 0), vis.repeat(N, 1))
        nll = -lp.gather(1, gold.repeat(N)[:, None]).view(N, k)
        return nll.mean(1)
