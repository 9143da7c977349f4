"""Each loss on toy tensors against values computed by hand (formulas spelled out in the comments)."""

from __future__ import annotations

import math

import torch

from lmlab.infocl.losses import freelb_backward, l2_project, sup_infonce


def test_sup_infonce_hand_computed_two_positives():
    # q0 = q1 = (1, 0) label 0, q2 = (0, 1) label 1; keys = q; queue = (-1, 0) label 0; tau = 0.5.
    q = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    got = sup_infonce(q, q, torch.tensor([[-1.0, 0.0]]), torch.tensor([0, 0, 1]), torch.tensor([0]), tau=0.5)
    # row 0: s/tau = [2, 2, 0, -2] - max 2 = [0, 0, -2, -4]; self = key 0; positives: key 1 and queue 0;
    # negatives: key 2 only, exp(-2). Each positive is normalised against itself plus the negatives.
    neg = math.exp(-2)
    lp1 = 0 - math.log(math.exp(0) + neg + 1e-6)
    lp3 = -4 - math.log(math.exp(-4) + neg + 1e-6)
    row0 = (lp1 + lp3) / 2  # row 1 is the same; row 2 has no positive and contributes 0 to the mean
    assert abs(float(got) - (-(2 * row0) / 3)) < 1e-6
    assert abs(float(got) - 0.751283) < 1e-5
    # control: SupCon's normalisation over all non-self entries (positives included) gives another value
    supcon_row0 = -((0 - math.log(1 + neg + math.exp(-4))) + (-4 - math.log(1 + neg + math.exp(-4)))) / 2
    assert abs(float(got) - 2 * supcon_row0 / 3) > 1e-2


def test_sup_infonce_single_positive_and_temperature():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    got = sup_infonce(q, q, torch.tensor([[1.0, 0.0]]), torch.tensor([0, 1]), torch.tensor([0]), tau=1.0)
    # row 0: s = [1, 0, 1] - 1 = [0, -1, 0]; positive: queue; negative: key 1 -> -log(1 + e^-1); row 1: none.
    assert abs(float(got) - math.log(1 + math.exp(-1) + 1e-6) / 2) < 1e-6


def test_sup_infonce_sharded_sum_equals_whole_batch():
    """What each data-parallel rank computes (its queries, all keys, its self positions), summed, is the loss."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    queue, ql = torch.randn(5, 8, generator=g), torch.tensor([0, 1, 2, 0, 1])
    y = torch.tensor([0, 1, 2, 0, 1, 1])
    whole = sup_infonce(q, k, queue, y, ql)
    parts = [
        sup_infonce(q[s], k, queue, y[s], ql, key_labels=y, self_index=torch.arange(6)[s], reduction="sum")
        for s in (slice(0, 3), slice(3, 6))
    ]
    assert torch.allclose(sum(parts) / 6, whole, atol=1e-6)


def test_l2_projection():
    d = torch.tensor([[3.0, 4.0], [0.1, 0.0]])
    out = l2_project(d, 0.3)
    assert torch.allclose(out[0], torch.tensor([0.18, 0.24])) and torch.equal(out[1], d[1])


def test_freelb_two_steps_by_hand():
    # loss(x + delta) = sum(w * (x + delta)); d loss / d delta = w; with K = 2:
    # delta_1 = Proj(0 + step * w / |w|); grad_w = (x + (x + delta_1)) / 2.
    w = torch.tensor([3.0, 4.0], requires_grad=True)
    x = torch.tensor([[1.0, 2.0]])
    total = freelb_backward(lambda z: (w * z).sum(), x, k=2, step=0.1, max_norm=0.3)
    delta1 = 0.1 * torch.tensor([0.6, 0.8])
    assert torch.allclose(w.grad, (x[0] + x[0] + delta1) / 2)
    assert abs(total - (11 + 11 + float((w.detach() * delta1).sum())) / 2) < 1e-5
    # a large step is projected back to the 0.3 ball
    w.grad = None
    freelb_backward(lambda z: (w * z).sum(), x, k=2, step=5.0, max_norm=0.3)
    assert torch.allclose(w.grad, (2 * x[0] + 0.3 * torch.tensor([0.6, 0.8])) / 2)
    # K = 1 is the clean loss
    w.grad = None
    freelb_backward(lambda z: (w * z).sum(), x, k=1)
    assert torch.allclose(w.grad, x[0])
