"""InfoCL's losses (`utils/losses.py`, `train/NewOldTrain.py` of the official code), as plain functions.

`sup_infonce` is eq. (fast-slow / current-past contrastive) of the paper: a supervised InfoNCE in which every
positive is normalised against itself plus all negatives (not against the other positives):

    s = cos(q, [k; queue]) / tau
    log p_ap = s_ap - log(exp(s_ap) + sum_{n not in pos(a), n != a} exp(s_an) + 1e-6)
    loss = -mean_a (1/max(|pos(a)|, 1)) sum_{p in pos(a)} log p_ap

(the 1e-6 and the row-max shift are the official code's). `freelb_backward` is FreeLB (Zhu et al. 2020) as
InfoCL runs it on the memory: K ascent steps on an L2-bounded perturbation, gradients of the K losses accumulated.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def sup_infonce(
    query: Tensor,
    keys: Tensor,
    queue: Tensor,
    query_labels: Tensor,
    queue_labels: Tensor,
    tau: float = 0.05,
    *,
    key_labels: Tensor | None = None,
    self_index: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Supervised InfoNCE of queries against in-batch keys and a queue (SupInfoNCE of the official code).

    `keys[i]` is query i's own key by default; under data parallelism each rank passes its local queries with the
    gathered keys of the whole batch, their labels (`key_labels`) and the position of each query's own key
    (`self_index`). `reduction="sum"` returns the sum over anchors (a rank then divides by the global batch).
    """
    if key_labels is None:
        key_labels = query_labels
    if self_index is None:
        self_index = torch.arange(query.shape[0], device=query.device)
    # cosine similarities as one matmul of unit vectors (broadcast cosine_similarity materialises [B, N, d] and
    # made the fast-slow step 20x slower on CPU; same values to float rounding)
    qn = F.normalize(query, dim=-1, eps=1e-8)
    sim = qn @ F.normalize(torch.cat([keys, queue]), dim=-1, eps=1e-8).T / tau
    sim = sim - sim.max(dim=1, keepdim=True)[0].detach()
    not_self = torch.ones_like(sim, dtype=torch.bool)
    not_self[torch.arange(query.shape[0]), self_index] = False
    targets = torch.cat([key_labels, queue_labels]).to(query_labels.dtype)
    pos = (query_labels[:, None] == targets[None]) & not_self
    expo = torch.exp(sim) * not_self
    neg_sum = (expo * (~pos)).sum(1, keepdim=True)
    log_prob = sim - torch.log(expo * pos + neg_sum + 1e-6)
    per_anchor = (pos * log_prob).sum(1) / pos.sum(1).clamp(min=1)
    loss = -per_anchor
    return loss.sum() if reduction == "sum" else loss.mean()


def l2_project(delta: Tensor, max_norm: float) -> Tensor:
    """Scale each example's perturbation (all its positions together) back onto the L2 ball of `max_norm`."""
    norm = delta.reshape(delta.shape[0], -1).norm(dim=1)
    exceed = (norm > max_norm).to(delta.dtype)
    scale = max_norm / norm.clamp(min=1e-12) * exceed + (1 - exceed)
    return delta * scale.view(-1, *([1] * (delta.dim() - 1)))


def freelb_backward(
    loss_fn: Callable[[Tensor], Tensor], x: Tensor, k: int = 2, step: float = 0.1, max_norm: float = 0.3
) -> float:
    """FreeLB with delta_0 = 0: for k steps, backward loss_fn(x + delta)/K (parameter gradients accumulate), then
    delta <- Proj(delta + step * g / ||g||) with g the gradient w.r.t. delta (per example, L2). Returns the mean loss.

    With K = 2 the parameter gradient is the average of the clean and one adversarial loss's gradient."""
    delta = torch.zeros_like(x)
    total = 0.0
    for astep in range(k):
        delta.requires_grad_()
        loss = loss_fn(x + delta) / k
        total += float(loss.detach())
        loss.backward()
        if astep == k - 1:
            break
        g = delta.grad.detach()
        denom = g.reshape(g.shape[0], -1).norm(dim=1).clamp(min=1e-8).view(-1, *([1] * (g.dim() - 1)))
        delta = (delta.detach() + step * g / denom).detach()
        if max_norm > 0:
            delta = l2_project(delta, max_norm).detach()
    return total
