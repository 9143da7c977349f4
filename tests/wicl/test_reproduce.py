"""The reproduction's tables and verdicts, from synthetic per-seed rows (the model runs are tested elsewhere)."""

from __future__ import annotations

import numpy as np

from lmlab.wicl import reproduce as rep


def test_report_and_verdicts(monkeypatch, tmp_path):
    rng = np.random.default_rng(0)

    def fake_run_task(lm, task, cfg, out=None, log=None, compute=True):
        if not cfg.search:  # indicator study rows
            rows = []
            for s in cfg.seeds:
                acc = rng.uniform(0.5, 0.9, 9).tolist()
                ind = {"msp_span": acc, "msp_last_token": rng.uniform(0, 1, 9).tolist(), "validate": acc[::-1]}
                rho = {"msp_span": 0.9 + 0.01 * s % 3, "msp_last_token": 0.1 * (s % 2), "validate": -0.5}
                rows.append({"task": task.name, "seed": s, "indicator_study": {"skm": {"acc": acc, **ind, "rho": rho}}})
            return rows
        return [
            {"task": task.name, "seed": s, "icl_acc": 0.6, "skm": {"acc": 0.6 + 0.05 + 0.001 * s}, "saw": {"acc": 0.6}}
            for s in cfg.seeds
        ]

    monkeypatch.setattr(rep, "run_task", fake_run_task)
    monkeypatch.setattr(rep, "load_lm", lambda model: None)
    res = rep.reproduce(quick=True, out_dir=tmp_path)
    v = {x["claim"]: x["holds"] for x in res["verdicts"]}
    big = "beats uniform ICL by a large margin (>= 2 points)"
    assert v[f"WICL (SKM, MSP beam search) {big}"] is True  # +5 points, tight CI
    assert v["WICL (SKM, MSP beam search) beats uniform ICL"] is True
    assert v[f"WICL (SAW, MSP beam search) {big}"] is False  # exactly 0: 2 points excluded
    assert v["WICL (SAW, MSP beam search) beats uniform ICL"] is None  # exactly 0: inconclusive, not a loss
    assert v["MSP correlates with ICL accuracy (SKM)"] is True
    assert v["msp_span correlates with accuracy better than msp_last_token (SKM)"] is True
    assert v["msp_span correlates with accuracy better than validate (SKM)"] is True
    for x in res["verdicts"]:  # every verdict states its seeds and an interval
        assert x["seeds"] and x["interval"] is not None and x["status"] in ("holds", "does not hold", "inconclusive")
    assert "Best-correlating indicator (SKM, pooled): msp_span" in res["markdown"]
    assert len(res["per_task"]) == 2 * len(rep.QUICK["tasks"])


def test_report_only_uses_cached_seeds(monkeypatch, tmp_path):
    """An interrupted run's seeds give a report (compute=False runs nothing and says how many seeds it has)."""
    import json

    rows = [{"task": "trec", "seed": s, "icl_acc": 0.5, "skm": {"acc": 0.52}, "saw": {"acc": 0.5}} for s in range(3)]
    (tmp_path / "quick_smollm2-135m-instruct_trec.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(rep, "load_lm", lambda model: (_ for _ in ()).throw(AssertionError("no model needed")))
    res = rep.reproduce(quick=True, out_dir=tmp_path, compute=False)
    assert [(r["task"], r["n_seeds"]) for r in res["per_task"]] == [("trec", 3), ("trec", 3)]
    v = {x["claim"]: x for x in res["verdicts"]}
    assert v["WICL (SKM, MSP beam search) beats uniform ICL"]["seeds"] == 3
