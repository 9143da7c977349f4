"""The layer against first-principles references: dispatch vs a dense all-experts computation, the paper's
balance-loss equations written as loops, GShard capacity dropping, V3 bias balancing, and Dense/Switch/GShard
as configurations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmlab.core.errors import LmlabError
from lmlab.moe.dispatch import plan, run_experts
from lmlab.moe.layer import MoE, MoEConfig, balance_losses


def _dense_reference(x, idx, gate, w13, w2, keep=None):
    """Every expert on every token, combined with a one-hot gate matrix: no sorting, no grouping."""
    n, e = x.shape[0], w13.shape[0]
    g = torch.zeros(n, e, dtype=x.dtype).scatter_add(1, idx, gate * (keep if keep is not None else 1))
    h = torch.einsum("nh,ehf->enf", x, w13)
    a, b = h.chunk(2, dim=-1)
    y = torch.einsum("enf,efh->enh", F.silu(a) * b, w2)
    return torch.einsum("ne,enh->nh", g, y)


def test_dispatch_matches_dense_reference_forward_and_backward():
    n, h, i, e, k = 41, 16, 8, 7, 3
    x = torch.randn(n, h, requires_grad=True)
    w13 = torch.randn(e, h, 2 * i, requires_grad=True)
    w2 = torch.randn(e, i, h, requires_grad=True)
    gate = torch.rand(n, k, requires_grad=True)
    idx = torch.stack([torch.randperm(e)[:k] for _ in range(n)])
    y = run_experts(x, plan(idx, gate, e), w13, w2)
    ref = _dense_reference(x, idx, gate, w13, w2)
    assert torch.allclose(y, ref, atol=1e-4)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, w13, w2, gate), g)
    want = torch.autograd.grad(ref, (x, w13, w2, gate), g)
    for a, b in zip(grads, want):
        assert torch.allclose(a, b, atol=1e-3, rtol=1e-4)


def test_capacity_drops_lowest_priority_pairs_first():
    n, e, k, cap = 12, 3, 2, 4
    idx = torch.tensor([[0, 1]] * 8 + [[1, 0]] * 4)  # expert 0: 8 top-1 + 4 top-2 choices
    gate = torch.rand(n, k)
    p = plan(idx, gate, e, capacity=cap)
    assert p.counts.tolist() == [12, 12, 0]
    assert int(p.dropped) == 24 - 2 * cap
    # expert 0 keeps its first 4 top-1 choices (tokens 0..3), expert 1 its 4 top-1 choices (tokens 8..11)
    assert p.token.tolist() == [0, 1, 2, 3, 8, 9, 10, 11]
    x, w13, w2 = torch.randn(n, 6), torch.randn(e, 6, 8), torch.randn(e, 4, 6)
    keep = torch.zeros(n, k)
    keep[:4, 0] = 1
    keep[8:, 0] = 1
    assert torch.allclose(run_experts(x, p, w13, w2), _dense_reference(x, idx, gate, w13, w2, keep), atol=1e-4)


def test_balance_losses_follow_the_paper_equations():
    t, n, k, d = 10, 6, 2, 3
    scores = torch.rand(t, n).softmax(-1)
    idx = torch.topk(scores, k).indices
    counts = torch.bincount(idx.flatten(), minlength=n)
    exp_bal, dev_bal = balance_losses(scores, counts, k, d)
    # Eq. 13-14: f_i = N'/(K'T) sum_t 1(t selects i); P_i = 1/T sum_t s_it
    f = [n / (k * t) * sum(int(i in idx[j].tolist()) for j in range(t)) for i in range(n)]
    p = [sum(float(scores[j, i]) for j in range(t)) / t for i in range(n)]
    assert math.isclose(float(exp_bal), sum(fi * pi for fi, pi in zip(f, p)), rel_tol=1e-5)
    # Eq. 16-17: devices of n/d consecutive experts; f'_d = mean f, P'_d = sum P
    g = n // d
    want = sum(sum(f[j * g : (j + 1) * g]) / g * sum(p[j * g : (j + 1) * g]) for j in range(d))
    assert math.isclose(float(dev_bal), want, rel_tol=1e-5)
    # perfectly uniform routing gives exactly 1 for both
    u, c = torch.full((8, 4), 0.25), torch.full((4,), 4)
    assert [round(float(v), 6) for v in balance_losses(u, c, 2, 2)] == [1.0, 1.0]


def test_aux_loss_is_differentiable_and_scaled_by_alphas():
    cfg = MoEConfig(16, 8, n_routed=8, top_k=2, n_shared=1, alpha1=0.01, alpha2=0.05, n_devices=2)
    moe = MoE(cfg)
    moe(torch.randn(3, 10, 16))
    st = moe.stats
    assert st.tokens_per_expert.sum() == 60 and int(st.dropped) == 0
    assert float(moe.aux_loss.detach()) > 0.01 * 0.9  # >= alpha1 * ~1 + alpha2 * ~1
    moe.aux_loss.backward()
    assert moe.router.weight.grad is not None and moe.router.weight.grad.abs().sum() > 0


def test_dense_and_switch_are_configurations_of_the_same_layer():
    from lmlab.core.config import ModelConfig
    from lmlab.core.model import MLP

    dense = MoE(MoEConfig(16, 32, shared_size=32))
    mlp = MLP(ModelConfig(hidden_size=16, intermediate_size=32))
    mlp.load_state_dict(dense.shared.state_dict())
    x = torch.randn(5, 16)
    assert torch.equal(dense(x), mlp(x))
    switch = MoE(MoEConfig(16, 32, n_routed=4, top_k=1))
    _, idx, gate = switch.router(x)
    assert idx.shape == (5, 1) and torch.allclose(gate[:, 0], switch.router(x)[0].max(-1).values)


def test_bias_balancing_evens_out_a_skewed_router():
    torch.manual_seed(0)
    x = torch.randn(256, 16)

    def skewed(rate):
        torch.manual_seed(1)
        moe = MoE(MoEConfig(16, 8, n_routed=8, top_k=2, bias_rate=rate))
        with torch.no_grad():  # a diverse router with expert 0 favoured and expert 1 disfavoured
            moe.router.weight.normal_(0, 0.3)
            moe.router.weight[0] += 0.6 * x.mean(0).sign()
            moe.router.weight[1] -= 0.3 * x.mean(0).sign()
        moe.train()
        for _ in range(100):
            moe(x)
        moe.eval()
        moe(x)
        return moe.stats.tokens_per_expert.float()

    balanced, control = skewed(0.02), skewed(0.0)
    mean = 256 * 2 / 8
    assert control.max() > 1.5 * mean  # control: without balancing, expert 0 is overloaded
    assert balanced.max() < 1.4 * mean
    assert balanced.std() < 0.5 * control.std()


def test_masking_top_experts_and_disabling_shared():
    moe = MoE(MoEConfig(16, 8, n_routed=8, top_k=2, n_shared=1))
    x = torch.randn(7, 16)
    scores, idx, _ = moe.router(x)
    _, idx2, _ = moe.router(x, mask_top=2)
    assert not (set(idx2.flatten().tolist()) & set()) and all(
        not set(a) & set(b) for a, b in zip(idx.tolist(), idx2.tolist())
    )
    assert moe.router(x, extra_k=1)[1].shape == (7, 3)


@pytest.mark.parametrize(
    "bad",
    [
        dict(n_routed=4, top_k=5),
        dict(n_routed=6, top_k=2, n_devices=4),
        dict(),
        dict(n_routed=4, top_k=1, scoring="relu"),
    ],
)
def test_bad_configs_are_one_line_errors(bad):
    with pytest.raises(LmlabError):
        MoEConfig(16, 8, **bad)
