"""CL metrics on a hand-made prediction history."""

from __future__ import annotations

import pytest

from lmlab.infocl.metrics import compute


def test_metrics_by_hand():
    tasks = [[0], [1]]
    y = [0, 0, 1, 1]
    preds = [[0, 0, 0, 0], [0, 1, 1, 1]]  # after task 1: class 0 perfect; after task 2: one of class 0 lost
    m = compute(tasks, y, preds)
    assert m["acc_matrix"] == [[100.0, None], [50.0, 100.0]]
    assert m["avg_acc"] == [100.0, 75.0] and m["final_acc"] == 75.0
    assert m["bwt"] == -50.0
    # forgetting (InfoCL, task mode): F1 of class 0 among seen classes: step 1 = 1.0; step 2: tp 1, fn 1, fp 0 -> 2/3
    assert m["forgetting"] == pytest.approx(100 * (1 - 2 / 3))


def test_analogous_split():
    tasks = [[0, 1], [2]]
    groups = {0: "bank", 1: "travel", 2: "bank"}  # class 0 has a later analogous class, 1 does not
    y = [0, 0, 1, 1, 2, 2]
    preds = [[0, 0, 1, 1, 0, 0], [2, 0, 1, 1, 2, 2]]
    m = compute(tasks, y, preds, groups)
    assert m["acc_old_with_later_analog"] == 50.0 and m["acc_old_without_later_analog"] == 100.0
    assert m["analogous_error_share"] == 100.0  # the one error on an old class went to its analogue


def test_paired_interval_and_verdict():
    from lmlab.core.report import missing_evidence
    from lmlab.infocl.reproduce import _holds, _verdict
    from lmlab.infocl.summary import paired, summarize

    res = [
        {"benchmark": "b", "method": m, "order": o, "final_acc": acc, "seconds": 1.0}
        for m, accs in (("x", [80.0, 82.0, 81.0]), ("y", [78.0, 79.0, 80.0]))
        for o, acc in enumerate(accs)
    ]
    d = paired(res, "b", "x", "y")
    assert d["diffs"] == [2.0, 3.0, 1.0] and d["mean"] == pytest.approx(2.0)
    half = 4.303 * 1.0 / 3**0.5  # t_{0.975, 2} * sd / sqrt(n)
    assert d["lo"] == pytest.approx(2.0 - half) and d["hi"] == pytest.approx(2.0 + half)
    assert _holds(d, +1) is None  # the interval [-0.48, 4.48] includes 0: inconclusive
    assert _holds({"lo": 0.5, "hi": 3.0}, +1) is True and _holds({"lo": 0.5, "hi": 3.0}, -1) is False
    # the report's verdicts: an interval spanning 0 reads "inconclusive" (it was measured), with orders and interval
    v = _verdict("x > y", "m", (d, +1))
    assert (v.status, v.seeds, v.interval) == ("inconclusive", 3, (d["lo"], d["hi"])) and not missing_evidence([v])
    win = {"lo": 0.5, "hi": 3.0, "n": 3}
    assert _verdict("x > y", "m", (win, +1)).status == "holds"
    assert _verdict("x < y", "m", (win, -1)).status == "does not hold"
    assert _verdict("both", "m", (win, +1), (d, +1)).status == "inconclusive"  # one of two undecided
    assert _verdict("both", "m", (win, +1), (win, -1)).status == "does not hold"
    assert _verdict("x > y", "n/a", (None, +1)).status == "not tested"  # fewer than 2 orders: not measured
    rows = summarize(res)
    assert rows[0]["final acc"] == "81.0 ± 1.0"
