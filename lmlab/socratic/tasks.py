"""Checkable tasks and the methods compared on them at equal call budgets.

Tasks (seeded): Game of 24 (solvable puzzles), multi-step GSM8K test problems (>= 3 annotated calculation
steps), random satisfiable 3-SAT instances. Each problem has a `checker` that needs no ground truth (the
Game-of-24 and SAT definitions of success; arithmetic-claim checking for GSM8K) and a `score` that decides
success (for GSM8K the gold answer).

Methods, each given the same budget of B calls per problem and reporting its answer after every call k<=B:
  direct         k samples (the first greedy, the rest T=0.7), majority answer
  cot            the same with "think step by step"
  direct+check   generate-and-test: sample until the checker passes (isolates the value of verification)
  socratic       decompose -> deduce sub-problems -> integrate -> LLM self-check (+ refine)
  socratic+check the same with the programmatic checker as the Verification pattern
Socratic runs at budget k follow the same path as at budget B, truncated; so they are run once at B and
then at every k < B from the call cache (no extra model calls).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.paths import shared_data
from . import checkers as C
from .calls import Budget, BudgetExhausted, Caller
from .engine import EngineConfig, SocraticController
from .tree import TreeStore


@dataclass
class Problem:
    task: str
    id: str
    text: str
    checker: C.Checker
    score: C.Checker
    hint: str
    meta: dict[str, Any] = field(default_factory=dict)


def game24(n: int, seed: int) -> list[Problem]:
    rng = random.Random(f"24-{seed}")
    out: list[Problem] = []
    seen = set()
    while len(out) < n:
        nums = tuple(sorted(rng.randint(1, 9) for _ in range(4)))
        if nums in seen or C.solve24(nums) is None:
            continue
        seen.add(nums)
        chk = C.game24_checker(nums)
        text = (
            f"Use the numbers {' '.join(map(str, nums))}, each exactly once, with + - * / and parentheses to make 24."
        )
        out.append(
            Problem("game24", "-".join(map(str, nums)), text, chk, chk, " End with one expression that equals 24.")
        )
    return out


def gsm8k(n: int, seed: int, min_steps: int = 3) -> list[Problem]:
    rows = []
    for line in shared_data("gsm8k", "test.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["answer"].count("<<") >= min_steps:
            rows.append(r)
    rng = random.Random(f"gsm8k-{seed}")
    out = []
    for i, r in enumerate(rng.sample(rows, n)):
        gold = r["answer"].split("####")[-1].strip().replace(",", "")
        meta = {"gold": gold, "steps": r["answer"].count("<<")}
        out.append(
            Problem(
                "gsm8k", f"q{i}", r["question"], C.arithmetic_claims, C.numeric_answer(gold),
                " End with 'The answer is N'.", meta,
            )
        )  # fmt: skip
    return out


def sat(n: int, seed: int, n_vars: int = 4, n_clauses: int = 6) -> list[Problem]:
    rng = random.Random(f"sat-{seed}")
    example = {1: False, 2: True, 3: True, 4: False}  # the format example in the prompt must not solve it
    out = []
    while len(out) < n:
        clauses = [
            [v if rng.random() < 0.5 else -v for v in rng.sample(range(1, n_vars + 1), 3)] for _ in range(n_clauses)
        ]
        if C.solve_cnf(clauses, n_vars) is None or all(any(example[abs(x)] == (x > 0) for x in c) for c in clauses):
            continue
        shown = " and ".join("(" + " or ".join(C._lit(x) for x in c) + ")" for c in clauses)
        n_sat = sum(
            all(any(((a >> (abs(x) - 1)) & 1) == (x > 0) for x in c) for c in clauses) for a in range(2**n_vars)
        )
        chk = C.sat_checker(clauses, n_vars)
        text = (
            f"Find values 0 or 1 for x1, x2, x3, x4 that make every clause true "
            f"(a clause is true when at least one of its parts is true): {shown}"
        )
        meta = {"clauses": clauses, "chance": n_sat / 2**n_vars}
        out.append(
            Problem("sat", f"s{len(out)}", text, chk, chk, " End with the values, like x1=0 x2=1 x3=1 x4=0.", meta)
        )
    return out


def _key(p: Problem, text: str) -> str:
    """The answer a majority vote counts (the checker's extraction, else the last line)."""
    a = p.score(text).answer
    return a if a is not None else (text.strip().splitlines() or [""])[-1]


def run_sampling(p: Problem, caller: Caller, B: int, cot: bool, until_checked: bool) -> list[str | None]:
    """Answers after k = 1..B calls for direct / cot (majority) and direct+check (first that passes)."""
    ask = (
        p.text
        + (" Think step by step, then give the final answer." if cot else " Give only the final answer.")
        + p.hint
    )
    msgs = [{"role": "system", "content": "You are a careful problem solver."}, {"role": "user", "content": ask}]
    texts: list[str] = []
    out: list[str | None] = []
    passed: str | None = None
    for k in range(B):
        if passed is None:
            try:
                r = caller.call(msgs, tag="sample", sample=k, temperature=None if k == 0 else 0.7)
            except BudgetExhausted:
                break
            texts.append(r.text)
            if until_checked and p.checker(r.text).ok:
                passed = r.text
        if until_checked:
            out.append(passed if passed is not None else texts[-1])
        else:
            votes = Counter(_key(p, t) for t in texts)
            best = max(votes.values())
            out.append(next(t for t in texts if votes[_key(p, t)] == best))  # ties: the earliest
    return out


def run_socratic(
    p: Problem, make_caller: Callable[[Budget], Caller], B: int, with_checker: bool, store_path: Any = None
) -> list[str | None]:
    cfg = EngineConfig(
        max_depth=1, max_breadth=2, verify="checker" if with_checker else "llm", refine_rounds=B, answer_hint=p.hint
    )
    out: dict[int, str | None] = {}
    for k in [B, *range(1, B)]:  # the full budget first; the truncated runs are then all cache hits
        if k == B and store_path is not None:
            Path(store_path).unlink(missing_ok=True)  # a rerun rebuilds the tree from the call cache
        store = TreeStore(store_path if k == B else None)
        r = SocraticController(
            make_caller(Budget(max_calls=k)), store, cfg, checker=p.checker if with_checker else None
        ).run(p.text)
        out[k] = r.answer
    return [out[k] for k in range(1, B + 1)]
