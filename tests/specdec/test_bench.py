"""The benchmark runs what can run here and lists the rest as skipped, with the reason (one method's error
never discards the other methods' results)."""

from __future__ import annotations

import json

from lmlab.core.errors import LmlabError
from lmlab.specdec import bench


def _question_file(tmp_path):
    p = tmp_path / "q.jsonl"
    p.write_text(json.dumps({"question_id": 1, "category": "writing", "turns": ["Name two colours."]}) + "\n")
    return p


def test_methods_that_cannot_run_are_skipped_with_their_reason(smollm, tmp_path, monkeypatch):
    real = bench.make_drafter

    def make(lm, method, **kw):
        if method == "selfq4":
            raise LmlabError("selfq4 needs something this machine lacks")
        return real(lm, method, **kw)

    monkeypatch.setattr(bench, "make_drafter", make)
    monkeypatch.setattr(bench, "load_model", lambda name, dtype: smollm)
    res = bench.run_bench(
        "smollm", _question_file(tmp_path), None, 8, ("ar", "pld", "selfq4"), tmp_path / "b.json", log=lambda s: None
    )
    assert set(res["overall"]) == {"ar", "pld"} and res["overall"]["pld"]["lossless"]
    assert res["skipped"] == {"selfq4": "selfq4 needs something this machine lacks"}
    assert "`selfq4` skipped: selfq4 needs something" in bench.table(res)
    assert json.loads((tmp_path / "b.json").read_text())["skipped"] == res["skipped"]


def test_a_method_failing_mid_run_is_dropped_not_the_run(smollm, tmp_path, monkeypatch):
    real = bench.spec_generate

    def flaky(model, tok, drafter, ids, params, stats=None):
        if type(drafter).__name__ == "PromptLookup":
            raise KeyError("broken drafter")
        return real(model, tok, drafter, ids, params, stats=stats)

    monkeypatch.setattr(bench, "spec_generate", flaky)
    monkeypatch.setattr(bench, "load_model", lambda name, dtype: smollm)
    res = bench.run_bench("smollm", _question_file(tmp_path), None, 8, ("ar", "pld"), None, log=lambda s: None)
    assert set(res["overall"]) == {"ar"} and res["skipped"] == {"pld": "KeyError: 'broken drafter'"}
