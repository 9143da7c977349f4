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
from concurrent.futures import ThreadPoolExecutor
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


def game24(n: int, seed: int, sizes: tuple[int, ...] = (4,)) -> list[Problem]:
    """Solvable puzzles; `sizes` cycles the count of numbers per puzzle (2 and 3 are the easy instances of the
    same game a 135M model can sometimes solve: 4 x 6, 30 - 6; the original game uses 4)."""
    rng = random.Random(f"24-{seed}")
    out: list[Problem] = []
    seen = set()
    while len(out) < n:
        size = sizes[len(out) % len(sizes)]
        hi = 9 if size == 4 else 13 if size == 3 else 30
        nums = tuple(sorted(rng.randint(1, hi) for _ in range(size)))
        if nums in seen or C.solve24(nums) is None or (size == 2 and 24 in nums):
            continue
        seen.add(nums)
        chk = C.game24_checker(nums)
        text = (
            f"Use the numbers {' '.join(map(str, nums))}, each exactly once, with + - * / and parentheses to make 24."
        )
        out.append(
            Problem(
                "game24", "-".join(map(str, nums)), text, chk, chk, " End with one expression that equals 24.",
                {"size": size},
            )
        )  # fmt: skip
    return out


def gsm8k(n: int, seed: int, steps: tuple[int, int] = (3, 99), max_chars: int | None = None) -> list[Problem]:
    """GSM8K test problems whose reference solution has `steps` (inclusive range) annotated calculations."""
    rows = []
    for line in shared_data("gsm8k", "test.jsonl").read_text().splitlines():
        r = json.loads(line)
        k = r["answer"].count("<<")
        if steps[0] <= k <= steps[1] and (max_chars is None or len(r["question"]) <= max_chars):
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


_ARITH = [
    # (template, answer(a, b, c)); two calculation steps each, small numbers
    ("Tom has {a} boxes with {b} apples in each box. He eats {c} apples. How many apples are left?",
     lambda a, b, c: a * b - c),
    ("A shelf has {a} rows of {b} books. Anna adds {c} more books. How many books are on the shelf now?",
     lambda a, b, c: a * b + c),
    ("Sam buys {a} pens for {b} dollars each and a bag for {c} dollars. How many dollars does he spend?",
     lambda a, b, c: a * b + c),
    ("There are {a} red balls and {b} blue balls. {c} balls roll away. How many balls are left?",
     lambda a, b, c: a + b - c),
]  # fmt: skip


def arith(n: int, seed: int) -> list[Problem]:
    """Two-step arithmetic word problems (GSM8K's format at its smallest): the scale where a 135M model
    sometimes gets the answer, and where checking each written step ('a op b = c') can catch its slips."""
    rng = random.Random(f"arith-{seed}")
    out = []
    while len(out) < n:
        tmpl, f = _ARITH[len(out) % len(_ARITH)]
        a, b, c = rng.randint(2, 9), rng.randint(2, 9), rng.randint(1, 9)
        gold = f(a, b, c)
        if gold <= 0:
            continue
        out.append(
            Problem(
                "arith", f"a{len(out)}", tmpl.format(a=a, b=b, c=c), C.arithmetic_claims, C.numeric_answer(gold),
                " End with 'The answer is N'.", {"gold": str(gold), "steps": 2},
            )
        )  # fmt: skip
    return out


def sat(n: int, seed: int, n_vars: int = 3, n_clauses: int = 4, width: int = 2) -> list[Problem]:
    """Random satisfiable CNF instances (`width` literals per clause); the prompt's format example must not
    itself satisfy the instance."""
    rng = random.Random(f"sat-{seed}-{n_vars}-{n_clauses}-{width}")
    example = {v: v % 2 == 1 for v in range(1, n_vars + 1)}  # x1=1 x2=0 x3=1 ...
    names = ", ".join(f"x{v}" for v in range(1, n_vars + 1))
    shown_example = " ".join(f"x{v}={int(b)}" for v, b in example.items())
    out = []
    while len(out) < n:
        clauses = [
            [v if rng.random() < 0.5 else -v for v in rng.sample(range(1, n_vars + 1), width)] for _ in range(n_clauses)
        ]
        if C.solve_cnf(clauses, n_vars) is None or all(any(example[abs(x)] == (x > 0) for x in c) for c in clauses):
            continue
        shown = " and ".join("(" + " or ".join(C._lit(x) for x in c) + ")" for c in clauses)
        n_sat = sum(
            all(any(((a >> (abs(x) - 1)) & 1) == (x > 0) for x in c) for c in clauses) for a in range(2**n_vars)
        )
        chk = C.sat_checker(clauses, n_vars)
        text = f"Assign {names} the value 0 or 1 so that all of these are true: {shown}."
        meta = {"clauses": clauses, "n_vars": n_vars, "chance": n_sat / 2**n_vars}
        out.append(Problem("sat", f"v{n_vars}-{len(out)}", text, chk, chk, f" Answer like: {shown_example}", meta))
    return out


def _key(p: Problem, text: str) -> str:
    """The answer a majority vote counts (the checker's extraction, else the last line)."""
    a = p.score(text).answer
    return a if a is not None else (text.strip().splitlines() or [""])[-1]


def run_sampling(p: Problem, caller: Caller, B: int, cot: bool, until_checked: bool) -> list[str | None]:
    """Answers after k = 1..B calls for direct / cot (majority) and direct+check (first that passes).

    The B samples are independent (sample 0 greedy, the rest T=0.7, seeds seed+k), so on a concurrent backend
    they are asked for at once (one micro-batch); the answer after k calls uses only the first k, exactly as
    if they had been drawn one by one. direct and direct+check ask for the same B calls: with the call cache
    (and the micro-batcher's in-flight sharing) they are drawn once and read two ways."""
    ask = (
        p.text
        + (" Think step by step, then give the final answer." if cot else " Give only the final answer.")
        + p.hint
    )
    msgs = [{"role": "system", "content": "You are a careful problem solver."}, {"role": "user", "content": ask}]

    def one(k: int) -> str | None:
        try:
            return caller.call(msgs, tag="sample", sample=k, temperature=None if k == 0 else 0.7).text
        except BudgetExhausted:
            return None

    if caller.concurrent:
        with ThreadPoolExecutor(max_workers=B) as pool:
            drawn = list(pool.map(one, range(B)))
    else:
        drawn = [one(k) for k in range(B)]
    texts = drawn[: drawn.index(None)] if None in drawn else drawn  # a budget stop ends the sequence
    out: list[str | None] = []
    passed: str | None = None
    for k, t in enumerate(texts):
        if until_checked:
            if passed is None and p.checker(t).ok:
                passed = t
            out.append(passed if passed is not None else t)
        else:
            seen = texts[: k + 1]
            votes = Counter(_key(p, x) for x in seen)
            best = max(votes.values())
            out.append(next(x for x in seen if votes[_key(p, x)] == best))  # ties: the earliest
    return out


def calls_to_pass(p: Problem, answers: list[str | None]) -> int | None:
    """The first k whose answer passes the checker (what a generate-and-test run stopping there would spend)."""
    return next((k + 1 for k, a in enumerate(answers) if a is not None and p.checker(a).ok), None)


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
