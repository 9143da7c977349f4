"""RGL's two-pass self-distillation loss (paper eq. 5-7; official `seq2seq_trainer.py compute_loss`).

    L = r CE_ls(teacher) + (1 - r) CE_ls(student) + KL(softmax(z_teacher) || softmax(z_student))

- CE_ls: fairseq's label-smoothed NLL, eps = 0.1, eps_i = eps / |V|, averaged over ALL positions (pads zeroed
  but counted, as the official code does);
- KL: `F.kl_div(log_softmax(z_student), softmax(z_teacher), reduction='none').sum(-1).mean()`, weight 1, the
  teacher not detached by default (the official code does not detach; `detach_teacher=True` is the ablation);
- r = 0.8 (0.2 / 0.8)^(step / max_steps): geometric decay from 0.8 to 0.2, advanced once per loss call.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def label_smoothed_nll(logits: Tensor, target: Tensor, eps: float = 0.1, ignore_index: int = -100) -> Tensor:
    """fairseq `label_smoothed_nll_loss` averaged over all positions (ignored ones count as zero)."""
    lprobs = F.log_softmax(logits.float(), dim=-1)
    pad = target.eq(ignore_index)
    t = target.masked_fill(pad, 0).unsqueeze(-1)
    nll = -lprobs.gather(-1, t).squeeze(-1)
    smooth = -lprobs.sum(-1)
    eps_i = eps / lprobs.size(-1)
    loss = (1.0 - eps) * nll + eps_i * smooth
    return loss.masked_fill(pad, 0.0).mean()


def kl_teacher_student(z_teacher: Tensor, z_student: Tensor, detach_teacher: bool = False) -> Tensor:
    """KL(teacher || student) summed over the vocabulary, averaged over positions (official reduction)."""
    p_t = F.softmax((z_teacher.detach() if detach_teacher else z_teacher).float(), dim=-1)
    return F.kl_div(F.log_softmax(z_student.float(), dim=-1), p_t, reduction="none").sum(-1).mean()


def r_schedule(step: int, max_steps: int, start: float = 0.8, end: float = 0.2) -> float:
    """r = exp(-(k step + ln(1/start))) with k chosen so that r(max_steps) = end."""
    k = math.log(start / end) / max(1, max_steps)
    return math.exp(-(k * step + math.log(1 / start)))


def rgl_loss(
    z_teacher: Tensor,
    z_student: Tensor,
    target: Tensor,
    r: float,
    *,
    eps: float = 0.1,
    kl: bool = True,
    detach_teacher: bool = False,
) -> tuple[Tensor, dict[str, float]]:
    ce_t = label_smoothed_nll(z_teacher, target, eps)
    ce_s = label_smoothed_nll(z_student, target, eps)
    loss = r * ce_t + (1 - r) * ce_s
    kld = kl_teacher_student(z_teacher, z_student, detach_teacher) if kl else torch.zeros(())
    loss = loss + kld
    return loss, {
        "ce_teacher": float(ce_t.detach()),
        "ce_student": float(ce_s.detach()),
        "kl": float(kld.detach()),
        "r": r,
    }
