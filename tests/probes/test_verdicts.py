"""The probes section's verdicts from a fixture result: five claims, each with seeds (random inits, random
directions, or a deterministic Ridge fit) and an item-level bootstrap interval; a random-init control as good as
the trained model must not be called a learned encoding."""

import numpy as np

from lmlab.core.report import missing_evidence
from lmlab.probes.reproduce import CLAIMS, verdicts


def _items(noise: float, n: int = 120, seed: int = 0, layer: int = 10):
    rng = np.random.default_rng(seed)
    y = rng.uniform(3, 30, n)
    return {
        "layer": layer,
        "position": "last",
        "target": "sum",
        "y": list(y),
        "pred": list(y + rng.normal(0, noise, n)),
    }


def _lc(err: float, n: int = 120, seed: int = 0):
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.5, 1.5, n)
    sq = base * err * rng.uniform(0.8, 1.2, n)
    return {
        "layer": 5,
        "partial_r2": float(1 - sq.sum() / base.sum()),
        "sq_err": list(sq),
        "sq_err_digits_only": list(base),
    }


def _result(random_noise: float = 6.0, random_lc: float = 0.9):
    good = _items(0.5)
    return {
        "config": {"seed": 0},
        "items": {"a@a": good, "b@b": _items(0.6, seed=1), "last@sum": good, "acc": _items(0.3, seed=2)},
        "random_init_items": [{"seed": s, "last@sum": _items(random_noise, seed=10 + s)} for s in (0, 1)],
        "length_control": {"trained": _lc(0.3), "random_init": {**_lc(random_lc, seed=1), "seed": 0}},
        "length_control_random": [{**_lc(random_lc, seed=1 + s), "seed": s} for s in (0, 1)],
        "steering_test": {
            "score": [1.0, 0.5, 1.0, 0.5] * 10,
            "random_score": [0.0, 0.5, 0.0, 0.0] * 10,
            "random_directions": 3,
            "layers": [13, 18],
            "alpha_frac": 0.1,
            "prompts": 40,
            "up": 0.8,
            "down": 0.7,
            "random_up": 0.1,
            "random_down": 0.1,
        },
        "addition_accuracy": {"2": 0.5},
    }


def test_five_claims_each_with_its_evidence():
    v = verdicts(_result())
    assert [x.claim for x in v] == list(CLAIMS) and missing_evidence(v) == []
    assert [x.status for x in v] == ["holds", "holds", "holds", "holds", "holds"]
    assert v[1].seeds == [0, 1] and v[4].seeds == [0, 1, 2] and "deterministic" in v[0].seeds


def test_a_random_init_as_good_as_the_trained_model_is_no_evidence_of_learning():
    v = verdicts(_result(random_noise=0.5, random_lc=0.3))
    assert v[1].status == "does not hold" and v[2].status in ("inconclusive", "does not hold")


def test_a_result_without_items_lists_the_same_claims_untested():
    r = _result()
    del r["items"]
    v = verdicts(r)
    assert [x.claim for x in v] == list(CLAIMS) and {x.status for x in v} == {"not tested"}
