"""Every verdict of the core section carries its evidence, and the evidence helpers are right: the range of
paired timing repeats, the item bootstrap, and the check that sections' tests run on their verdicts."""

import numpy as np
import pytest

from lmlab.core.report import (
    DETERMINISTIC,
    Verdict,
    bootstrap_ci,
    bootstrap_items,
    missing_evidence,
    repeat_range,
    verdict_from_interval,
)
from lmlab.core.reproduce import exactness_verdict, paired_timings, speed_verdicts


def test_missing_evidence_flags_a_bare_verdict_only():
    bare = Verdict("A beats B", "3x", True)
    assert missing_evidence([bare]) == ["'A beats B': seeds=None, interval=None"]
    ok = [
        Verdict("exact", "0 diff", True, seeds=f"{DETERMINISTIC} (no sampling)"),
        Verdict("not run", "skipped", None),
        verdict_from_interval("gap", 0.1, 0.2, seeds=[0, 1]),
    ]
    assert missing_evidence(ok) == []
    assert missing_evidence([Verdict("no interval", "x", True, seeds=[0, 1])])  # seeds alone are not enough


def test_repeat_range_is_the_distribution_free_median_interval():
    med, lo, hi, cover = repeat_range([2.1, 1.9, 2.4, 2.0, 2.2])
    assert (med, lo, hi) == (2.1, 1.9, 2.4) and cover == pytest.approx(1 - 1 / 16)
    # its coverage claim, checked by simulation: the range of 5 draws covers the true median ~94 % of the time
    rng = np.random.default_rng(0)
    draws = rng.lognormal(0.0, 0.3, size=(4000, 5))
    assert np.mean((draws.min(1) < 1.0) & (draws.max(1) > 1.0)) == pytest.approx(cover, abs=0.015)


def test_bootstrap_items_equals_the_mean_bootstrap_and_resamples_pairs_together():
    x = np.random.default_rng(3).normal(size=30)
    assert bootstrap_items(30, lambda ix: x[ix].mean()) == pytest.approx(bootstrap_ci(x))
    a = np.arange(1.0, 21.0)
    est, lo, hi = bootstrap_items(20, lambda ix: a[ix].sum() / (2 * a[ix]).sum())  # a ratio of paired sums
    assert est == lo == hi == 0.5
    assert bootstrap_items(1, lambda ix: 7.0) == (7.0, 7.0, 7.0)


def _times(ratio: float, spread: float, keys=("float32",), n=5):
    """Paired seconds whose per-repeat ratios (transformers / native) run evenly over ratio x (1 ± spread)."""
    hf = 4.0 + np.arange(n) / n
    r = ratio * (1 + spread * (np.linspace(-1, 1, n) if n > 1 else np.zeros(1)))
    return {"hf": list(hf), **{k: list(hf / r) for k in keys}}


def test_speed_claims_are_the_same_in_quick_and_full_mode_and_carry_evidence():
    quick = speed_verdicts(_times(3.0, 0.05), "float32", quick=True)
    full = speed_verdicts(_times(3.0, 0.05, ("float32", "bf16-weights", "int8")), "float32", quick=False)
    assert [v.claim for v in quick] == [v.claim for v in full] and len(quick) == 4
    assert missing_evidence(quick) == missing_evidence(full) == []
    assert [v.status for v in quick] == ["holds", "holds", "not tested", "not tested"]
    assert "quick mode" in quick[2].measured
    assert all(v.status == "holds" for v in full)
    assert "5 paired timing repeats" in full[0].seeds


def test_speed_ratios_near_or_below_the_target_are_not_called_holds():
    near = speed_verdicts(_times(2.0, 0.2), "float32", quick=True)[0]  # repeats straddle 2.0x
    assert near.status == "inconclusive"
    slow = speed_verdicts(_times(1.2, 0.05), "float32", quick=True)[0]
    assert slow.status == "does not hold"
    one = speed_verdicts(_times(3.0, 0.0, n=1), "float32", quick=True)[0]  # one repeat is no interval
    assert one.status == "inconclusive"


def test_exactness_is_deterministic_and_a_large_difference_fails():
    good, bad = exactness_verdict(1.2e-4, 38), exactness_verdict(0.05, 38)
    assert good.status == "holds" and bad.status == "does not hold"
    assert DETERMINISTIC in good.seeds and missing_evidence([good, bad]) == []


def test_paired_timings_interleave_after_one_warm_up():
    order = []
    times = paired_timings({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, 3)
    assert order == ["a", "b"] + ["a", "b"] * 3
    assert [len(v) for v in times.values()] == [3, 3]
