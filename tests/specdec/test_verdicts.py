"""The specdec section's verdicts from fixture benchmark rows: six claims whatever ran, each with seeds and a
prompt-bootstrap interval (or deterministic / not tested), and no claim resting on one trained draft is called."""

import numpy as np

from lmlab.core.report import missing_evidence
from lmlab.specdec.bench import summarise
from lmlab.specdec.reproduce import verdicts

SPEED = {"ar": 1.0, "sps": 1.2, "pld": 1.1, "eagle": 1.8, "eagle_pld": 1.7, "selfq4": 1.5, "layerskip": 1.3}


def _rows(speeds: dict[str, float], n: int = 12, noise: float = 0.05, hf=True):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        methods = {}
        for m, s in {**speeds, **({"hf_ar": 0.5, "hf_assisted": 0.6} if hf else {})}.items():
            secs = 64 / (30 * s * (1 + rng.uniform(-noise, noise)))
            spec = m not in ("ar", "hf_ar")
            passes = 20 if spec else 0
            methods[m] = {
                "tokens": 64,
                "seconds": secs,
                "identical": True,
                "passes": passes,
                "accepted": 40 if spec else 0,
                "tries": 60 if spec else 0,
                "depth": 60 if spec else 0,
                "proposed": 60 if spec else 0,
                "draft_s": 0.2 * secs if spec else 0.0,
                "verify_s": 0.7 * secs if spec else 0.0,
                "rounds": passes,
            }
        rows.append({"id": i, "category": f"c{i % 3}", "methods": methods})
    return rows


def _res(rows):
    res = summarise(rows, tuple(rows[0]["methods"]))
    res["rows"] = rows
    return res


CAL = {"skip": [3, 5, 7], "keep": list(range(27)), "agreement": 0.8}


def test_six_claims_with_evidence_and_one_draft_seed_decides_nothing_trained():
    res = _res(_rows(SPEED))
    one = verdicts(res, {"draft": [0], "eagle": [0]}, CAL)
    assert len(one) == 6 and missing_evidence(one) == []
    lossless, eagle, best, hf_gain, formula, layerskip = one
    assert lossless.status == "holds" and "deterministic" in lossless.seeds
    assert eagle.status == "inconclusive" and "one draft-training seed" in eagle.measured  # eagle is clearly fastest
    assert best.status == "inconclusive"  # the best (eagle) rests on its trained head
    assert layerskip.status == "holds" and isinstance(layerskip.seeds, str)  # no training: prompts are the evidence
    seed1 = _res(_rows({m: SPEED[m] * 0.97 for m in ("ar", "sps", "eagle", "eagle_pld")}))  # trained methods only
    two = verdicts(res, {"draft": [0, 1], "eagle": [0, 1]}, CAL, [seed1])
    assert two[1].status == "holds" and two[2].status == "does not hold"  # 1.8x is below the 2.0x target
    assert two[1].seeds == [0, 1] and "one draft-training seed" not in two[1].measured
    assert missing_evidence(two) == []


def test_no_gain_is_not_called_a_gain():
    res = _res(_rows({**SPEED, "layerskip": 1.0}, noise=0.2))
    assert verdicts(res, {"draft": [0], "eagle": [0]}, CAL)[5].status in ("inconclusive", "does not hold")


def test_the_claim_list_does_not_depend_on_what_ran():
    full = verdicts(_res(_rows(SPEED)), {"draft": [0], "eagle": [0]}, CAL)
    few = verdicts(_res(_rows({"ar": 1.0, "pld": 1.1}, hf=False)), {}, None)
    assert [v.claim for v in few] == [v.claim for v in full]
    statuses = [v.status for v in few]
    assert statuses[1] == statuses[3] == statuses[5] == "not tested"
    assert statuses[2] == "does not hold"  # pld needs no training: 1.1x over 12 prompts is clearly below 2.0x
    assert missing_evidence(few) == []
    rows = _rows(SPEED)
    rows[3]["methods"]["pld"]["identical"] = False
    assert verdicts(_res(rows), {"draft": [0], "eagle": [0]}, CAL)[0].status == "does not hold"
