"""Paired summaries and rank correlation used by the reproduction."""

from __future__ import annotations

import numpy as np
from scipy import stats

from lmlab.wicl.experiment import paired_summary, spearman


def test_paired_summary_matches_scipy():
    rng = np.random.default_rng(0)
    icl = rng.uniform(0.5, 0.7, 10)
    wicl = icl + rng.normal(0.02, 0.01, 10)
    rows = [{"icl_acc": a, "skm": {"acc": b}} for a, b in zip(icl, wicl)]
    s = paired_summary(rows, "skm")
    assert s["n_seeds"] == 10 and abs(s["diff_mean"] - (wicl - icl).mean()) < 1e-12
    assert abs(s["t_p"] - stats.ttest_rel(wicl, icl).pvalue) < 1e-12
    assert s["diff_ci"][0] > 0 and s["wins_ties_losses"][0] >= 8
    same = paired_summary([{"icl_acc": 0.5, "skm": {"acc": 0.5}}] * 3, "skm")  # no difference: no p-value, CI a point
    assert same["t_p"] is None and same["diff_ci"] == [0.0, 0.0]


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert spearman([1, 1, 1], [1, 2, 3]) is None
