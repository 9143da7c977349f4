"""Golden tests of both Smatch scorers, the sub-scores and the position analysis on small hand graphs."""

from __future__ import annotations

import io

import pytest

from lmlab.amr.graphs import parse_graph
from lmlab.amr.metrics import BINS, evaluate, smatch_ilp, smatch_snowblink

GOLD = [
    "(w / want-01 :ARG0 (b / boy) :ARG1 (g / go-01 :ARG0 b :polarity -))",
    '(p / person :name (n / name :op1 "Tom") :wiki "Tom_X" :ARG0-of (r / run-02))',
]
PRED = [
    "(w / want-01 :ARG0 (b / boy) :ARG1 (g / go-01 :ARG1 b))",
    '(p / person :name (n / name :op1 "Tom") :ARG0-of (r / run-01))',
]


def test_snowblink_matches_official_corpus_scorer():
    import smatch

    ours, counts = smatch_snowblink(PRED, GOLD, seed=0)
    smatch.match_triple_dict.clear()
    p, r, f = next(smatch.score_amr_pairs(io.StringIO("\n\n".join(PRED) + "\n"), io.StringIO("\n\n".join(GOLD) + "\n")))
    assert ours.f1 == pytest.approx(f, abs=1e-9) and ours.precision == pytest.approx(p, abs=1e-9)
    # hand count, pair 1: TOP, 4 nodes... pred 7 triples (3 instances + TOP + 3 edges), gold 8; 6 match
    assert counts[0] == (6, 7, 8)


def test_ilp_matches_smatchpp_printer_and_is_deterministic():
    from smatchpp import Smatchpp, eval_statistics, solvers
    from smatchpp.formalism.amr import tools as amrtools

    ours, _ = smatch_ilp(PRED, GOLD)
    ref = Smatchpp(
        alignmentsolver=solvers.ILP(),
        graph_standardizer=amrtools.AMRStandardizer(),
        printer=eval_statistics.ResultPrinter(score_type="micro", do_bootstrap=False, output_format="json"),
    )
    res, _ = ref.score_corpus(PRED, GOLD)
    assert 100 * ours.f1 == pytest.approx(float(res["main"]["F1"]["result"]), abs=0.01)
    assert smatch_ilp(PRED, GOLD)[0].f1 == ours.f1
    assert ours.ci[0] <= ours.f1 <= ours.ci[1]


def test_identical_graphs_score_one_everywhere():
    gs = [parse_graph(s) for s in GOLD]
    e = evaluate(gs, gs)
    assert e.snowblink.f1 == 1.0 and e.ilp.f1 == 1.0
    assert e.subscores["Negations"].f1 == 1.0 and e.subscores["Wikification"].f1 == 1.0
    assert all(v in (None, 1.0) for v in e.positions["nodes"] + e.positions["edges"])


def test_subscores_on_hand_graphs():
    e = evaluate([parse_graph(s) for s in PRED], [parse_graph(s) for s in GOLD])
    s = e.subscores
    assert s["Negations"].recall == 0.0  # the only negated concept (go-01) lost its :polarity
    assert s["Wikification"].recall == 0.0 and s["Wikification"].precision == 0.0
    assert s["Frames"].f1 == pytest.approx(2 / 3)  # want-01, go-01 right; run-01 vs run-02 wrong
    assert s["No WSD"].f1 == 1.0  # senses ignored
    assert s["Named Ent."].f1 == 1.0
    # SRL: gold ARG0(w,b) ARG1(w,g) ARG0(g,b) ARG0(r,p); pred ARG0(w,b) ARG1(w,g) ARG1(g,b) ARG0(r,p)
    assert s["SRL"].f1 == pytest.approx(3 / 4)
    assert s["Reentrancies"].recall == pytest.approx(1 / 2)  # boy: ARG0 of want kept, ARG0 of go lost


def test_positions_find_errors_at_the_end():
    gold = parse_graph("(a / a :op1 (b / b) :op2 (c / c) :op3 (d / d) :op4 (e / e) :op5 (f / zz))")
    pred = parse_graph("(a / a :op1 (b / b) :op2 (c / c) :op3 (d / d) :op4 (e / e) :op5 (f / yy))")
    pos = evaluate([pred], [gold]).positions["nodes"]
    assert len(pos) == BINS
    known = [v for v in pos if v is not None]
    assert known[-1] == 0.0 and all(v == 1.0 for v in known[:-1])


def _counts(rng, graphs: int, f1_by_bin, seeds: int = 3):
    """Synthetic per-graph position counts [seeds, graphs, BINS, 4]: 10 items per side and bin, matched ~ f1."""
    import numpy as np

    out = np.zeros((seeds, graphs, BINS, 4))
    for b, f in enumerate(f1_by_bin):
        m = rng.binomial(10, f, size=(seeds, graphs))
        out[..., b, :] = np.stack([m, np.full_like(m, 10), m, np.full_like(m, 10)], axis=-1)
    return out


def test_position_bootstrap_point_estimates_are_the_pooled_curve():
    import numpy as np

    from lmlab.amr.metrics import position_bootstrap, position_f1

    rng = np.random.default_rng(0)
    a = _counts(rng, 40, [0.9 - 0.08 * b for b in range(BINS)])
    st = position_bootstrap(a, n=200)
    assert st["f1"] == pytest.approx(position_f1(a.sum(axis=(0, 1))))
    assert all(lo <= f <= hi for f, lo, hi in zip(st["f1"], st["lo"], st["hi"]))
    assert st["late_minus_early"] < 0 and st["lme_hi"] < 0  # a falling curve: structure loss, CI below 0
    assert st["seeds"] == 3 and len(st["per_seed_lme"]) == 3 and all(x < 0 for x in st["per_seed_lme"])


def test_position_bootstrap_difference_is_paired_and_antisymmetric():
    import numpy as np

    from lmlab.amr.metrics import position_bootstrap

    rng = np.random.default_rng(1)
    a = _counts(rng, 40, [0.8 - 0.05 * b for b in range(BINS)])
    b = _counts(rng, 40, [0.8] * BINS)  # gains only late: the mechanism RGL claims
    same = position_bootstrap(a, a, n=200)
    assert all(x == 0 for x in same["f1"]) and same["lme_lo"] == same["lme_hi"] == 0  # control: no difference at all
    ab, ba = position_bootstrap(a, b, n=200), position_bootstrap(b, a, n=200)
    assert ab["late_minus_early"] == pytest.approx(-ba["late_minus_early"])
    assert ab["lme_lo"] == pytest.approx(-ba["lme_hi"])  # the same replicates on both sides
    assert ab["lme_lo"] > 0 and ab["late"] > ab["early"]
