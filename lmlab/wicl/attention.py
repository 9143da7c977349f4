"""Demonstration weights inside attention (arXiv:2310.08309, Sec. 3.2): SKM and SAW, at chosen layers and heads.

SKM ("scaling key matrix", the official `before_softmax`): the pre-softmax scores of the query on demonstration i's
keys are multiplied by w_i, which is the same as replacing K_i by w_i K_i. The scale is applied to the unmasked scores
(the official code adds the mask first and scales -inf, which only works by accident).

SAW ("scaling attention weights", `after_softmax`): A = softmax(scores); with S = sum of A over demonstration keys
and S' = sum_i w_i sum_{t in span i} A_t, A_t <- w_i A_t S / S' on demonstration keys. The mass on the demonstrations
(and so the query tokens' own attention) is unchanged.

Weights act only on the query's attention rows (`query_start`): the demonstrations' K/V are computed once without
weights and shared by every query and candidate weight vector, exactly as in the official code. One function,
`reweight`, does the arithmetic for both back ends:

- the native engine (`NativeLM`): the demonstrations' K/V live once, in a batch-1 prefix; every row (a query under
  one candidate weight vector) attends to [shared prefix, its own tokens], so R candidates cost no K/V copies;
- any transformers causal LM (`HFLM`): a registered attention function ("wicl", transformers' AttentionInterface),
  with the per-call weights set by a context variable (no model patching; GPT-2, OPT, Llama, Qwen2, Mistral...).
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import inspect
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lmlab.core.errors import LmlabError

PLACEMENTS = ("skm", "saw", "both")


@dataclass
class WeightPlan:
    """Where weights act. spans: demonstration token spans [beg, end) in key-slot coordinates; layers / heads:
    subsets (None = all; heads are query heads)."""

    spans: list[tuple[int, int]]
    placement: str = "skm"
    layers: list[int] | None = None
    heads: list[int] | None = None

    def __post_init__(self):
        if self.placement not in PLACEMENTS:
            raise LmlabError(f"unknown placement {self.placement!r}", hint=f"use one of {', '.join(PLACEMENTS)}")

    def key_demo(self, S: int, device: Any = None) -> Tensor:
        """[S] long: the demonstration each key slot belongs to, -1 for none."""
        out = torch.full((S,), -1, dtype=torch.long, device=device)
        for i, (b, e) in enumerate(self.spans):
            out[b : min(e, S)] = i
        return out


@dataclass
class RowState:
    """Per-call row data: weights [R, k] (None = plain attention), key_visible [R, P] bool over the prefix slots
    (MSP masking; None = all visible), query_start: absolute position from which query rows get weights/masks."""

    plan: WeightPlan
    weights: Tensor | None = None
    key_visible: Tensor | None = None
    query_start: int = 0
    calls: int = 0
    _cache: dict = field(default_factory=dict)

    def active(self, layer: int) -> bool:
        return self.weights is not None and (self.plan.layers is None or layer in self.plan.layers)

    def head_sel(self, H: int, device: Any) -> Tensor | None:
        if self.plan.heads is None:
            return None
        sel = torch.zeros(H, dtype=torch.bool, device=device)
        sel[self.plan.heads] = True
        return sel


def reweight(
    scores: Tensor,
    mask: Tensor | None,
    key_demo: Tensor,
    w: Tensor | None,
    placement: str,
    heads: Tensor | None = None,
    qrows: Tensor | None = None,
) -> Tensor:
    """Attention probabilities with demonstration weights.

    scores [B, H, T, S]: scaled q.k (no mask); mask: additive [B|1, 1|H, T, S] or None; key_demo [S]: demonstration
    of each key (-1: none); w [B, k]: weights per row (None: plain softmax); heads [H] / qrows [T] bool: which heads
    and query rows get the weights (None: all)."""
    if w is None:
        return torch.softmax(scores if mask is None else scores + mask, dim=-1)
    B, H, T, S = scores.shape
    demo = key_demo >= 0
    f = torch.ones(B, S, dtype=scores.dtype, device=scores.device)
    f[:, demo] = w.to(scores.dtype)[:, key_demo[demo]]
    f = f[:, None, None, :]
    sel = None
    if heads is not None or qrows is not None:
        h = heads if heads is not None else torch.ones(H, dtype=torch.bool, device=scores.device)
        q = qrows if qrows is not None else torch.ones(T, dtype=torch.bool, device=scores.device)
        sel = (h[:, None] & q[None, :])[None, :, :, None]  # [1, H, T, 1]
    if placement in ("skm", "both"):
        scaled = scores * f
        scores = scaled if sel is None else torch.where(sel, scaled, scores)
    p = torch.softmax(scores if mask is None else scores + mask, dim=-1)
    if placement in ("saw", "both"):
        d = demo.to(p.dtype)
        s_old = (p * d).sum(-1, keepdim=True)
        s_new = (p * f * d).sum(-1, keepdim=True)
        ratio = torch.where(s_new > 0, s_old / s_new.clamp_min(torch.finfo(p.dtype).tiny), torch.ones_like(s_new))
        new = torch.where(demo, p * f * ratio, p)
        p = new if sel is None else torch.where(sel, new, p)
    return p


def _prefix_mask(st: RowState, B: int, T: int, S: int, first_pos: int, device: Any) -> Tensor | None:
    """Additive [B, 1, T, S] mask hiding invisible prefix keys from the query rows (MSP), or None."""
    if st.key_visible is None:
        return None
    P = st.key_visible.shape[1]
    vis = torch.ones(B, T, S, dtype=torch.bool, device=device)
    qrow = (torch.arange(T, device=device) + first_pos) >= st.query_start
    vis[:, :, :P] = torch.where(qrow[None, :, None], st.key_visible[:, None, :].to(device), True)
    return torch.zeros(B, 1, T, S, device=device).masked_fill(~vis[:, None], float("-inf"))


# ----------------------------------------------------------------------------------------------- transformers
_ACTIVE: contextvars.ContextVar[RowState | None] = contextvars.ContextVar("wicl_rows", default=None)
ATTN_NAME = "wicl"


def wicl_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
):
    """transformers attention function (AttentionInterface signature): eager attention plus demonstration weights
    from the active `RowState`; without one, transformers' sdpa attention."""
    st = _ACTIVE.get()
    if st is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        if attention_mask is not None and attention_mask.dtype != torch.bool:
            attention_mask = attention_mask > torch.finfo(attention_mask.dtype).min / 2
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    layer = getattr(module, "layer_idx", None)
    if layer is None:
        raise LmlabError(
            f"{type(module).__name__} has no layer_idx", hint="this model's attention cannot be located by layer"
        )
    st.calls += 1
    B, H, T, D = query.shape
    S = key.shape[2]
    g = H // key.shape[1]
    scaling = D**-0.5 if scaling is None else scaling
    q = query.float().reshape(B, key.shape[1], g * T, D)
    scores = (q @ key.float().transpose(-1, -2)).reshape(B, H, T, S) * scaling
    mask = None
    if attention_mask is not None:
        mask = attention_mask[..., :S].float()
        mask = mask.masked_fill(mask <= torch.finfo(attention_mask.dtype).min / 2, float("-inf"))
    elif T > 1:
        pos = torch.arange(T, device=query.device)[:, None] + (S - T)
        mask = torch.zeros(T, S, device=query.device).masked_fill(
            torch.arange(S, device=query.device)[None] > pos, float("-inf")
        )
    extra = _prefix_mask(st, B, T, S, S - T, query.device)
    if extra is not None:
        mask = extra if mask is None else mask + extra
    qrows = (torch.arange(T, device=query.device) + (S - T)) >= st.query_start
    w = st.weights if st.active(layer) else None
    p = reweight(
        scores, mask, st.plan.key_demo(S, query.device), w, st.plan.placement, st.head_sel(H, query.device), qrows
    )
    out = (p.reshape(B, key.shape[1], g * T, S) @ value.float()).reshape(B, H, T, D)
    return out.to(query.dtype).transpose(1, 2).contiguous(), p


def register_hf() -> None:
    """Register the "wicl" attention (and its eager-style mask) with transformers; idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTN_NAME, wicl_attention)
    AttentionMaskInterface.register(ATTN_NAME, eager_mask)


@contextlib.contextmanager
def rows_active(st: RowState | None):
    tok = _ACTIVE.set(st)
    try:
        yield st
    finally:
        _ACTIVE.reset(tok)


def _pad(rows: list[list[int]], device: Any) -> tuple[Tensor, list[int]]:
    lens = [len(r) for r in rows]
    if min(lens) == 0:
        raise LmlabError("empty query row", hint="every query needs at least one token")
    T = max(lens)
    return torch.tensor([r + [0] * (T - len(r)) for r in rows], device=device), lens


class HFLM:
    """Any transformers causal LM; demonstrations cached once (DynamicCache), rows = queries x candidate weights."""

    kind = "transformers"

    def __init__(self, model: Any, tokenizer: Any):
        register_hf()
        model.set_attn_implementation(ATTN_NAME)
        self.model, self.tokenizer = model.eval(), tokenizer
        self.device = next(model.parameters()).device
        # transformers 5.x renamed `past_key_values` to `cache`; accept both
        self._cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    @torch.no_grad()
    def prefix(self, ids: list[int]) -> Any:
        if not ids:
            return (None, 0)
        out = self.model(input_ids=torch.tensor([ids], device=self.device), use_cache=True)
        return (out.past_key_values, len(ids))

    @torch.no_grad()
    def logits_at(self, prefix: Any, rows: list[list[int]], picks: list[list[int]], st: RowState) -> list[Tensor]:
        """Logits [len(picks[r]), V] at positions picks[r] (indices into row r) for every row."""
        cache, P = prefix
        ids, _ = _pad(rows, self.device)
        R, T = ids.shape
        past = None
        if cache is not None:
            past = copy.deepcopy(cache)
            past.batch_repeat_interleave(R)
        st.query_start = P
        st.calls = 0
        pos = (torch.arange(T, device=self.device) + P)[None].expand(R, T)
        with rows_active(st):
            out = self.model(
                input_ids=ids,
                **{self._cache_kw: past},
                position_ids=pos,
                attention_mask=torch.ones(R, P + T, dtype=torch.long, device=self.device),
                use_cache=past is not None,
            )
        if st.calls == 0:
            raise LmlabError(
                f"{type(self.model).__name__} does not route attention through transformers' AttentionInterface",
                hint="use a model whose attention calls ALL_ATTENTION_FUNCTIONS (Llama, Qwen2, Mistral, GPT-2, OPT...)",
            )
        lg = out.logits.float()
        return [lg[r, torch.tensor(picks[r], device=self.device)] for r in range(R)]


# ----------------------------------------------------------------------------------------------- native
class _NativeAttention(nn.Module):
    """Stands in for `lmlab.core.model.Attention` inside `NativeLM`: same projections and cache writes, then attention
    over [shared demonstration prefix, the row's own tokens] with `reweight`. (A different module type, so the block
    skips its fused kernel; the other layers are untouched.)"""

    def __init__(self, inner: nn.Module, layer: int, run: _NativeRun):
        super().__init__()
        self.inner, self.layer, self.run = inner, layer, run

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, kc: Tensor, vc: Tensor, write: Any) -> Tensor:
        from lmlab.core.model import apply_rope

        a, run = self.inner, self.run
        B, T, _ = x.shape
        nh, nkv, hd = a.nh, a.nkv, a.hd
        q, k, v = a.wqkv(x).split([nh * hd, nkv * hd, nkv * hd], dim=-1)
        q = apply_rope(q.view(B, T, nh, hd).transpose(1, 2), cos, sin)
        k = apply_rope(k.view(B, T, nkv, hd).transpose(1, 2), cos, sin)
        v = v.view(B, T, nkv, hd).transpose(1, 2)
        if write.start is not None:
            kc[:, :, write.start : write.start + T] = k
            vc[:, :, write.start : write.start + T] = v
        else:
            kc[write.rows, write.heads, write.slots] = k
            vc[write.rows, write.heads, write.slots] = v
        keys, vals = kc[:, :, : write.used], vc[:, :, : write.used]
        pk, pv = run.k[self.layer], run.v[self.layer]  # [1, nkv, P, hd]
        P, U, g = pk.shape[2], write.used, nh // nkv
        q5 = q.reshape(B, nkv, g * T, hd)
        scale = 1.0 / math.sqrt(hd)
        scores = (
            torch.cat([q5 @ pk.transpose(-1, -2), q5 @ keys.transpose(-1, -2)], -1).reshape(B, nh, T, P + U) * scale
        )
        if write.mask is not None:
            vis = write.mask[:, 0].expand(B, T, U)
            if vis.dtype != torch.bool:
                vis = vis > float("-inf")
        else:
            vis = torch.ones(T, U, dtype=torch.bool, device=x.device).tril(U - T)[None].expand(B, T, U)
        own = torch.zeros(B, 1, T, U, dtype=scores.dtype, device=x.device).masked_fill(~vis[:, None], float("-inf"))
        pre = torch.zeros(B, 1, T, P, dtype=scores.dtype, device=x.device)
        if run.st.key_visible is not None:
            pre = pre.masked_fill(~run.st.key_visible[:, None, None, :], float("-inf"))
        mask = torch.cat([pre, own], -1)
        st = run.st
        w = st.weights if st.active(self.layer) else None
        qrows = None
        if st.query_start > P:  # the prompt is in the rows themselves (no shared prefix): weights on query rows only
            qrows = (torch.arange(T, device=x.device) + P + U - T) >= st.query_start
        p = reweight(scores, mask, run.key_demo(P + U), w, st.plan.placement, st.head_sel(nh, x.device), qrows)
        p5 = p.reshape(B, nkv, g * T, P + U)
        y = (p5[..., :P] @ pv + p5[..., P:] @ vals).reshape(B, nh, T, hd)
        return a.wo(y.transpose(1, 2).reshape(B, T, nh * hd))


@dataclass
class _NativeRun:
    k: list[Tensor]
    v: list[Tensor]
    st: RowState

    def key_demo(self, S: int) -> Tensor:
        kd = self.st._cache.get(S)
        if kd is None:
            kd = self.st._cache[S] = self.st.plan.key_demo(S, self.k[0].device)
        return kd


class NativeLM:
    """lmlab's native Llama-family engine: the demonstrations' K/V are prefilled once into a batch-1 prefix that
    every row (query x candidate weights) reads in place."""

    kind = "native"

    def __init__(self, model: Any, tokenizer: Any):
        self.model, self.tokenizer = model, tokenizer
        self.device = model.device

    @torch.no_grad()
    def prefix(self, ids: list[int]) -> Any:
        from lmlab.core.engine import chunked_forward

        cfg, m = self.model.cfg, self.model
        if not ids:
            z = torch.zeros(1, cfg.num_kv_heads, 0, cfg.head_dim, dtype=m.dtype, device=m.device)
            return ([z] * cfg.num_layers, [z] * cfg.num_layers, 0)
        cache = m.new_cache(1, len(ids))
        chunked_forward(m, torch.tensor([ids], device=m.device), cache, logits="none")
        return (cache.k, cache.v, len(ids))

    @torch.no_grad()
    def logits_at(
        self, prefix: Any, rows: list[list[int]], picks: list[list[int]], st: RowState, query_start: int | None = None
    ) -> list[Tensor]:
        """As `HFLM.logits_at`; query_start > prefix length: rows carry the prompt themselves (the recompute
        baseline), and only their positions >= query_start get weights."""
        pk, pv, P = prefix
        m = self.model
        ids, lens = _pad(rows, m.device)
        R, T = ids.shape
        st.query_start = P if query_start is None else query_start
        run = _NativeRun(pk, pv, st)
        cache = m.new_cache(R, T)
        pos = (torch.arange(T, device=m.device) + P)[None].expand(R, T)
        saved = [layer.attn for layer in m.layers]
        try:
            for i, layer in enumerate(m.layers):
                layer.attn = _NativeAttention(saved[i], i, run)
            out = m(ids, cache, positions=pos, num_tokens=lens, logits="none")
        finally:
            for i, layer in enumerate(m.layers):
                layer.attn = saved[i]
        h = out.last_hidden
        return [m.lm_head(h[r, torch.tensor(picks[r], device=m.device)]).float() for r in range(R)]
