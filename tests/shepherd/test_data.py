"""Data model, formats (Math-Shepherd, trl, GSM8K), the synthetic world and exact step truth."""

from __future__ import annotations

import json

import pytest

from lmlab.core.data import write_jsonl
from lmlab.core.errors import LmlabError
from lmlab.shepherd import data as D
from lmlab.shepherd.truth import step_truth
from lmlab.shepherd.world import Difficulty, make_problems

# A row in the released Math-Shepherd format (abridged from the GSM8K part of the data set).
RELEASED = {
    "input": "Janet\u2019s ducks lay 16 eggs per day. How much does she make? Step 1: Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day. \u043a\u0438\n"
    "Step 2: She makes 9 * 2 = $<<9*2=18>>18 every day at the farmer\u2019s market. \u043a\u0438\nStep 3: The answer is: 18 \u043a\u0438",
    "label": "Janet\u2019s ducks lay 16 eggs per day. How much does she make? Step 1: Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day. +\n"
    "Step 2: She makes 9 * 2 = $<<9*2=18>>18 every day at the farmer\u2019s market. -\nStep 3: The answer is: 18 -",
    "task": "GSM8K",
}


def test_released_row_parses():
    s = D.from_math_shepherd(RELEASED, "x:1")
    assert s.question == "Janet\u2019s ducks lay 16 eggs per day. How much does she make?"
    assert len(s.steps) == 3 and s.steps[2] == "The answer is: 18"
    assert s.labels == [1.0, 0.0, 0.0]
    assert s.answer == "18"
    assert D.to_math_shepherd(s) == {k: RELEASED[k] for k in ("input", "label")}  # exact round trip


def test_formats_round_trip(tmp_path):
    sols = [
        D.StepSolution(
            p.question, p.steps + [f"#### {p.answer}"], [1.0] * len(p.steps) + [0.0], p.answer, p.answer, p.id
        )
        for p in make_problems(20, seed=3)
    ]
    write_jsonl(tmp_path / "ms.jsonl", (D.to_math_shepherd(s) for s in sols))
    write_jsonl(tmp_path / "trl.jsonl", (D.to_trl(s) for s in sols))
    write_jsonl(tmp_path / "own.jsonl", (D.to_row(s) for s in sols))
    for back in (D.read_math_shepherd(tmp_path / "ms.jsonl"), D.read_trl(tmp_path / "trl.jsonl")):
        assert [(b.question, b.steps, b.labels) for b in back] == [(s.question, s.steps, s.labels) for s in sols]
    assert D.read_solutions(tmp_path / "own.jsonl") == sols
    row = json.loads((tmp_path / "trl.jsonl").read_text().splitlines()[0])
    assert set(row) == {"prompt", "completions", "labels"} and row["labels"][-1] is False


def test_gsm8k_reader():
    from lmlab.core.paths import shared_data

    probs = D.read_gsm8k(shared_data("gsm8k", "test.jsonl"))
    assert len(probs) == 1319
    assert probs[0].answer == "18" and probs[0].steps[0] == "Janet sells 16 - 3 - 4 = 9 duck eggs a day."
    assert all("<<" not in s for p in probs for s in p.steps)


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "invalid JSON"),
        ('{"question": "q"}', "missing field 'answer'"),
        ('{"question": "q", "answer": "no final line"}', "#### <number>"),
    ],
)
def test_malformed_gsm8k_names_the_line(tmp_path, line, message):
    f = tmp_path / "g.jsonl"
    f.write_text('{"question": "q", "answer": "1+1=2\\n#### 2"}\n' + line + "\n")
    with pytest.raises(LmlabError) as e:
        D.read_gsm8k(f)
    assert f"{f}:2:" in str(e.value) and message in str(e.value)


def test_malformed_math_shepherd_and_trl(tmp_path):
    bad_label = dict(RELEASED, label=RELEASED["label"].replace(" +\n", " ?\n"))
    f = tmp_path / "ms.jsonl"
    f.write_text(json.dumps(RELEASED) + "\n" + json.dumps(bad_label) + "\n")
    with pytest.raises(LmlabError, match=r"ms.jsonl:2: 'label' does not match 'input' at step 1"):
        D.read_math_shepherd(f)
    t = tmp_path / "trl.jsonl"
    t.write_text(json.dumps({"prompt": "q", "completions": ["a", "b"], "labels": [True]}) + "\n")
    with pytest.raises(LmlabError, match=r"trl.jsonl:1: 2 completions but 1 labels"):
        D.read_trl(t)


def test_answers():
    assert D.extract_answer("3 + 4 = 7\n#### 7\n") == "7"
    assert D.extract_answer("#### 1,234.50") == "1234.5"
    assert D.extract_answer("The answer is: 12") == "12"
    assert D.extract_answer("no answer here") is None
    assert D.is_correct("7", "7.0") and not D.is_correct(None, "7") and not D.is_correct("8", "7")


def test_world_is_seeded_and_consistent():
    d = Difficulty(3, 6, 80)
    a, b = make_problems(200, seed=7, difficulty=d), make_problems(200, seed=7, difficulty=d)
    assert a == b and a != make_problems(200, seed=8, difficulty=d)
    assert a != make_problems(200, seed=7, difficulty=d, split="test")
    for p in a:
        assert 3 <= len(p.steps) <= 6
        value = None
        for s in p.steps:  # every gold equation is true and chains from the previous result
            lhs, rhs = s.split(" = ")
            x, op, y = lhs.split()
            assert value is None or int(x) == value
            value = {"+": int(x) + int(y), "-": int(x) - int(y), "*": int(x) * int(y), "/": int(x) // int(y)}[op]
            assert value == int(rhs) and 0 <= value <= 80
            assert op != "/" or int(x) % int(y) == 0
        assert str(value) == p.answer
    with pytest.raises(ValueError):
        Difficulty(2, 9)


def test_step_truth():
    p = make_problems(1, seed=0, difficulty=Difficulty(3, 3))[0]
    gold = p.steps + [f"#### {p.answer}"]
    assert step_truth(p, gold) == [True] * 4
    wrong = list(gold)
    x, op, y, eq, z = wrong[1].split()
    wrong[1] = f"{x} {op} {y} = {int(z) + 1}"
    assert step_truth(p, wrong) == [True, False, False, False]
    assert step_truth(p, gold + ["#### 0"]) == [True] * 4 + [False]
