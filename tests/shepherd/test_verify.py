"""Best-of-N selection rules, subset averaging, bootstrap intervals, and an oracle control."""

from __future__ import annotations

import random

import numpy as np
import pytest

from lmlab.shepherd.verify import METHODS, Candidate, bootstrap_ci, evaluate, per_problem_accuracy, pick


def C(answer, correct, prm=0.0, orm=0.0):
    return Candidate(["x"], answer, correct, prm, orm)


def test_selection_rules():
    cands = [C("5", False, 0.1, 0.8), C("5", False, 0.2, 0.1), C("7", True, 0.9, 0.3)]
    assert pick(cands, "sc") is False  # majority: 5
    assert pick(cands, "prm") is True  # highest min-step score
    assert pick(cands, "orm") is False  # highest outcome score
    assert pick(cands, "sc_prm") is True  # 7: 0.9 > 5: 0.1 + 0.2
    assert pick([C(None, False), C(None, False)], "sc") is False
    assert pick([C("3", True), C("4", False)], "sc") is True  # tie -> the answer seen first
    with pytest.raises(ValueError):
        pick(cands, "best")


def test_subsets_and_oracle_control():
    rng = random.Random(0)
    cands = []
    for _ in range(40):
        cs = []
        for _ in range(16):
            ok = rng.random() < 0.3
            cs.append(C("1" if ok else str(rng.randint(2, 4)), ok, prm=float(ok), orm=rng.random()))
        cands.append(cs)
    frac = np.array([np.mean([c.correct for c in cs]) for cs in cands])
    assert per_problem_accuracy(cands, 1, "prm") == pytest.approx(frac)  # N=1: every method is the sample itself
    for m in METHODS:
        assert per_problem_accuracy(cands, 1, m) == pytest.approx(frac)
    r = evaluate(cands, [1, 4, 16])
    assert r["accuracy"]["prm"] == pytest.approx(r["pass_at_n"])  # a perfect PRM reaches pass@N exactly
    assert r["accuracy"]["orm"][-1] < r["pass_at_n"][-1]  # a random ORM does not (control)
    assert set(r) == {"n", "accuracy", "ci95", "pass_at_n"} and set(r["accuracy"]) == set(METHODS)
    for m in METHODS:
        for acc, (lo, hi) in zip(r["accuracy"][m], r["ci95"][m]):
            assert lo <= acc <= hi


def test_bootstrap():
    assert bootstrap_ci(np.ones(30)) == (1.0, 1.0)
    v = np.random.default_rng(0).random(400) < 0.4
    lo, hi = bootstrap_ci(v.astype(float))
    assert lo < v.mean() < hi and 0.05 < hi - lo < 0.15  # ~ 2 * 1.96 * sqrt(.24 / 400) = 0.096


def test_reward_models_rank_only_answered_solutions():
    cands = [C(None, False, prm=0.99, orm=0.99), C("3", True, prm=0.2, orm=0.2)]
    assert pick(cands, "prm") is True and pick(cands, "orm") is True
