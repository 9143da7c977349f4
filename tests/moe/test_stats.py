"""Across-seed evidence: t-intervals, pairing by seed, gap curves and their trend, and the verdicts built on them
(a control that must not hold, and noise that must stay inconclusive)."""

from __future__ import annotations

import math

import pytest
from scipy import stats as sps

from lmlab.moe import reproduce
from lmlab.moe.stats import arch_curve, gap_curve, gap_trend, paired, t_interval


def test_t_interval_matches_scipy():
    x = [4.61, 4.55, 4.70, 4.58]
    m, lo, hi = t_interval(x)
    ref = sps.t.interval(0.95, len(x) - 1, loc=sum(x) / len(x), scale=sps.sem(x))
    assert m == pytest.approx(sum(x) / 4) and (lo, hi) == pytest.approx(ref, rel=1e-12)
    assert t_interval([2.0]) == (2.0, 2.0, 2.0)  # one value: no spread to speak of
    with pytest.raises(ValueError):
        t_interval([])


def _runs(losses: dict[str, list[float]], curve_scale: float = 1.0) -> list[dict]:
    """Rows as run_all writes them; the curve at steps 10, 20 is loss + (2 - k) * curve_scale (k = 1, 2)."""
    return [
        {
            "arch": arch,
            "seed": seed,
            "val_loss": v,
            "curve": [{"step": 10 * k, "tokens": 640 * k, "val_loss": v + (2 - k) * curve_scale} for k in (1, 2)],
        }
        for arch, vals in losses.items()
        for seed, v in enumerate(vals)
    ]


def test_paired_pairs_by_seed_not_by_order():
    runs = _runs({"a": [1.0, 2.0, 3.0], "b": [1.5, 2.5, 3.5]})
    runs.reverse()  # order does not matter, the seed does
    runs.append({"arch": "a", "seed": 9, "val_loss": 0.0})  # no partner: left out
    p = paired(runs, "a", "b")
    assert p["seeds"] == [0, 1, 2] and p["diffs"] == pytest.approx([0.5, 0.5, 0.5])
    # identical differences: a zero-width interval; the across-seed spread of the levels (1..3) does not enter
    assert (p["mean"], p["lo"], p["hi"]) == pytest.approx((0.5, 0.5, 0.5))


def test_gap_curve_and_trend():
    # b - a = 0.1, 0.2, 0.3 at the end; the curve adds a per-arch offset at step 10 only for b (scale below)
    runs = _runs({"a": [1.0, 1.0, 1.0]}, curve_scale=0.0) + _runs({"b": [1.1, 1.2, 1.3]}, curve_scale=-0.05)
    g = gap_curve(runs, "a", "b")
    assert [p["step"] for p in g] == [10, 20] and all(p["seeds"] == 3 for p in g)
    assert g[1]["gap"] == pytest.approx(0.2) and g[0]["gap"] == pytest.approx(0.15)
    t = gap_trend(g)
    assert (t["from_step"], t["to_step"]) == (10, 20)
    assert (t["change"], t["lo"], t["hi"]) == pytest.approx((0.05, 0.05, 0.05))  # b falls behind by 0.05 per seed
    c = arch_curve(runs, "b")
    assert [p["tokens"] for p in c] == [640, 1280] and c[1]["mean"] == pytest.approx(1.2)
    assert gap_trend(g[:1]) is None


def _verdict(diffs: list[float]):
    runs = [{"arch": "gshard", "seed": s, "val_loss": 2.0} for s in range(len(diffs))]
    runs += [{"arch": "deepseekmoe", "seed": s, "val_loss": 2.0 - d} for s, d in enumerate(diffs)]
    return reproduce._paired_verdict(reproduce.paired(runs, "deepseekmoe", "gshard"), "DS beats GS", "GS − DS")


def test_verdicts_hold_fail_and_stay_inconclusive():
    assert _verdict([0.05, 0.06, 0.055]).status == "holds"
    assert _verdict([-0.05, -0.06, -0.055]).status == "does not hold"  # the control: DS worse in every seed
    v = _verdict([0.09, -0.14, 0.01])  # the 300-step quick numbers of the earlier report: seed noise
    assert v.status == "inconclusive" and v.interval[0] < 0 < v.interval[1]
    assert _verdict([0.05, 0.06]).status == "inconclusive"  # two seeds: below MIN_SEEDS, whatever the interval
    assert not math.isnan(v.interval[0]) and v.seeds == [0, 1, 2]
