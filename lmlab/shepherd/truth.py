"""Exact step correctness in the synthetic world, to measure how good Monte-Carlo labels are.

A step of a sampled solution is truly correct when the solution so far matches the gold solution so far
(each equation in the world is forced by the question, so any deviation is an error that the final
answer cannot recover from, except by a second compensating error, which we count as wrong). The paper
measures label quality against human annotation; here the ground truth is exact.
"""

from __future__ import annotations

import re

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
