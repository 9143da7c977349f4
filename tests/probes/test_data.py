"""Data: prompt positions from tokenizer offsets, file validation with file:line errors, the seeded generator."""

from __future__ import annotations

import pytest

from lmlab.core.errors import LmlabError
from lmlab.probes import data as D


def test_positions_point_at_last_digits(smollm):
    probs = [D.Problem(0, 2, 87, 57, "test"), D.Problem(1, 5, 12345, 678, "test"), D.Problem(2, 1, 7, 7, "test")]
    ids, pos = D.encode(smollm.tokenizer, probs)
    for p, row, (pa, pb, pl) in zip(probs, ids, pos):
        toks = [smollm.tokenizer.decode([t]) for t in row]
        assert toks[pa].strip() == str(p.a)[-1] and toks[pa + 1].strip() == "and"
        assert toks[pb].strip() == str(p.b)[-1] and toks[pb + 1].strip() == "?"
        assert pl == len(row) - 1 and smollm.tokenizer.decode(row) == p.prompt()


def test_shared_file_and_split_subset():
    probs = D.load_problems()
    assert len(probs) == 9000 and all(p.a + p.b == p.sum for p in probs)
    sub = D.subset(probs, "train", 5, seed=1)
    assert len(sub) == 45 and {p.digits for p in sub} == set(range(2, 11)) and all(p.split == "train" for p in sub)
    assert sub == D.subset(probs, "train", 5, seed=1) != D.subset(probs, "train", 5, seed=2)


def test_generator_round_trip(tmp_path):
    probs = D.generate_problems(digits=[3, 7], per_digit=20, seed=3)
    assert all(len(str(p.a)) == p.digits and len(str(p.b)) == p.digits for p in probs)
    assert [p.split for p in probs[:20]].count("train") == 16
    assert (
        probs
        == D.generate_problems(digits=[3, 7], per_digit=20, seed=3)
        != D.generate_problems(digits=[3, 7], per_digit=20, seed=4)
    )
    D.write_problems(probs, tmp_path / "x.jsonl")
    assert D.load_problems(tmp_path / "x.jsonl") == probs


@pytest.mark.parametrize(
    "line, what",
    [
        ("{not json", "invalid JSON"),
        ('{"a": -3, "b": 4}', "'a' must be a positive integer"),
        ('{"a": 3, "b": 4, "split": "dev"}', "'split' is 'dev'"),
        ('{"a": 3, "b": 4, "golden": 8}', "golden 8 != a + b = 7"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, line, what):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"a": 1, "b": 2}\n' + line + "\n")
    with pytest.raises(LmlabError, match=f"bad.jsonl:2: .*{what[:12]}"):
        D.load_problems(f)
