"""Golden tests of upstream's scorer quirks (tests/evaluate.py) and the robust / canonical extractors."""

import re

import pytest

from lmlab.deepeval.scoring import (
    Extraction,
    bootstrap_ci,
    canonical_extract,
    circular,
    official_extract,
    robust_extract,
)

OPTS = {"A": "A cat on a mat.", "B": "A dog in fog.", "C": "Failure Lesson", "D": "Rain"}


def upstream(output, options):
    """evaluate.py transcribed literally (the reference the golden cases are checked against)."""
    pattern = r"(?<![a-zA-Z])[ABCD](?![a-zA-Z])"
    ans = None
    for x in "ABCD":
        if options[x].strip()[:-1].lower() in output.strip().lower():
            ans = x
            break
    if ans is None:
        m = re.findall(pattern, output)
        ans = m[0] if m else "Unknown Option"
    return ans


@pytest.mark.parametrize(
    "output,want,method",
    [
        ("The answer is (B)", "B", "official/letter"),
        ("a dog in fog", "B", "official/text"),  # trailing period cut by [:-1]
        ("failure lesso", "C", "official/text"),  # [:-1] cuts the last LETTER of a title without a period
        ("(A) a cat on a mat (B) a dog in fog", "A", "official/text"),  # echoed list: A is checked first
        ("I think B. A dog in fog", "B", "official/text"),
        ("A cartoon shows nothing", "A", "official/letter"),  # first standalone capital, from prose
        ("Clearly D, not C", "D", "official/letter"),
        ("rai", "D", "official/text"),
        ("Bad question", None, "unparseable"),  # B touches a letter: no standalone capital
        ("", None, "unparseable"),
    ],
)
def test_official_golden(output, want, method):
    got = official_extract(output, OPTS)
    assert got == Extraction(want, method)
    assert (want or "Unknown Option") == upstream(output, OPTS)


def test_official_one_char_option_matches_everything():
    opts = {"A": "Yes", "B": "X", "C": "No", "D": "Maybe"}
    # "X".strip()[:-1] == "" is a substring of every output, but A is checked first ("ye" not in output)
    assert official_extract("Answer: C", opts).letter == "B" == upstream("Answer: C", opts)


def test_official_matches_upstream_on_random_outputs():
    import random

    rng = random.Random(0)
    words = ["A", "B", "C", "D", "(A)", "cat", "dog", "fog", "Rain", "mat.", "Failure", "Lesson", "answer", "is"]
    for _ in range(2000):
        out = " ".join(rng.choice(words) for _ in range(rng.randint(0, 8)))
        assert (official_extract(out, OPTS).letter or "Unknown Option") == upstream(out, OPTS)


def test_robust_letter_text_and_unparseable():
    assert robust_extract("The answer is C.", OPTS) == Extraction("C", "robust/letter")
    assert robust_extract("**B**", OPTS).letter == "B"
    assert robust_extract("It shows a dog in fog", OPTS) == Extraction("B", "robust/text")
    # an echoed option list names every letter: not a single letter, and several texts match -> unparseable
    assert robust_extract("(A) A cat on a mat. (B) A dog in fog.", OPTS) == Extraction(None, "unparseable")
    assert robust_extract("Nothing fits", OPTS) == Extraction(None, "unparseable")


def test_robust_text_contained_in_another_option():
    opts = {"A": "Rain", "B": "Rain and sun", "C": "Snow", "D": "Fog"}
    assert robust_extract("rain and sun", opts).letter == "B"


def test_judge_bounded_retries():
    calls = []

    def judge(prompt, attempt):
        calls.append(attempt)
        return "I am not sure" if attempt < 2 else "C"

    got = robust_extract("something vague", OPTS, judge=judge, retries=2)
    assert got == Extraction("C", "robust/judge@2") and calls == [0, 1, 2]
    calls.clear()
    never = robust_extract("something vague", OPTS, judge=lambda p, a: calls.append(a) or "Z", retries=1)
    assert never == Extraction(None, "unparseable") and calls == [0, 1]  # bounded, never a random pick


def test_canonical():
    assert canonical_extract("B", OPTS).letter == "B"
    assert canonical_extract("Sorry, I cannot tell", OPTS).letter is None
    assert canonical_extract("a dog in fog.", OPTS).letter == "B"
    assert canonical_extract("A or B", OPTS).letter is None


def test_circular_requires_every_rotation():
    def rec(item, rot, ok):
        return {"model": "m", "subtask": "t", "template": 1, "item": item, "rotation": rot, "x_correct": ok}

    recs = [rec("i1", r, True) for r in range(4)] + [rec("i2", r, r != 2) for r in range(4)] + [rec("i3", 0, True)]
    assert circular(recs, "x") == (1, 2, 1)


def test_bootstrap_ci_brackets_mean():
    lo, hi = bootstrap_ci([True] * 30 + [False] * 70, seed=1)
    assert lo < 30 < hi and hi - lo < 25
