"""Exact step correctness in the synthetic world, to measure how good Monte-Carlo labels are.

A step of a sampled solution is truly correct when the solution so far matches the gold solution so far
(each equation in the world is forced by the question, so any deviation is an error that the final
answer cannot recover from, except by a second compensating error, which we count as wrong). The paper
measures label quality against human annotation; here the ground truth is exact.
"""

from __future__ import annotations

import re
from fractions import Fraction

from .data import Problem, normalize_number

_NUM = re.compile(r"-?\d+")


def _canon(step: str) -> list[str]:
    return [normalize_number(x) or x for x in _NUM.findall(step)] + [c for c in step if c in "+-*/#="]


def step_truth(problem: Problem, steps: list[str]) -> list[bool]:
    """truth[i]: steps[:i+1] agree with the gold steps[:i+1] (numbers and operators)."""
    gold = [_canon(s) for s in problem.steps + [f"#### {problem.answer}"]]
    out, ok = [], True
    for i, s in enumerate(steps):
        ok = ok and i < len(gold) and _canon(s) == gold[i]
        out.append(ok)
    return out


_EQ = re.compile(r"^\s*(-?\d+)\s*([-+*/])\s*(-?\d+)\s*=\s*(-?\d+)\s*$")


def _apply(value: Fraction, op: str, b: int, floor: bool) -> Fraction:
    if op == "+":
        return value + b
    if op == "-":
        return value - b
    if op == "*":
        return value * b
    return Fraction(value // b) if floor else value / b


def lucky_completion(problem: Problem, step: int, wrong: int, floor: bool = True) -> bool:
    """Does a prefix whose step `step` computed `wrong` (instead of the gold value) still reach the gold answer
    when every later step applies the question's operations correctly? (What a perfect completer does.)
    floor: division of a value that does not divide rounds down (the small world's "keeps one share", which the
    tiny policy learns); floor=False keeps the fraction, as a GSM8K solution would (17 / 4 = 4.25)."""
    value = Fraction(wrong)
    for eq in problem.steps[step + 1 :]:
        m = _EQ.match(eq)
        if m is None:
            raise ValueError(f"{problem.id}: gold step {eq!r} is not 'a op b = c'")
        value = _apply(value, m.group(2), int(m.group(3)), floor)
    return str(value) == problem.answer


def luck_rate(
    problems: list[Problem], seed: int = 0, slips: int = 4, max_slip: int = 3, floor: bool = True
) -> tuple[int, int]:
    """How often a one-step arithmetic slip is undone by the rest of the solution: (lucky, trials).

    For each problem and each of its steps but the last, `slips` wrong results gold +- 1..max_slip (the typical
    error of a small policy) are completed exactly. In a small answer space floor division and small values map
    many wrong intermediates onto the gold answer, so Monte-Carlo completions from a wrong prefix reach it by
    luck and hard labels call the wrong step good; with exact arithmetic (floor=False, as in GSM8K) every
    operation is one-to-one and a single slip is never undone, so what luck remains comes from the completer's own
    compensating errors, which a large (multi-digit) answer space makes rare. This measures the answer space alone; `reproduce.label_quality` measures the same effect for a real policy."""
    import random

    rng = random.Random(f"luck|{seed}")
    lucky = trials = 0
    for p in problems:
        for i, eq in enumerate(p.steps[:-1]):
            m = _EQ.match(eq)
            if m is None:
                raise ValueError(f"{p.id}: gold step {eq!r} is not 'a op b = c'")
            gold = int(m.group(4))
            for _ in range(slips):
                wrong = gold + rng.choice([-1, 1]) * rng.randint(1, max_slip)
                if wrong < 0:
                    wrong = gold + (gold - wrong)
                lucky += lucky_completion(p, i, wrong, floor)
                trials += 1
    return lucky, trials
