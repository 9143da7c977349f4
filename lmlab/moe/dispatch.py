"""Sorted grouped dispatch: run routed experts on contiguous per-expert slices (MegaBlocks/ScatterMoE style).

The token-expert pairs are sorted once by expert id; each expert then sees one contiguous slice, so two
grouped GEMMs (`torch._grouped_mm`, which has a CPU kernel in torch >= 2.9 and a CUDA kernel for bf16 on
SM80+) compute every expert without a per-expert boolean mask over all tokens. Results are weighted and
scatter-added back with `index_add_`. Autograd differentiates through all of it (grouped_mm has a backward).

Hand-written because it is the hot path this system exists for: transformers' `grouped_mm` experts
re-gather by an inverse permutation and reduce over a [T, k, H] view, and its `eager` path loops over
experts with a boolean mask pass each; we skip both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class Plan:
    """Where each kept token-expert pair goes: sorted by expert, top-1 choices first within an expert."""

    token: Tensor  # [S] source row of each sorted pair
    weight: Tensor  # [S] gate value of each sorted pair (differentiable)
    offsets: Tensor  # [E] int32 cumulative pair counts (end of each expert's slice)
    counts: Tensor  # [E] pairs routed to each expert before capacity dropping
    dropped: Tensor  # scalar: pairs dropped by the capacity limit


def plan(index: Tensor, weight: Tensor, num_experts: int, capacity: int | None = None) -> Plan:
    """Sort the [N, k] routing decisions by expert; drop pairs beyond `capacity` per expert (GShard).

    Pairs are ordered slot-major before the stable sort, so within an expert all top-1 choices precede
    top-2 choices, which precede ... : the capacity limit drops lower-priority choices first, as in GShard.
    """
    n, k = index.shape
    flat = index.t().reshape(-1)
    order = torch.argsort(flat, stable=True)
    expert = flat[order]
    counts = torch.bincount(flat, minlength=num_experts)
    token = order % n
    w = weight.t().reshape(-1)[order]
    dropped = torch.zeros((), dtype=torch.long, device=index.device)
    kept = counts
    if capacity is not None:
        start = torch.cumsum(counts, 0) - counts
        keep = torch.arange(order.numel(), device=index.device) - start[expert] < capacity
        token, w = token[keep], w[keep]
        kept = counts.clamp(max=capacity)
        dropped = counts.sum() - kept.sum()
    return Plan(token, w, torch.cumsum(kept, 0).to(torch.int32), counts, dropped)


def _grouped_ok(x: Tensor, w: Tensor) -> bool:
    """torch._grouped_mm runs on CPU (any float dtype) and on CUDA SM80+ in bf16 only, with 16-byte strides."""
    es = x.element_size()
    if not hasattr(torch, "_grouped_mm") or (x.shape[-1] * es) % 16 or (w.shape[-1] * es) % 16:
        return False
    if x.device.type == "cpu":
        return True
    return (
        x.device.type == "cuda" and w.dtype == torch.bfloat16 and torch.cuda.get_device_capability(x.device) >= (8, 0)
    )


def grouped_mm(x: Tensor, w: Tensor, offsets: Tensor) -> Tensor:
    """y[s] = x[s] @ w[e(s)] for rows sorted by expert e; `offsets` ends each expert's slice. [S,K]x[E,K,M]."""
    if _grouped_ok(x, w):
        return torch._grouped_mm(x, w, offs=offsets)
    out, start = [], 0
    for e, end in enumerate(offsets.tolist()):  # one host sync; portable fallback
        if end > start:
            out.append(x[start:end] @ w[e])
        start = end
    return torch.cat(out) if out else x.new_zeros(0, w.shape[-1])


def run_experts(x: Tensor, p: Plan, w13: Tensor, w2: Tensor) -> Tensor:
    """Sum_e g_e * SwiGLU_e(x) over the planned pairs. x: [N, H]; w13: [E, H, 2I] (gate ‖ up); w2: [E, I, H]."""
    out = torch.zeros_like(x)
    if p.token.numel() == 0:
        return out
    h = grouped_mm(x[p.token], w13, p.offsets)
    gate, up = h.chunk(2, dim=-1)
    # scale rows before the down projection: diag(g) (a W2) = (diag(g) a) W2, on I columns instead of H
    a = F.silu(gate) * (up * p.weight[:, None].to(up.dtype))
    return out.index_add_(0, p.token, grouped_mm(a, w2, p.offsets))
