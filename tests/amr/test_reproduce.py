"""The reproduction's summary and verdict logic on synthetic results (the training itself is tested elsewhere)."""

from __future__ import annotations

from lmlab.amr.reproduce import render, summarize, verdicts


def _run(f1, ci, curve):
    sub = {k: {"F1": f1} for k in ("SRL", "Reentrancies", "Concepts")}
    return {
        "smatch_snowblink": {"F1": f1 + 1, "F1 95% CI": f"[{ci[0] + 1}, {ci[1] + 1}]"},
        "smatch_ilp": {"F1": f1, "F1 95% CI": f"[{ci[0]}, {ci[1]}]"},
        "subscores": sub,
        "position_f1": {"nodes": curve, "edges": curve},
        "repaired": 0,
    }


def _results(seeds, rgl_f1, rgl_ci):
    down = [0.9 - 0.05 * b for b in range(10)]
    up = down[::-1]
    flat = [0.8] * 10
    runs = {
        "default (NLR)": {"test": {str(s): _run(50.0, (48.0, 52.0), down) for s in seeds}},
        "reverse (NRL)": {"test": {str(s): _run(49.0, (47.0, 51.0), up) for s in seeds}},
        "RGL": {"test": {str(s): _run(rgl_f1, rgl_ci, flat) for s in seeds}},
    }
    cfg = {
        "seeds": seeds,
        "max_target_tokens": None,
        "test_limit": None,
        "bio_limit": None,
        "beam": 5,
        "rgl_steps": 10,
        "plain": {"d_model": 8, "layers": 1, "steps": 10},
    }
    return {"config": cfg, "n_train": 10, "runs": runs, "seconds": 1.0}


def test_overlapping_cis_are_inconclusive():
    rows, curves = summarize(_results([0, 1, 2], 51.0, (49.0, 53.0)))
    v = verdicts(rows, curves, 3)
    assert v[0].holds is None and "inconclusive" in v[0].measured


def test_separated_cis_with_three_seeds_decide_and_curves_read_right():
    rows, curves = summarize(_results([0, 1, 2], 60.0, (58.0, 62.0)))
    v = {x.claim.split(" (")[0]: x for x in verdicts(rows, curves, 3)}
    assert v["RGL beats the default-order parser in Smatch"].holds is True
    assert v["Structure loss: default-order node F1 falls with position in the linearization"].holds is True
    assert v["The reverse parser mirrors it"].holds is True
    assert v["RGL flattens the tail"].holds is True


def test_one_seed_is_not_evidence(tmp_path):
    res = _results([0], 60.0, (58.0, 62.0))
    sec = render(res, tmp_path, quick=True)
    assert all(x.holds is None for x in sec.verdicts)
    assert (tmp_path / "amr_position_f1.png").is_file() and "Smatch++ (ILP)" in sec.markdown
