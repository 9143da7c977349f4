"""Chain drafters: prompt lookup (n-gram match in the context) and a small draft LM (SpS), both with an
adaptive draft length chosen from the measured acceptance and cost."""

from __future__ import annotations

import time

import torch
from torch import Tensor

from ..core import kernels
from ..core.engine import SamplingParams, probs_from_logits
from ..core.model import Linear, Transformer, set_weight_dtype
from ..core.quant import quantize_int8, use_group_packs
from .eagle import subset_head, subset_logits
from .verify import Draft


class AdaptiveLength:
    """Draft length gamma that maximises the expected speedup of Leviathan et al. (2023, eq. 1),
    (1 - a^(g+1)) / ((1 - a) (g c + 1 + beta g)), with alpha an EMA of the per-position acceptance, c the
    measured draft/target cost ratio and beta the marginal cost of one more verified token (decode is
    memory-bound, so beta is small but not zero on a CPU). Fixed-gamma decoding is gamma_min == gamma_max."""

    def __init__(
        self,
        gamma_max: int = 8,
        gamma_min: int = 1,
        alpha: float = 0.6,
        c: float = 0.0,
        beta: float = 0.03,
        ema: float = 0.8,
    ):
        self.gmax, self.gmin = gamma_max, gamma_min
        self.alpha, self.c, self.beta, self.ema = alpha, c, beta, ema

    def gamma(self) -> int:
        a = min(self.alpha, 0.99)

        def gain(g: int) -> float:
            return (1 - a ** (g + 1)) / (1 - a) / (g * self.c + 1 + self.beta * g)

        return max(range(self.gmin, self.gmax + 1), key=gain)

    def observe(self, accepted: int, tries: int, c: float | None = None) -> None:
        if tries:
            self.alpha = self.ema * self.alpha + (1 - self.ema) * accepted / tries
        if c is not None:
            self.c = self.ema * self.c + (1 - self.ema) * c


def _tries(draft: Draft, path: list[int]) -> int:
    return len(path) + (1 if len(path) < len(draft) else 0)


class PromptLookup:
    """Prompt lookup decoding (Saxena 2023): find the latest earlier occurrence of the context's last
    n-gram (longest n first) and propose the tokens that followed it. Costs no model call.

    min_ngram=2: a lone repeated token is a weak cue, and where a k-token target pass costs 1.4 steps (CPU,
    fp32) a wrong draft is expensive: on 8 dev prompts 1-gram matches gave 1.08x, 2-gram matches 1.25x."""

    name = "pld"

    def __init__(self, max_ngram: int = 3, min_ngram: int = 2, gamma_max: int = 10):
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.length = AdaptiveLength(gamma_max=gamma_max, c=0.0)
        self.max_nodes = gamma_max

    def begin(self, prompts: list[list[int]], hidden: Tensor, capacity: int) -> None:
        pass

    def lookup(self, ctx: list[int], k: int) -> list[int]:
        """The k tokens after the latest earlier match of ctx's last n-gram ([] when nothing matches)."""
        L = len(ctx)
        for n in range(min(self.max_ngram, L - 1), self.min_ngram - 1, -1):
            tail = ctx[L - n :]
            for s in range(L - n - 1, -1, -1):  # latest match first; the match may not be the tail itself
                if ctx[s : s + n] == tail:
                    return ctx[s + n : s + n + k]
        return []

    def propose(self, ctx: list[list[int]], params: SamplingParams, gen: torch.Generator | None) -> list[Draft]:
        k = self.length.gamma()
        return [Draft.chain(self.lookup(c, k)) for c in ctx]

    def update(self, ctx: list[list[int]], drafts: list[Draft], paths: list[list[int]], hidden: Tensor) -> None:
        for d, path in zip(drafts, paths):
            if len(d):
                self.length.observe(len(path), _tries(d, path))

    def keep(self, index: Tensor) -> None:
        pass


class DraftModel:
    """Draft-model speculative sampling (Leviathan et al. 2023; Chen et al. 2023) with a small LM that
    shares the target's tokenizer. The draft keeps its own per-row KV cache and rolls it back to the
    accepted prefix after each verification."""

    name = "sps"

    def __init__(
        self,
        draft: Transformer,
        gamma_max: int = 8,
        adaptive: bool = True,
        gamma: int = 4,
        vocab: Tensor | None = None,
        stream_bf16: bool = True,
        shared_cache: bool = False,
    ):
        self.model = draft
        # shared_cache: the draft is the target with other numbers (`quantized_self_draft`) and reads the target's own
        # KV cache: no prefill of its own, and exact keys/values for the whole committed context. It writes its draft
        # tokens' K/V into the slots the verification pass overwrites next, and hands the lengths back unchanged.
        self.uses_target_cache = shared_cache
        if stream_bf16:  # a draft's numbers only steer acceptance: stream its weights as bf16 (half the bytes)
            set_weight_dtype(draft, torch.bfloat16, exact=False)
        self.vocab = vocab  # token subset the draft may propose (FR-Spec style; None: full vocabulary)
        self.rows = None if vocab is None else subset_head(draft.lm_head, vocab)
        self.length = AdaptiveLength(gamma_max=gamma_max) if adaptive else AdaptiveLength(gamma, gamma)
        self.max_nodes = gamma_max if adaptive else gamma

    def begin(self, prompts: list[list[int]], hidden: Tensor, capacity: int) -> None:
        if not self.uses_target_cache:
            self.cache = self.model.new_cache(len(prompts), capacity)  # (else spec_stream set self.cache: the target's)

    def propose(self, ctx: list[list[int]], params: SamplingParams, gen: torch.Generator | None) -> list[Draft]:
        committed = list(self.cache.lengths)
        try:
            return self._propose(ctx, params, gen)
        finally:
            if self.uses_target_cache:
                self.cache.rollback(committed)  # the target's cache: its lengths are the target's business

    def _propose(self, ctx: list[list[int]], params: SamplingParams, gen: torch.Generator | None) -> list[Draft]:
        g = self.length.gamma()
        dev = self.model.device
        feed = [c[n:] for c, n in zip(ctx, self.cache.lengths)]  # tokens the draft has not seen yet
        T = max(len(f) for f in feed)
        ids = torch.tensor([f + [0] * (T - len(f)) for f in feed], device=dev)
        t0 = time.perf_counter()
        logits = self._logits(ids, [len(f) for f in feed])
        toks, qs = [], []
        t1 = time.perf_counter()
        for j in range(g):
            if params.temperature > 0:
                q = probs_from_logits(logits, params)
                t = torch.multinomial(q, 1, generator=gen).squeeze(-1)
                qs.append(q)
            else:
                t = logits.argmax(-1)
            toks.append(t)
            if j < g - 1:
                logits = self._logits(t[:, None], None)
        self._step_s = (time.perf_counter() - t1) / max(1, g - 1) if g > 1 else time.perf_counter() - t0
        self._t_verify0 = time.perf_counter()
        tok = torch.stack(toks, 1).tolist()
        q = torch.stack(qs, 1) if qs else None
        return [Draft.chain(tok[b], None if q is None else q[b]) for b in range(len(ctx))]

    def _logits(self, ids: Tensor, num_tokens: list[int] | None) -> Tensor:
        """Next-token logits [B, V]; with a token subset only those LM-head rows are computed (the 49k-row
        LM head is most of a shallow draft's cost on a CPU), the rest are -inf."""
        if self.vocab is None:
            return self.model(ids, self.cache, num_tokens=num_tokens).logits
        h = self.model(ids, self.cache, num_tokens=num_tokens, logits="none").last_hidden
        n = (
            torch.tensor(num_tokens, device=h.device) - 1
            if num_tokens
            else torch.full((h.shape[0],), h.shape[1] - 1, device=h.device)
        )
        last = h[torch.arange(h.shape[0], device=h.device), n]
        full = torch.full((h.shape[0], self.model.cfg.vocab_size), float("-inf"), dtype=torch.float32, device=h.device)
        full[:, self.vocab] = subset_logits(last, self.rows).float()
        return full

    def update(self, ctx: list[list[int]], drafts: list[Draft], paths: list[list[int]], hidden: Tensor) -> None:
        verify_s = time.perf_counter() - self._t_verify0
        c = self._step_s / max(verify_s, 1e-9)
        for d, path in zip(drafts, paths):
            self.length.observe(len(path), _tries(d, path), c)
        if not self.uses_target_cache:  # the draft cache holds the old context plus d1..d(g-1); keep what was accepted
            self.cache.rollback([min(n, len(c) - 1) for n, c in zip(self.cache.lengths, ctx)])

    def keep(self, index: Tensor) -> None:
        if not self.uses_target_cache:  # (the target's cache is reordered by spec_stream)
            self.cache.reorder(index)


def quantized_self_draft(target: Transformer) -> Transformer:
    """The target itself as its draft, with every projection streamed as 4-bit group-quantized weights (GGUF's Q4_1
    scheme, `kernels.pack_q4`) and the LM head as 8-bit ones (Q8_0, `kernels.pack_q8`): no training, the target's
    tokenizer by construction, and no second copy of the weights (the draft shares the target's tensors; only its
    packed copies are new, ~0.6 byte per weight). The 4-bit layers take 8-bit activations (`act8`: the fast kernel).
    Its numbers differ from the target's (quantization, summation order), so it only proposes; the target verifies. Where the checkpoint itself came from such a file (the
    embedded SmolLM2: Q4_1 projections, a Q8_0 embedding) the codes are the file's own and the draft disagrees only
    where rounding flips a near-tie.

    Where lmlab's kernels are off (LMLAB_KERNELS=0, no compiler), the draft is the target with weight-only int8
    layers on torch's `_weight_int8pack_mm` (bf16 compute, `core.quant`): any CPU has it, its draft is not the 4-bit
    one, and verification keeps the output the target's own either way."""
    with torch.device("meta"):
        draft = Transformer(target.cfg)
    # a `--quant q4|q8` target's projections hold codes and no float weights: the draft shares the codes
    coded = {n: m.codes for n, m in target.named_modules() if isinstance(m, Linear) and m.codes is not None}
    for n, m in draft.named_modules():
        if n in coded:
            m.register_parameter("weight", None)
            m.codes = coded[n]
    draft.load_state_dict(target.state_dict(), assign=True)
    draft.reset_rope()
    if not kernels.enabled():
        return quantize_int8(draft, torch.bfloat16).eval()
    return use_group_packs(draft, kernels.Q4, kernels.Q8, act8=True).eval()
