"""The DeepSeekMoE layer (arXiv:2401.06066, Sec. 3) and the configurations it generalises.

One module covers Dense (no routed experts, one shared FFN), Switch (top-1 of N), GShard (top-2 of N, optional
capacity factor with token dropping) and DeepSeekMoE (K_s shared experts + top-(mK - K_s) of (mN - K_s)
fine-grained routed experts, each 1/m of the FFN width):

    h_t = u_t + sum_{i<=K_s} FFN_i(u_t) + sum_{routed i} g_{i,t} FFN_i(u_t)         (Eq. 9)
    s_{i,t} = Softmax_i(u_t^T e_i),  g_{i,t} = s_{i,t} if s_{i,t} in TopK else 0     (Eq. 10-11)

(the residual u_t is added by the decoder block). Balance losses follow Eq. 12-17 exactly; the
auxiliary-loss-free bias balancing of DeepSeek-V3 (arXiv:2412.19437, Sec. 2.1.2) is an option.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.config import ModelConfig
from ..core.errors import LmlabError
from ..core.model import MLP
from .dispatch import Plan, plan, run_experts


@dataclass
class MoEConfig:
    hidden_size: int
    expert_size: int  # intermediate width of one routed expert (and of one shared expert)
    n_routed: int = 0  # N' = mN - K_s
    top_k: int = 0  # K' = mK - K_s routed experts per token
    n_shared: int = 0  # K_s, always active (fused into one FFN of width K_s * expert_size, as HF does)
    shared_size: int | None = None  # override the shared FFN width (Dense: the full FFN width)
    norm_topk: bool = False  # renormalise the top-k gate values to sum to 1
    routed_scale: float = 1.0  # multiply routed gate values (DeepSeek-V2 routed_scaling_factor)
    scoring: str = "softmax"  # "softmax" (DeepSeekMoE/V2) or "sigmoid" (V3)
    alpha1: float = 0.0  # expert-level balance loss factor (Eq. 12)
    alpha2: float = 0.0  # device-level balance loss factor (Eq. 15)
    n_devices: int = 1  # D: routed experts grouped contiguously into D devices for alpha2
    bias_rate: float = 0.0  # gamma > 0: aux-loss-free bias balancing (V3) with this update speed
    capacity_factor: float | None = None  # GShard token dropping: capacity = ceil(cf * T * k / N')

    def __post_init__(self) -> None:
        if self.n_routed == 0 and self.n_shared == 0 and not self.shared_size:
            raise LmlabError("MoEConfig: no experts (n_routed = n_shared = 0)", hint="set n_routed/top_k or n_shared")
        if self.n_routed and not 0 < self.top_k <= self.n_routed:
            raise LmlabError(f"MoEConfig: top_k={self.top_k} must be in 1..n_routed={self.n_routed}")
        if self.n_routed % max(1, self.n_devices):
            raise LmlabError(f"MoEConfig: n_routed={self.n_routed} not divisible by n_devices={self.n_devices}")
        if self.scoring not in ("softmax", "sigmoid"):
            raise LmlabError(f"MoEConfig: scoring={self.scoring!r}", hint="use softmax or sigmoid")

    @property
    def shared_width(self) -> int:
        return self.shared_size if self.shared_size else self.n_shared * self.expert_size

    def params(self) -> tuple[int, int]:
        """(total, activated) FFN parameters per token, router included (3 matrices per SwiGLU expert)."""
        per = 3 * self.hidden_size * self.expert_size
        shared = 3 * self.hidden_size * self.shared_width
        router = self.n_routed * self.hidden_size
        return shared + self.n_routed * per + router, shared + self.top_k * per + router

    def asdict(self) -> dict:
        return asdict(self)


@dataclass
class RouterStats:
    """Per-step router statistics of one layer (detached)."""

    tokens_per_expert: Tensor  # [N'] pairs routed to each expert (before dropping)
    balance_loss: Tensor  # alpha1 * L_ExpBal + alpha2 * L_DevBal (0 when both factors are 0)
    expert_balance: Tensor  # sum_i f_i P_i (unscaled; 1.0 = perfectly uniform)
    dropped: Tensor  # pairs dropped by the capacity limit


def balance_losses(scores: Tensor, counts: Tensor, top_k: int, n_devices: int) -> tuple[Tensor, Tensor]:
    """(sum_i f_i P_i, sum_d f'_d P'_d) of Eq. 13-17 for one batch of T tokens.

    f_i = N'/(K'T) * #tokens choosing i;  P_i = mean_t s_{i,t};  f'_d = mean_{i in E_d} f_i;  P'_d = sum_{i in E_d} P_i.
    Both equal 1 under perfectly uniform routing; the loss is the factor times this value.
    """
    t, n = scores.shape
    f = counts.to(scores.dtype) * n / (top_k * t)
    p = scores.mean(0)
    exp_bal = (f * p).sum()
    dev_bal = (f.view(n_devices, -1).mean(1) * p.view(n_devices, -1).sum(1)).sum()
    return exp_bal, dev_bal


class Router(nn.Module):
    """Affinity scores, greedy top-k selection (optionally biased for balance), gate values."""

    def __init__(self, cfg: MoEConfig):
        super().__init__()
        self.cfg = cfg
        self.weight = nn.Parameter(torch.empty(cfg.n_routed, cfg.hidden_size))
        nn.init.normal_(self.weight, std=0.02)
        # V3 balancing bias: only shifts which experts are selected, never the gate values
        self.register_buffer("bias", torch.zeros(cfg.n_routed), persistent=True)

    def forward(self, x: Tensor, mask_top: int = 0, extra_k: int = 0) -> tuple[Tensor, Tensor, Tensor]:
        """x: [N, H] -> (scores [N, E] fp32, topk index [N, k], gate values [N, k]).

        mask_top > 0 disables each token's highest-affinity routed experts and re-selects top-k among the
        rest (the paper's redundancy analysis, Fig. 4); extra_k > 0 activates that many more experts (Fig. 5).
        Scores keep their original softmax normalisation in both cases.
        """
        logits = F.linear(x.float(), self.weight.float())  # fp32 routing, as DeepSeek/HF do
        scores = logits.softmax(-1) if self.cfg.scoring == "softmax" else logits.sigmoid()
        choose = scores + self.bias if self.cfg.bias_rate > 0 else scores
        if mask_top:
            choose = choose.scatter(1, torch.topk(scores, mask_top, dim=-1).indices, float("-inf"))
        idx = torch.topk(choose, self.cfg.top_k + extra_k, dim=-1).indices
        gate = scores.gather(1, idx)
        if self.cfg.norm_topk or self.cfg.scoring == "sigmoid" and self.cfg.top_k > 1:
            gate = gate / (gate.sum(-1, keepdim=True) + 1e-20)
        return scores, idx, gate * self.cfg.routed_scale

    @torch.no_grad()
    def update_bias(self, counts: Tensor) -> None:
        """b_i += gamma * sign(mean load - load_i): overloaded experts become less likely to be picked."""
        c = counts.float()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(c)  # every rank must hold the same bias
        self.bias += self.cfg.bias_rate * torch.sign(c.mean() - c)


class MoE(nn.Module):
    """Shared experts + routed fine-grained experts, dispatched by sorted grouped GEMMs.

    After each forward, `self.aux_loss` holds the differentiable balance loss (0-dim) and `self.stats`
    the detached `RouterStats`; `mask_top`, `extra_k` and `shared_enabled` are the knobs of the paper's
    specialization analyses (see `Router.forward`).
    """

    def __init__(self, cfg: MoEConfig):
        super().__init__()
        self.cfg = cfg
        h, i = cfg.hidden_size, cfg.expert_size
        self.shared = MLP(ModelConfig(hidden_size=h, intermediate_size=cfg.shared_width)) if cfg.shared_width else None
        if cfg.n_routed:
            self.router = Router(cfg)
            self.w13 = nn.Parameter(torch.empty(cfg.n_routed, h, 2 * i))  # gate ‖ up, laid out for x @ w
            self.w2 = nn.Parameter(torch.empty(cfg.n_routed, i, h))
            nn.init.normal_(self.w13, std=1 / math.sqrt(h))
            nn.init.normal_(self.w2, std=1 / math.sqrt(i))
        self.aux_loss: Tensor = torch.zeros(())
        self.stats: RouterStats | None = None
        self.mask_top = 0
        self.extra_k = 0
        self.shared_enabled = True

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        out = self.shared(x) if self.shared is not None and self.shared_enabled else torch.zeros_like(x)
        if self.cfg.n_routed:
            out = out + self._routed(x)
        return out.view(shape)

    def _routed(self, x: Tensor) -> Tensor:
        cfg = self.cfg
        scores, idx, gate = self.router(x, self.mask_top, self.extra_k)
        k = idx.shape[1]
        cap = None
        if cfg.capacity_factor is not None:
            cap = max(1, math.ceil(cfg.capacity_factor * x.shape[0] * k / cfg.n_routed))
        p: Plan = plan(idx, gate, cfg.n_routed, cap)
        y = run_experts(x, p, self.w13, self.w2)
        exp_bal, dev_bal = balance_losses(
            scores if cfg.scoring == "softmax" else scores / scores.sum(-1, keepdim=True), p.counts, k, cfg.n_devices
        )
        loss = cfg.alpha1 * exp_bal + cfg.alpha2 * dev_bal
        self.aux_loss = loss
        self.stats = RouterStats(p.counts.detach(), loss.detach(), exp_bal.detach(), p.dropped)
        if self.training and cfg.bias_rate > 0:
            self.router.update_bias(p.counts)
        return y
