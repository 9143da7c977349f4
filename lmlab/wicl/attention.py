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
from dataclasses import dataclass
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
    def logits_at(
        self,
        prefix: Any,
        rows: list[list[int]],
        picks: list[list[int]],
        st: RowState,
        columns: list[int] | None = None,
    ) -> list[Tensor]:
        """Logits [len(picks[r]), V] at positions picks[r] (indices into row r) for every row (only the vocabulary
        entries `columns`, if given)."""
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
        if columns is not None:
            lg = lg[..., torch.tensor(columns, device=self.device)]
        return [lg[r, torch.tensor(picks[r], device=self.device)] for r in range(R)]


# ----------------------------------------------------------------------------------------------- native
def _linear(lin: nn.Module, x: Tensor) -> Tensor:
    return lin(x)


def _mlp(mlp: nn.Module, x: Tensor) -> Tensor:
    from lmlab.core.model import MLP

    if type(mlp) is not MLP:
        return mlp(x)
    gate, up = _linear(mlp.w13, x).split(mlp.inter, dim=-1)
    return _linear(mlp.w2, torch.nn.functional.silu(gate).mul_(up))


@dataclass
class _Rows:
    """What one native forward's attention needs besides the activations and the prefix K/V: the demonstration of
    every key slot of [prefix, own tokens], per-row weights [B, k] and
    prefix visibility [B, P], the first own position that gets weights (q0; 0 = all), placement, head subset."""

    key_demo: Tensor
    placement: str
    heads: list[int] | None
    q0: int
    weights: Tensor | None = None
    visible: Tensor | None = None


def _block_attention(a: nn.Module, x: Tensor, cos: Tensor, sin: Tensor, pk: Tensor, pv: Tensor, r: _Rows, w):
    """Attention of rows x [B, T, H] over [shared prefix (batch 1), the row's own tokens (causal)] with `reweight`'s
    arithmetic, written for speed: the prefix scores are one GEMM per KV head over all rows (the prefix K/V are never
    copied per row), the two key blocks are softmaxed jointly without concatenation, and SKM / masks / SAW are applied
    in place, so no [rows, keys] bias tensor is built. SAW's renormalisation uses A@V = A_nd@V + r A_d@V with the
    demonstration / other keys split on V's side (S/S' per query row), which costs one wider A@V and no copy of A.
    w [B, k] or None (plain attention)."""
    from lmlab.core.model import apply_rope

    B, T, _ = x.shape
    nh, nkv, hd = a.nh, a.nkv, a.hd
    g, P = nh // nkv, pk.shape[2]
    q, k, v = _linear(a.wqkv, x.reshape(B * T, -1)).split([nh * hd, nkv * hd, nkv * hd], dim=-1)
    q = apply_rope(q.view(B, T, nh, hd).transpose(1, 2), cos, sin) * (1.0 / math.sqrt(hd))
    k = apply_rope(k.view(B, T, nkv, hd).transpose(1, 2), cos, sin)
    v = v.view(B, T, nkv, hd).transpose(1, 2)
    # layout [nkv, B, g*T, .]: head h = n*g + j reads KV head n
    qn = q.reshape(B, nkv, g * T, hd).transpose(0, 1).contiguous()  # [nkv, B, gT, hd]
    kn = k.transpose(0, 1).reshape(nkv * B, T, hd)
    vn = v.transpose(0, 1).reshape(nkv * B, T, hd)
    s_own = torch.bmm(qn.view(nkv * B, g * T, hd), kn.transpose(1, 2)).view(nkv, B, g, T, T)
    s_pre = None
    if P:
        s_pre = torch.bmm(qn.view(nkv, B * g * T, hd), pk[0].transpose(1, 2)).view(nkv, B, g, T, P)
    kd, q0 = r.key_demo, r.q0
    f = None
    if w is not None:  # per-row factor of every key slot (1 on non-demonstration keys)
        f = torch.ones(B, P + T, dtype=x.dtype, device=x.device)
        demo = kd >= 0
        f[:, demo] = w.to(x.dtype)[:, kd[demo]]
    sel = [(h // g, h % g) for h in r.heads] if r.heads is not None else None

    def scale(s: Tensor, fac: Tensor) -> None:  # s [nkv, B, g, T, S] *= fac [B, S] on weighted rows / heads
        fac = fac[:, None, :]
        if sel is None:
            s[:, :, :, q0:].mul_(fac[None, :, None])
        else:
            for n, j in sel:
                s[n, :, j, q0:].mul_(fac)

    if f is not None and r.placement in ("skm", "both"):
        if P and bool((kd[:P] >= 0).any()):
            scale(s_pre, f[:, :P])
        if bool((kd[P:] >= 0).any()):
            scale(s_own, f[:, P:])
    s_own.masked_fill_(torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1), float("-inf"))
    if s_pre is not None and r.visible is not None:
        hide = ~r.visible.to(x.device)[:, None, None, :]  # [B, 1, 1, P]
        if q0:
            s_pre[:, :, :, q0:].masked_fill_(hide, float("-inf"))
        else:
            s_pre.masked_fill_(hide, float("-inf"))
    mx = s_own.amax(-1)
    if s_pre is not None:
        mx = torch.maximum(mx, s_pre.amax(-1))
    mx = mx.unsqueeze(-1)
    s_own.sub_(mx).exp_()
    den = s_own.sum(-1, keepdim=True)
    if s_pre is not None:
        s_pre.sub_(mx).exp_()
        den += s_pre.sum(-1, keepdim=True)
    saw = f is not None and r.placement in ("saw", "both")
    if saw:  # S = mass on demonstration keys before, S2 after the factors; demonstration keys then carry S/S2
        d = (kd >= 0).to(x.dtype)
        dp, do = d[:P], d[P:]
        S = s_own @ do + (s_pre @ dp if P else 0)
        if P:
            scale(s_pre, f[:, :P])
        scale(s_own, f[:, P:])
        S2 = s_own @ do + (s_pre @ dp if P else 0)
        ratio = torch.where(S2 > 0, S / S2.clamp_min(torch.finfo(x.dtype).tiny), torch.ones_like(S2))
        # V split into its demonstration rows and the others: A@[d*V, (1-d)*V]
        vv = vn.view(nkv, B, T, hd)
        vsplit = torch.cat([vv * do[:, None], vv * (1 - do)[:, None]], -1).view(nkv * B, T, 2 * hd)
        y = torch.bmm(s_own.view(nkv * B, g * T, T), vsplit).view(nkv, B, g, T, 2 * hd)
        if P:
            pvs = torch.cat([pv[0] * dp[:, None], pv[0] * (1 - dp)[:, None]], -1)  # [nkv, P, 2hd]
            y += torch.bmm(s_pre.view(nkv, B * g * T, P), pvs).view(nkv, B, g, T, 2 * hd)
        y = y[..., hd:] + ratio.unsqueeze(-1) * y[..., :hd]
    else:
        y = torch.bmm(s_own.view(nkv * B, g * T, T), vn).view(nkv, B, g, T, hd)
        if P:
            y += torch.bmm(s_pre.view(nkv, B * g * T, P), pv[0]).view(nkv, B, g, T, hd)
    y = y.div_(den).permute(1, 3, 0, 2, 4).reshape(B * T, nh * hd)  # [B, T, (n, j), hd]
    return _linear(a.wo, y).view(B, T, -1)


class NativeLM:
    """lmlab's native Llama-family engine: the demonstrations' K/V are prefilled once into a batch-1 prefix that
    every row (query x candidate weights) reads in place (`_block_attention`). Rows run through the model's own
    weights layer by layer; below the first weighted layer, rows that differ only in their weights are computed once."""

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
        self,
        prefix: Any,
        rows: list[list[int]],
        picks: list[list[int]],
        st: RowState,
        query_start: int | None = None,
        columns: list[int] | None = None,
    ) -> list[Tensor]:
        """As `HFLM.logits_at`; query_start > prefix length: rows carry the prompt themselves (the recompute
        baseline), and only their positions >= query_start get weights; columns: only these vocabulary logits."""
        pk, pv, P = prefix
        m = self.model
        dev = m.device
        ids, lens = _pad(rows, dev)  # right padding: a real token never sees a pad key (causal)
        R, T = ids.shape
        st.query_start = P if query_start is None else query_start
        L = len(m.layers)
        plan = st.plan
        active = [st.weights is not None and (plan.layers is None or i in plan.layers) for i in range(L)]
        first = active.index(True) if any(active) else L
        r = _Rows(plan.key_demo(P + T, dev), plan.placement, plan.heads, max(0, st.query_start - P))
        # rows equal in tokens and visibility give the same states below the first weighted layer: compute those once
        inv = None
        if first > 0 and R > 1:
            vis = st.key_visible
            keys = [(tuple(x), None if vis is None else tuple(vis[i].tolist())) for i, x in enumerate(rows)]
            first_row: dict[tuple, int] = {}
            for n, key in enumerate(keys):
                first_row.setdefault(key, n)
            if len(first_row) < R:
                slot = {key: n for n, key in enumerate(first_row)}
                inv = torch.tensor([slot[key] for key in keys], device=dev)
                reps = torch.tensor(list(first_row.values()), device=dev)
        cos, sin = m._rope((torch.arange(T, device=dev) + P)[None])
        x = m.embed(ids if inv is None else ids[reps])
        r.visible = st.key_visible if inv is None or st.key_visible is None else st.key_visible[reps]
        for i, layer in enumerate(m.layers):
            if i == first and inv is not None:
                x, r.visible = x[inv], st.key_visible
            B = x.shape[0]
            h = x + _block_attention(
                layer.attn, layer.attn_norm(x), cos, sin, pk[i], pv[i], r, st.weights if active[i] else None
            )
            x = h + _mlp(layer.mlp, layer.mlp_norm(h.view(B * T, -1))).view(B, T, -1)
        if inv is not None and first >= L:
            x = x[inv]
        st.calls += L
        flat = torch.tensor([i * T + p for i, ps in enumerate(picks) for p in ps], device=dev)
        hsel = m.norm(x.reshape(R * T, -1)[flat])
        if columns is None:
            lg = _linear(m.lm_head, hsel).float()
        else:
            lg = torch.nn.functional.linear(hsel, m.lm_head.weight[columns]).float()
        return list(lg.split([len(ps) for ps in picks]))
