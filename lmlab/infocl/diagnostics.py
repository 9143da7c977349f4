"""Information-bottleneck diagnostic: how much of the old classes' representation survives later tasks.

InfoCL's argument (Sec. 3 of the paper): training on a new task compresses the representation towards what the
new task needs (the information bottleneck), and this compression is what confuses old, analogous classes. A
cheap, label-free proxy for how compressed a set of representations is, is its *effective rank* (Roy & Vetterli,
2007): the exponential of the entropy of the normalised singular values of the centred feature matrix,

    s = svd(Z - mean(Z)),  p_i = s_i / sum_j s_j,  erank(Z) = exp(-sum_i p_i log p_i)   (1 <= erank <= rank Z).

The learner records it after every task on the test rows of the first task's classes (classifier-projection
features, eval mode), so the curve shows whether later tasks shrink the dimensions the first task used; a
method that keeps old information (InfoCL's claim) should keep it higher than plain replay.
"""

from __future__ import annotations

import torch
from torch import Tensor


def effective_rank(z: Tensor, eps: float = 1e-12) -> float:
    """Effective rank (Roy & Vetterli 2007) of the rows of `z` [n, d] after centring; 0 for fewer than 2 rows."""
    if z.shape[0] < 2:
        return 0.0
    zc = z.double() - z.double().mean(0, keepdim=True)
    s = torch.linalg.svdvals(zc)
    total = float(s.sum())
    if total <= eps:
        return 0.0
    p = s / total
    p = p[p > eps]
    return float(torch.exp(-(p * p.log()).sum()))
