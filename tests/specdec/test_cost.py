"""Hardware-aware tree sizing: the measured pass-cost curve and the size rule built on it."""

from __future__ import annotations

from lmlab.specdec.cost import PassCost, best_size
from lmlab.specdec.eagle import _draft


def test_pass_cost_is_measured_monotone_and_interpolated(make_tiny, one_thread):
    m = make_tiny(0, vocab=64, layers=2, hidden=64)
    c = PassCost(m, widths=(1, 2, 4, 8), contexts=(16, 64), reps=1)
    for row in c.table.values():
        assert row[0] == 1.0 and all(b >= a >= 1.0 for a, b in zip(row, row[1:]))
    assert c(1, 40) == 1.0 and c(0, 40) == 1.0
    mid = c(3, 16)
    assert min(c.table[16][1], c.table[16][2]) <= mid <= max(c.table[16][1], c.table[16][2])
    assert c(16, 16) >= c(8, 16)  # past the widest measured pass: extrapolated, still rising
    assert c.step_seconds(16) > 0


def test_best_size_follows_the_cost_curve():
    gains = [[0.0, 0.6, 0.9, 1.05, 1.1, 1.12]]  # expected accepted draft tokens with the n best nodes
    flat = lambda n, ctx: 1.0  # noqa: E731  (a GPU-like curve: every width costs one step)
    steep = lambda n, ctx: 1.0 + 1.0 * (n - 1)  # noqa: E731
    assert best_size(gains, flat, 100, 0.1) == 5  # every extra node is free: verify them all
    assert best_size(gains, steep, 100, 0.1) == 0  # a node's expected gain never pays its cost
    mid = lambda n, ctx: 1.0 + 0.1 * max(0, n - 2)  # noqa: E731
    n = best_size(gains, mid, 100, 0.1)
    assert 0 < n < 5
    # a batch shares one padded pass: B rows at width n + 1 cost cost(B (n + 1)), so the batch drafts less
    assert best_size(gains * 4, mid, 100, 0.1) <= n
    assert best_size([[0.0]], flat, 100, 0.0) == 0  # nothing to verify


def test_draft_from_pool_keeps_ancestors_in_depth_order():
    # pool: root children 5 and 6; 5 has child 7, which has child 9
    toks, par, dep = [5, 6, 7, 9], [-1, -1, 0, 2], [1, 1, 2, 3]
    d = _draft(toks, par, dep, {3})  # a deep node brings its ancestors along, parents before children
    assert d.tokens == [5, 7, 9] and d.parents == [0, 1, 2]
    d = _draft(toks, par, dep, {0, 1, 2})
    assert d.tokens == [5, 6, 7] and d.parents == [0, 0, 1]
