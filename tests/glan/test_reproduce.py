"""The GLAN section end to end on a scripted backend (no model): two seeds, six claims, each with seeds and an
interval or marked deterministic / not tested; one discipline without rows in one seed refutes coverage."""

from lmlab.core.report import ReproduceContext, missing_evidence
from lmlab.glan.reproduce import run, verdicts

from .scripted import ScriptedBackend


def test_quick_section_pools_two_seeds_and_every_claim_has_evidence(tmp_path):
    sec = run(ReproduceContext(out_dir=tmp_path, quick=True), backend=ScriptedBackend())
    assert len(sec.verdicts) == 6 and missing_evidence(sec.verdicts) == []
    coverage, schema, sampling, resume, contamination, downstream = sec.verdicts
    assert coverage.seeds == [0, 1] and schema.seeds == [0, 1]
    assert resume.status == "holds" and "deterministic" in resume.seeds
    assert downstream.status == "not tested"
    assert set(sec.data["seeds"]) == {0, 1}


def _seed(seed, rows_per_discipline, contaminated=0):
    discs = [{"discipline": f"d{i}", "rows": r, "generated": 4} for i, r in enumerate(rows_per_discipline)]
    rows = [{"sessions": [1], "concepts": [1, 2]} for _ in range(sum(rows_per_discipline))]
    stats = {
        "stages": [{"calls": 20, "invalid": 0}],
        "disciplines": discs,
        "filters": {"contaminated": contaminated},
        "decontaminated_against": [{"file": "/x/gsm8k/test.jsonl"}],
        "decontam_n": 10,
    }
    return {"seed": seed, "stats": stats, "rows": rows}


def test_coverage_needs_every_discipline_in_every_seed():
    ok = verdicts([_seed(0, [2, 2, 2]), _seed(1, [2, 1, 2])], 3, 0, 0, 3)
    assert ok[0].status == "holds" and missing_evidence(ok) == []
    gap = verdicts([_seed(0, [2, 2, 2]), _seed(1, [2, 0, 2])], 3, 0, 0, 3)
    assert gap[0].status == "does not hold"
    one = verdicts([_seed(0, [2, 2, 2])], 3, 0, 0, 3)  # one seed's sample is not evidence
    assert one[0].status == "inconclusive" and one[2].status == "inconclusive"


def test_few_clean_rows_cannot_show_a_low_contamination_rate():
    few = verdicts([_seed(0, [2, 2, 2]), _seed(1, [2, 2, 2])], 3, 0, 0, 3)[4]
    assert few.status == "inconclusive" and few.interval[1] > 0.05  # 0/12: Wilson upper bound 24 %
    many = verdicts([_seed(0, [20, 20, 20]), _seed(1, [20, 20, 20])], 3, 0, 0, 3)[4]
    assert many.status == "holds"
    dirty = verdicts([_seed(0, [20, 20, 20], 30), _seed(1, [20, 20, 20], 30)], 3, 0, 0, 3)[4]
    assert dirty.status == "does not hold"
    rerun = verdicts([_seed(0, [2, 2, 2]), _seed(1, [2, 2, 2])], 3, 5, 0, 3)[3]
    assert rerun.status == "does not hold"
