"""A seeded synthetic math world: multi-step arithmetic word problems with step-wise gold solutions.

Why synthetic: Math-Shepherd needs a policy that is right *sometimes* (so Monte-Carlo completions disagree
and verification has room to help). A tiny model trained for a few CPU minutes on this world reaches a
middling accuracy, and every step of its output can be checked exactly. Difficulty is controlled by the
number of operations (2-8) and the largest intermediate value.

Each problem: a start quantity, then operations (buy/find -> +, give/eat -> -, double/triple -> *,
share equally -> /), then a question. The gold solution writes one equation per operation
("12 + 5 = 17") and ends with "#### 17", the GSM8K answer convention.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .data import Problem

NAMES = ["Ana", "Ben", "Cal", "Dee", "Eli", "Fay", "Gus", "Ivy", "Jon", "Kim", "Lou", "Max", "Ned", "Ola", "Pat", "Rey"]
ITEMS = ["apples", "books", "coins", "cards", "eggs", "pens", "shells", "stamps", "marbles", "plums"]


@dataclass(frozen=True)
class Difficulty:
    """min_steps..max_steps operations per problem; every intermediate value stays in [0, max_value]."""

    min_steps: int = 2
    max_steps: int = 5
    max_value: int = 30

    def __post_init__(self) -> None:
        if not (1 <= self.min_steps <= self.max_steps <= 8):
            raise ValueError(f"need 1 <= min_steps <= max_steps <= 8, got {self.min_steps}..{self.max_steps}")
        if self.max_value < 10:
            raise ValueError("max_value must be at least 10")


SMALL = Difficulty()  # answers in 0..30: a wrong prefix often completes to the gold answer by luck
GSM_LIKE = Difficulty(2, 5, 199)  # mostly 2-3 digit answers, as in GSM8K: lucky completions are rare


def _operation(rng: random.Random, value: int, d: Difficulty, name: str, item: str) -> tuple[str, str, int]:
    """One operation valid from `value`: (sentence, equation, new value)."""
    options = []
    if value < d.max_value:
        options.append("add")
    if value > 0:
        options.append("sub")
    if 0 < value and value * 2 <= d.max_value:
        options.append("mul")
    divisors = [k for k in (2, 3, 4, 5) if value >= k and value % k == 0]
    if divisors:
        options.append("div")
    kind = rng.choice(options)
    if kind == "add":
        b = rng.randint(1, min(d.max_value - value, max(9, d.max_value // 3)))
        verb = rng.choice(["buys", "finds", "gets"])
        return f"{name} {verb} {b} more.", f"{value} + {b} = {value + b}", value + b
    if kind == "sub":
        b = rng.randint(1, value)
        verb = rng.choice(["gives away", "loses", "sells"])
        return f"{name} {verb} {b}.", f"{value} - {b} = {value - b}", value - b
    if kind == "mul":
        k = rng.choice([k for k in (2, 3, 4) if value * k <= d.max_value])
        word = {2: "doubles", 3: "triples", 4: "quadruples"}[k]
        return f"{name} {word} the {item}.", f"{value} * {k} = {value * k}", value * k
    k = rng.choice(divisors)
    return (
        f"{name} shares them equally with {k - 1} friend{'s' if k > 2 else ''} and keeps one share.",
        f"{value} / {k} = {value // k}",
        value // k,
    )


def make_problem(rng: random.Random, d: Difficulty, pid: str) -> Problem:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    value = rng.randint(2, min(d.max_value, 30))
    sentences = [f"{name} has {value} {item}."]
    steps = []
    for _ in range(rng.randint(d.min_steps, d.max_steps)):
        sentence, eq, value = _operation(rng, value, d, name, item)
        sentences.append(sentence)
        steps.append(eq)
    sentences.append(f"How many {item} does {name} have now?")
    return Problem(id=pid, question=" ".join(sentences), answer=str(value), steps=steps)


def make_problems(n: int, seed: int = 0, difficulty: Difficulty | None = None, split: str = "train") -> list[Problem]:
    """n problems, a pure function of (seed, split, difficulty): the same call always returns the same list."""
    d = difficulty or Difficulty()
    rng = random.Random(f"shepherd-world|{seed}|{split}|{d}")
    return [make_problem(rng, d, f"{split}-{seed}-{i}") for i in range(n)]
