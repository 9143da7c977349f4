"""Dedup (exact + MinHash near-duplicates) and n-gram decontamination, with controls that must not be removed."""

from __future__ import annotations

import json

import pytest

from lmlab.core.errors import LmlabError
from lmlab.core.paths import shared_data
from lmlab.glan.quality import Decontaminator, dedup, load_benchmark_texts, stats_rows


def _row(q: str, d: str = "Algebra", a: str = "An answer.") -> dict:
    return {"instruction": q, "response": a, "discipline": d}


BASE = "Explain how the conservation of momentum applies when two carts collide on a frictionless track and stick together afterwards."


def test_exact_and_near_duplicates_removed_distinct_kept():
    rows = [
        _row(BASE),
        _row(BASE.upper() + "  "),  # exact after normalisation
        _row(BASE.replace("afterwards", "after the collision")),  # near duplicate (one phrase changed)
        _row("Derive the eigenvalues of a 2x2 rotation matrix and interpret them geometrically for a quarter turn."),
        _row("Explain how energy is conserved when a pendulum swings without air resistance, at the top and bottom."),
    ]
    rep = dedup(rows, threshold=0.6)
    assert rep.counts == {"exact_duplicate": 1, "near_duplicate": 1}
    assert [r["instruction"] for r in rep.kept] == [
        rows[0]["instruction"],
        rows[3]["instruction"],
        rows[4]["instruction"],
    ]


def test_decontamination_against_gsm8k():
    bench = load_benchmark_texts(shared_data("gsm8k", "test.jsonl"))
    assert len(bench) > 1000
    leaked = bench[7]
    rows = [_row("Please solve: " + leaked), _row(BASE), _row("What is 2 + 2?", a=leaked)]
    rep = Decontaminator(bench, n=10).filter(rows)
    assert rep.counts["contaminated"] == 2 and rep.kept == [rows[1]]  # the control survives


def test_stats_rates():
    kept = [_row(BASE, "A"), _row("q two is here", "A"), _row("q three", "B")]
    removed = [{**_row(BASE, "A"), "removed": "exact_duplicate"}, {**_row("x", "B"), "removed": "contaminated"}]
    by = {r["discipline"]: r for r in stats_rows(kept, removed)}
    assert by["A"]["rows"] == 2 and by["A"]["dup_rate"] == pytest.approx(1 / 3) and by["A"]["contam_rate"] == 0
    assert by["B"]["contam_rate"] == pytest.approx(0.5) and by["B"]["mean_q_words"] == 2


def test_bad_benchmark_file_is_one_line_error(tmp_path):
    p = tmp_path / "b.jsonl"
    p.write_text(json.dumps({"question": "ok"}) + "\n{broken\n")
    with pytest.raises(LmlabError, match=r"b.jsonl:2: invalid JSON"):
        load_benchmark_texts(p)
