"""SKM / SAW arithmetic, native and transformers paths, cached demonstrations vs the full sequence."""

from __future__ import annotations

import pytest
import torch

from lmlab.core.errors import LmlabError
from lmlab.wicl.attention import HFLM, NativeLM, RowState, WeightPlan, reweight, rows_active

from .conftest import tiny_hf

SPANS = [(1, 4), (4, 9), (9, 12)]  # three demonstrations after a 1-token BOS; prompt length 12


def _scores(B=2, H=3, T=4, S=15):
    torch.manual_seed(1)
    return torch.randn(B, H, T, S), SPANS


def test_uniform_weights_equal_plain_softmax():
    s, spans = _scores()
    kd = WeightPlan(spans).key_demo(s.shape[-1])
    for placement in ("skm", "saw", "both"):
        p = reweight(s, None, kd, torch.ones(2, 3), placement)
        torch.testing.assert_close(p, s.softmax(-1), rtol=0, atol=1e-6)


def test_skm_equals_scaling_keys():
    torch.manual_seed(2)
    q, k = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 15, 8)
    w = torch.tensor([[0.9, 1.1, 1.3], [1.2, 0.5, 1.0]])
    kd = WeightPlan(SPANS).key_demo(15)
    p = reweight(q @ k.transpose(-1, -2) / 8**0.5, None, kd, w, "skm")
    k2 = k.clone()
    for i, (b, e) in enumerate(SPANS):
        k2[:, :, b:e] *= w[:, i, None, None, None].view(2, 1, 1, 1)
    torch.testing.assert_close(p, (q @ k2.transpose(-1, -2) / 8**0.5).softmax(-1), rtol=1e-5, atol=1e-6)


def test_saw_preserves_demo_mass_and_rescales_within():
    s, spans = _scores()
    kd = WeightPlan(spans).key_demo(15)
    w = torch.tensor([[0.5, 1.0, 2.0], [1.1, 0.9, 1.0]])
    p0, p = s.softmax(-1), reweight(s, None, kd, w, "saw")
    demo = kd >= 0
    torch.testing.assert_close(p[..., demo].sum(-1), p0[..., demo].sum(-1))  # mass on demonstrations unchanged
    torch.testing.assert_close(p[..., ~demo], p0[..., ~demo])  # query tokens' own attention unchanged
    # within the demonstrations, demo i's share moves by w_i relative to the others
    r0 = p0[0, ..., 9:12].sum(-1) / p0[0, ..., 1:4].sum(-1)
    torch.testing.assert_close(p[0, ..., 9:12].sum(-1) / p[0, ..., 1:4].sum(-1), r0 * 4.0)
    # control: plain renormalised softmax reweighting does NOT preserve the demo mass
    naive = p0 * torch.where(demo, torch.ones(15), torch.ones(15))
    naive[0, ..., 9:12] *= 2.0
    naive = naive / naive.sum(-1, keepdim=True)
    assert not torch.allclose(naive[..., demo].sum(-1), p0[..., demo].sum(-1))


def test_heads_and_rows_selection():
    s, spans = _scores()
    kd = WeightPlan(spans).key_demo(15)
    w = torch.full((2, 3), 1.5)
    heads = torch.tensor([True, False, True])
    qrows = torch.tensor([False, True, True, True])
    p = reweight(s, None, kd, w, "skm", heads, qrows)
    full = reweight(s, None, kd, w, "skm")
    torch.testing.assert_close(p[:, 1], s.softmax(-1)[:, 1])
    torch.testing.assert_close(p[:, :, 0], s.softmax(-1)[:, :, 0])
    torch.testing.assert_close(p[:, 0, 1:], full[:, 0, 1:])


# ----------------------------------------------------------------------------------------------- model paths
PROMPT = [1, 5, 6, 7, 11, 12, 13, 14, 15, 21, 22, 23]
ROWS = [[30, 31, 32], [40, 41], [50, 51, 52, 53]]


def _plain_native(model, ids):
    cache = model.new_cache(1, len(ids))
    return model(torch.tensor([ids]), cache, logits="all").logits[0].float()


def _plan(placement, layers=None, heads=None):
    return WeightPlan(SPANS, placement, layers, heads)


def test_native_cached_equals_full_sequence(tiny_pair):
    _, native = tiny_pair
    lm = NativeLM(native, None)
    pre = lm.prefix(PROMPT)
    for W in (None, torch.ones(3, 3)):
        out = lm.logits_at(pre, ROWS, [list(range(len(r))) for r in ROWS], RowState(_plan("saw"), W))
        for r, lg in zip(ROWS, out):
            ref = _plain_native(native, PROMPT + r)[len(PROMPT) :]
            torch.testing.assert_close(lg, ref, rtol=1e-4, atol=1e-4)


def test_native_skm_equals_scaled_cached_keys(tiny_pair):
    _, native = tiny_pair
    lm = NativeLM(native, None)
    w = torch.tensor([0.7, 1.2, 1.5])
    out = lm.logits_at(lm.prefix(PROMPT), ROWS[:1], [[2]], RowState(_plan("skm"), w[None]))[0]
    cache = native.new_cache(1, 20)
    native(torch.tensor([PROMPT]), cache, logits="none")
    for layer_k in cache.k:
        for i, (b, e) in enumerate(SPANS):
            layer_k[:, :, b:e] *= w[i]
    ref = native(torch.tensor([ROWS[0]]), cache, logits="last").logits
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("placement", ["skm", "saw", "both"])
def test_native_and_transformers_agree(tiny_pair, placement):
    hf, native = tiny_pair
    W = torch.tensor([[0.9, 1.1, 1.0], [1.1, 1.1, 0.9], [0.5, 2.0, 1.0]])
    vis = torch.ones(3, len(PROMPT), dtype=torch.bool)
    vis[1, 4:9] = False  # MSP-style masking of demonstration 1 for row 1
    plan = _plan(placement, layers=[0, 2], heads=[0, 3])
    picks = [list(range(len(r))) for r in ROWS]
    a = NativeLM(native, None)
    b = HFLM(hf, None)
    la = a.logits_at(a.prefix(PROMPT), ROWS, picks, RowState(plan, W, vis))
    lb = b.logits_at(b.prefix(PROMPT), ROWS, picks, RowState(plan, W, vis))
    plain = a.logits_at(a.prefix(PROMPT), ROWS, picks, RowState(plan))
    for x, y, z in zip(la, lb, plain):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)
        assert (x - z).abs().max() > 10 * (x - y).abs().max()  # the weights do something (control)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2", "opt"])
def test_transformers_cached_equals_full_sequence(kind):
    m = tiny_hf(kind)
    lm = HFLM(m, None)
    W = torch.tensor([[0.8, 1.3, 1.1]])
    for placement in ("skm", "saw"):
        plan = _plan(placement)
        row = ROWS[2]
        cached = lm.logits_at(lm.prefix(PROMPT), [row], [list(range(len(row)))], RowState(plan, W))[0]
        st = RowState(plan, W, query_start=len(PROMPT))
        with rows_active(st), torch.no_grad():
            full = m(input_ids=torch.tensor([PROMPT + row])).logits[0, len(PROMPT) :].float()
        torch.testing.assert_close(cached, full, rtol=1e-4, atol=1e-4)
        with torch.no_grad():
            m.set_attn_implementation("eager")
            plain = m(input_ids=torch.tensor([PROMPT + row])).logits[0, len(PROMPT) :].float()
            m.set_attn_implementation("wicl")
        ones = lm.logits_at(lm.prefix(PROMPT), [row], [list(range(len(row)))], RowState(plan, torch.ones(1, 3)))[0]
        torch.testing.assert_close(ones, plain, rtol=1e-4, atol=1e-4)
        assert (cached - plain).abs().max() > 10 * (cached - full).abs().max()


def test_model_without_attention_interface_is_refused():
    m = tiny_hf("xglm")
    lm = HFLM(m, None)
    with pytest.raises(LmlabError, match="AttentionInterface"):
        lm.logits_at(lm.prefix(PROMPT), [ROWS[0]], [[0]], RowState(_plan("skm"), torch.ones(1, 3)))


@pytest.mark.parametrize("placement", ["skm", "saw", "both"])
def test_native_shared_prefix_equals_recompute(tiny_pair, placement):
    """The bench's two sides: rows on the shared prefix vs prompt + query recomputed per row with the weights on the
    query positions only (demonstrations then sit among the row's own keys)."""
    _, native = tiny_pair
    lm = NativeLM(native, None)
    W = torch.tensor([[0.9, 1.1, 1.3], [1.2, 0.5, 1.0], [1.0, 1.0, 2.0]])
    for plan in (_plan(placement), _plan(placement, layers=[1, 2], heads=[1, 2])):
        picks = [[len(r) - 1] for r in ROWS]
        shared = lm.logits_at(lm.prefix(PROMPT), ROWS, picks, RowState(plan, W))
        rows = [PROMPT + r for r in ROWS]
        st = RowState(plan, W)
        full = lm.logits_at(lm.prefix([]), rows, [[len(r) - 1] for r in rows], st, query_start=len(PROMPT))
        plain = lm.logits_at(lm.prefix(PROMPT), ROWS, picks, RowState(plan))
        for x, y, z in zip(shared, full, plain):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)
            assert (x - z).abs().max() > 10 * (x - y).abs().max()


def test_rows_below_the_first_weighted_layer_are_computed_once(tiny_pair):
    """Rows that differ only in their weights share their states below the first weighted layer: computing them once
    gives the numbers of computing each row on its own."""
    _, native = tiny_pair
    lm = NativeLM(native, None)
    pre = lm.prefix(PROMPT)
    W = torch.tensor([[0.9, 1.1, 1.3], [1.2, 0.5, 1.0], [1.0, 1.0, 2.0], [0.7, 1.0, 1.0]])
    vis = torch.ones(4, len(PROMPT), dtype=torch.bool)
    vis[3, 4:9] = False
    rows = [ROWS[0], ROWS[0], ROWS[1], ROWS[0]]
    plan = _plan("saw", layers=[2])
    both = lm.logits_at(pre, rows, [[1]] * 4, RowState(plan, W, vis))
    for i in range(4):
        one = lm.logits_at(pre, rows[i : i + 1], [[1]], RowState(plan, W[i : i + 1], vis[i : i + 1]))[0]
        torch.testing.assert_close(both[i], one, rtol=1e-5, atol=1e-5)
    assert (both[0] - both[1]).abs().max() > 1e-4  # same tokens, different weights: different logits
