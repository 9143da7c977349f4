"""The reproduction's summary and verdict logic on synthetic results, and the job runner end to end on a tiny
configuration (inline and with two worker processes: the same numbers)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lmlab.amr.metrics import BINS
from lmlab.amr.reproduce import CONTROL, NLR_CONT, ReproConfig, position_stats, render, summarize, verdicts

DOWN = [0.9 - 0.05 * b for b in range(BINS)]


def _graph_counts(curve, seed, graphs=30):
    """Per-graph position counts [graphs][BINS][4]: 10 items per side and bin, matched ~ Binomial(10, curve[b])."""
    rng = np.random.default_rng(seed)
    m = rng.binomial(10, np.asarray(curve), size=(graphs, BINS))
    t = np.full_like(m, 10)
    return np.stack([m, t, m, t], axis=-1).tolist()


def _run(f1, ci, curve, seed=0):
    sub = {k: {"F1": f1} for k in ("SRL", "Reentrancies", "Concepts")}
    counts = _graph_counts(curve, seed)
    return {
        "smatch_snowblink": {"F1": f1 + 1, "F1 95% CI": f"[{ci[0] + 1}, {ci[1] + 1}]"},
        "smatch_ilp": {"F1": f1, "F1 95% CI": f"[{ci[0]}, {ci[1]}]"},
        "subscores": sub,
        "position_f1": {"nodes": curve, "edges": curve},
        "position_counts_graph": {"nodes": counts, "edges": counts},
        "repaired": 0,
    }


def _results(seeds, rgl_f1, rgl_ci, counts=True):
    up = DOWN[::-1]
    flat = [0.85] * BINS
    runs = {
        "default (NLR)": {"test": {str(s): _run(50.0, (48.0, 52.0), DOWN, s) for s in seeds}},
        "reverse (NRL)": {"test": {str(s): _run(49.0, (47.0, 51.0), up, 10 + s) for s in seeds}},
        NLR_CONT: {"test": {str(s): _run(50.5, (48.5, 52.5), DOWN, 20 + s) for s in seeds}},
        "RGL": {"test": {str(s): _run(rgl_f1, rgl_ci, flat, 30 + s) for s in seeds}},
    }
    if not counts:
        for splits in runs.values():
            for r in splits["test"].values():
                r.pop("position_counts_graph")
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


def _verdicts(res):
    rows, curves = summarize(res)
    return {x.claim.split(" (")[0].split(":")[0]: x for x in verdicts(rows, curves, 3, pos=position_stats(res, n=300))}


def test_overlapping_cis_are_inconclusive():
    rows, curves = summarize(_results([0, 1, 2], 51.0, (49.0, 53.0)))
    v = verdicts(rows, curves, 3)
    assert v[0].holds is None and "inconclusive" in v[0].measured


def test_position_claims_are_called_from_bootstrap_intervals():
    v = _verdicts(_results([0, 1, 2], 60.0, (58.0, 62.0)))
    assert v["RGL beats the default-order parser in Smatch"].holds is True
    for claim in (
        "Structure loss",
        "The reverse parser mirrors it",
        "RGL flattens the tail",
        "RGL's node-F1 gain over",
    ):
        hit = [x for k, x in v.items() if k.startswith(claim)]
        assert len(hit) == 1 and hit[0].status == "holds", (claim, hit)
        assert hit[0].seeds == 3 and isinstance(hit[0].interval, tuple)


def test_rgl_with_the_default_curve_does_not_flatten_the_tail():
    """The control that must fail: RGL with exactly NLR's per-graph position counts gains nothing anywhere."""
    res = _results([0, 1, 2], 60.0, (58.0, 62.0))
    for seed, row in res["runs"]["RGL"]["test"].items():
        row["position_counts_graph"] = res["runs"]["default (NLR)"]["test"][seed]["position_counts_graph"]
    v = _verdicts(res)
    flat = next(x for k, x in v.items() if k.startswith("RGL flattens the tail"))
    assert flat.status == "inconclusive" and flat.interval == (0.0, 0.0)


def test_position_claims_without_per_graph_counts_are_not_tested():
    v = _verdicts(_results([0, 1, 2], 60.0, (58.0, 62.0), counts=False))
    assert v["Structure loss"].status == "not tested" and "no interval" in v["Structure loss"].measured


def test_one_seed_is_not_evidence(tmp_path):
    res = _results([0], 60.0, (58.0, 62.0))
    sec = render(res, tmp_path, quick=True)
    assert all(x.holds is None for x in sec.verdicts)
    assert (tmp_path / "amr_position_f1.png").is_file() and "Smatch++ (ILP)" in sec.markdown
    assert "95% bootstrap CI over test graphs" in sec.markdown


@pytest.fixture(scope="module")
def tiny_cfg():
    from lmlab.amr.parser import TrainSettings

    st = TrainSettings(
        steps=3, warmup=1, d_model=16, layers=1, heads=2, ffn=32, batch_size=4, gate_dim=8, max_target=64, max_source=64
    )
    return ReproConfig(
        seeds=[0],
        max_target_tokens=32,
        train_limit=8,
        test_limit=2,
        bio_limit=1,
        beam=1,
        plain=st,
        rgl_steps=2,
        ablations=False,
        tokenizer="word",
        control_candidates=2,
        rgl_init="nlr",
        rgl_lr=5e-4,
        max_decode=12,
    )


def test_jobs_inline_and_in_two_workers_give_the_same_results(tiny_cfg, tmp_path, monkeypatch):
    from dataclasses import replace

    from lmlab.amr.reproduce import run_experiment

    monkeypatch.setenv("LMLAB_CACHE", str(tmp_path / "cache"))  # the spawned workers inherit it
    inline = run_experiment(tiny_cfg, tmp_path / "a", log=lambda *_: None)
    systems = {CONTROL, "default (NLR)", "reverse (NRL)", NLR_CONT, "RGL"}
    assert set(inline["runs"]) == systems
    assert all(set(inline["runs"][s]["test"]) == {"0"} and set(inline["runs"][s]["bio"]) == {"0"} for s in systems)
    assert len(inline["jobs"]) == 1 + 4 and inline["cpu_seconds"] > 0
    # a second run in two worker processes finds every parser in the cache and scores the same graphs
    pooled = run_experiment(replace(tiny_cfg, workers=2), tmp_path / "b", log=lambda *_: None)
    assert pooled["cpu_seconds_workers"] > 0
    for s in systems:
        for split in ("test", "bio"):
            for seed, row in inline["runs"][s][split].items():
                other = pooled["runs"][s][split][seed]
                assert other["ilp_counts"] == row["ilp_counts"], (s, split, seed)
                assert other["position_counts_graph"] == row["position_counts_graph"]
    saved = json.loads((tmp_path / "b" / "results.json").read_text())
    assert saved["runs"].keys() == pooled["runs"].keys()


def test_control_claim_with_a_disagreeing_seed_is_inconclusive_not_untested():
    """Every parser's pooled interval is above the constant graph, but one seed of one parser is below: the claim
    was measured and stays undecided ("inconclusive"); with every seed above it holds."""

    def comp(b, per_seed):
        return {"a": CONTROL, "b": b, "split": "test", "diff": sum(per_seed) / 3, "lo": 2.1, "hi": 5.0, "seeds": 3,
                "per_seed": per_seed}  # fmt: skip

    parsers = ("default (NLR)", "reverse (NRL)", "RGL")
    mixed = [comp(b, [-0.5, 4.9, 5.4] if b == "reverse (NRL)" else [5.0, 6.0, 4.0]) for b in parsers]
    v = verdicts([], {}, 3, comps=mixed)[0]
    assert v.claim.startswith("Control") and v.status == "inconclusive" and v.seeds == 3 and v.interval == (2.1, 5.0)
    v = verdicts([], {}, 3, comps=[comp(b, [5.0, 6.0, 4.0]) for b in parsers])[0]
    assert v.status == "holds"
