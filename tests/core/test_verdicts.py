"""Verdicts carry their evidence: seeds, an interval, and a status that an interval spanning the threshold cannot
turn into "holds" or "does not hold"."""

import numpy as np
import pytest

from lmlab.core.report import (
    Section,
    Verdict,
    bootstrap_ci,
    paired_bootstrap_diff,
    proportion_ci,
    verdict_from_interval,
    write_report,
)


def test_three_argument_verdict_keeps_working():
    assert Verdict("c", "m", True).status == "holds"
    assert Verdict("c", "m", False).status == "does not hold"
    assert Verdict("c", "m", None).status == "not tested"
    assert Verdict("c", "m", np.float64(1.0) < 2).holds is True  # numpy booleans from comparisons
    assert Verdict("c", "m", status="inconclusive").holds is None


def test_contradictory_status_is_refused():
    with pytest.raises(ValueError, match="contradicts"):
        Verdict("c", "m", True, status="inconclusive")
    with pytest.raises(ValueError, match="not one of"):
        Verdict("c", "m", status="maybe")


def test_interval_spanning_the_threshold_is_inconclusive():
    v = verdict_from_interval("A beats B", -0.1, 0.3, threshold=0.0, seeds=3)
    assert v.status == "inconclusive" and v.holds is None
    assert verdict_from_interval("ratio >= 2", 1.8, 2.4, threshold=2.0, seeds=[0, 1, 2]).status == "inconclusive"


def test_clear_gap_holds_or_does_not_hold():
    assert verdict_from_interval("A beats B", 0.2, 0.5, seeds=3).status == "holds"
    assert verdict_from_interval("A beats B", -0.5, -0.2, seeds=3).status == "does not hold"
    lower = verdict_from_interval("loss drops", -0.5, -0.2, seeds=3, higher_is_better=False)
    assert lower.status == "holds" and lower.holds is True


def test_one_seed_is_not_evidence():
    assert verdict_from_interval("A beats B", 0.2, 0.5, seeds=1).status == "inconclusive"
    assert verdict_from_interval("A beats B", 0.2, 0.5, seeds=1, min_seeds=1).status == "holds"


def test_bootstrap_finds_a_real_gap_and_not_a_null_one():
    rng = np.random.default_rng(1)
    a = rng.normal(1.0, 1.0, 200)
    _, lo, hi = paired_bootstrap_diff(a + 0.5, a + rng.normal(0, 0.3, 200))
    assert lo > 0.3 and hi < 0.7
    # control: two arms drawn from one distribution must not be called different (fixed seeds: deterministic)
    b = rng.normal(0.0, 1.0, 200)
    c = rng.normal(0.0, 1.0, 200)
    est, lo, hi = paired_bootstrap_diff(b, c)
    assert lo < 0 < hi
    assert verdict_from_interval("b beats c", lo, hi, seeds=200, min_seeds=1).status == "inconclusive"


def test_bootstrap_ci_covers_the_mean_and_is_reproducible():
    x = np.arange(20.0)
    est, lo, hi = bootstrap_ci(x)
    assert est == pytest.approx(9.5) and lo < 9.5 < hi
    assert bootstrap_ci(x) == (est, lo, hi)
    assert bootstrap_ci([3.0]) == (3.0, 3.0, 3.0)
    with pytest.raises(ValueError):
        paired_bootstrap_diff([1.0, 2.0], [1.0])


def test_report_shows_seeds_interval_and_counts_inconclusive(tmp_path):
    verdicts = [
        Verdict("old style", "3x", True),
        verdict_from_interval("spans", -0.1, 0.2, seeds=[0, 1, 2]),
        verdict_from_interval("clear", 0.1, 0.2, seeds=3),
        Verdict("refuted", "0.9x", False, seeds=3, interval="[0.85, 0.95]"),
    ]
    md_path, _ = write_report(tmp_path, [Section("sys", "Sys", "body", verdicts=verdicts)])
    text = md_path.read_text()
    assert "| claim | measured | seeds | interval | verdict |" in text
    assert "| sys | 0.000 | ok | 2/4 | 1 | 1 | 0 |" in text
    assert "_inconclusive_" in text and "3 (0, 1, 2)" in text and "[-0.1, 0.2]" in text


def test_wilson_interval_is_honest_at_zero():
    p, lo, hi = proportion_ci(0, 12)
    assert p == 0 and lo == 0 and 0.2 < hi < 0.3  # 0/12 does not show a rate below 5 %
    assert proportion_ci(0, 1000)[2] < 0.005
    p, lo, hi = proportion_ci(50, 100)
    assert lo == pytest.approx(0.404, abs=1e-3) and hi == pytest.approx(0.596, abs=1e-3)
