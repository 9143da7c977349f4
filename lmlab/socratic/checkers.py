"""Programmatic checkers for the Verification pattern: `checker(answer_text) -> Check`.

A checker sees the model's answer text and says ok / not ok with feedback the controller feeds back into a
refinement turn. `ok=None` means "cannot tell" (no answer found), which the controller treats as a failure
with that feedback. Built-ins: any Python predicate, sympy equality / arithmetic-claim checks, CNF
satisfiability (python-sat when installed, else the small DPLL below), Game of 24.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction


@dataclass
class Check:
    ok: bool | None
    feedback: str
    answer: str | None = None  # the extracted final answer


Checker = Callable[[str], Check]

_NUM = r"-?\d[\d,]*(?:\.\d+)?"


def last_number(text: str) -> str | None:
    """The final answer of a math reply: after '####' / 'answer is' if present, else the last number."""
    for pat in (rf"####\s*({_NUM})", rf"answer(?: is|:)\s*\$?\s*({_NUM})"):
        m = re.findall(pat, text, flags=re.I)
        if m:
            return m[-1].replace(",", "")
    nums = re.findall(_NUM, text)
    return nums[-1].replace(",", "").rstrip(".") if nums else None


def python_checker(fn: Callable[[str], bool | tuple[bool, str]], name: str = "python") -> Checker:
    """Wrap a predicate on the answer text (optionally returning (ok, feedback))."""

    def check(text: str) -> Check:
        r = fn(text)
        ok, fb = r if isinstance(r, tuple) else (bool(r), "")
        return Check(ok, fb or f"{name} check {'passed' if ok else 'failed'}")

    return check


def numeric_answer(expected: float | str, tol: float = 1e-6) -> Checker:
    """Ground-truth check of the final number (an oracle: use it to score, or as simulated human feedback)."""
    exp = float(str(expected).replace(",", ""))

    def check(text: str) -> Check:
        a = last_number(text)
        if a is None:
            return Check(None, "no final number found; end with 'The answer is N'.")
        try:
            ok = abs(float(a) - exp) <= tol * max(1.0, abs(exp))
        except ValueError:
            return Check(None, f"could not read {a!r} as a number")
        return Check(ok, "the final answer is correct" if ok else f"the final answer {a} is wrong", a)

    return check


def sympy_equal(expected: str) -> Checker:
    """The answer's last `= expr` (or the whole answer) must equal `expected` symbolically (sympy)."""
    import sympy

    target = sympy.sympify(expected)

    def check(text: str) -> Check:
        cand = text.rsplit("=", 1)[-1].strip().rstrip(".") if "=" in text else text.strip()
        try:
            expr = sympy.sympify(cand)
        except (sympy.SympifyError, SyntaxError, TypeError):
            return Check(None, f"could not parse {cand[:60]!r} as an expression")
        ok = sympy.simplify(expr - target) == 0
        return Check(bool(ok), "equal" if ok else f"{cand} is not equal to the expected value", cand)

    return check


_CLAIM = re.compile(r"(?<![\w.])(\d[\d,.]*(?:\s*[-+*/×x]\s*\d[\d,.]*)+)\s*=\s*(-?\d[\d,]*(?:\.\d+)?)")


def arithmetic_claims(text: str) -> Check:
    """Check every 'a op b ... = c' claim in a reasoning text with exact rational arithmetic (sympy).
    Needs no ground truth: it catches the arithmetic slips that dominate small models' GSM8K errors."""
    import sympy

    wrong, n = [], 0
    for lhs, rhs in _CLAIM.findall(text):
        expr = lhs.replace(",", "").replace("×", "*").replace("x", "*")
        try:
            val = sympy.nsimplify(sympy.sympify(expr, rational=True))
            claimed = sympy.nsimplify(sympy.Rational(rhs.replace(",", "")))
        except (sympy.SympifyError, SyntaxError, TypeError, ValueError, ZeroDivisionError):
            continue
        n += 1
        if val != claimed:
            wrong.append(f"{lhs.strip()} = {val}, not {rhs}")
    if wrong:
        return Check(False, "arithmetic errors: " + "; ".join(wrong[:3]), last_number(text))
    if n == 0:
        return Check(None, "no arithmetic to check; show each step as 'a op b = c'.", last_number(text))
    return Check(True, f"{n} arithmetic step(s) correct", last_number(text))


# ---- SAT ---------------------------------------------------------------------------------------------


def dpll(clauses: Sequence[Sequence[int]], n_vars: int) -> dict[int, bool] | None:
    """A small DPLL (unit propagation + branching) for instances of a few dozen variables; used only when
    python-sat is not installed."""

    def simplify(cls: list[list[int]], lit: int) -> list[list[int]] | None:
        out = []
        for c in cls:
            if lit in c:
                continue
            r = [x for x in c if x != -lit]
            if not r:
                return None
            out.append(r)
        return out

    def solve(cls: list[list[int]], assign: dict[int, bool]) -> dict[int, bool] | None:
        while True:
            unit = next((c[0] for c in cls if len(c) == 1), None)
            if unit is None:
                break
            assign = assign | {abs(unit): unit > 0}
            cls = simplify(cls, unit)
            if cls is None:
                return None
        if not cls:
            return assign
        lit = cls[0][0]
        for choice in (lit, -lit):
            s = simplify(cls, choice)
            if s is not None:
                r = solve(s, assign | {abs(choice): choice > 0})
                if r is not None:
                    return r
        return None

    r = solve([list(c) for c in clauses], {})
    if r is None:
        return None
    return {v: r.get(v, False) for v in range(1, n_vars + 1)}


def solve_cnf(clauses: Sequence[Sequence[int]], n_vars: int) -> dict[int, bool] | None:
    """A satisfying assignment or None: python-sat's MiniSat when installed, else `dpll`."""
    try:
        from pysat.solvers import Minisat22
    except ImportError:
        return dpll(clauses, n_vars)
    with Minisat22(bootstrap_with=[list(c) for c in clauses]) as s:
        if not s.solve():
            return None
        model = {abs(x): x > 0 for x in s.get_model()}
    return {v: model.get(v, False) for v in range(1, n_vars + 1)}


def parse_assignment(text: str, n_vars: int) -> dict[int, bool] | None:
    """Read 'x1=1 x2=0 ...' / 'x1 = True' / 'x1: false' from a reply; None unless every variable is given."""
    got: dict[int, bool] = {}
    for v, val in re.findall(r"x(\d+)\s*[=:]\s*(true|false|1|0|t|f)\b", text, flags=re.I):
        got[int(v)] = val.lower() in ("true", "1", "t")
    if all(v in got for v in range(1, n_vars + 1)):
        return {v: got[v] for v in range(1, n_vars + 1)}
    return None


def sat_checker(clauses: Sequence[Sequence[int]], n_vars: int) -> Checker:
    """The reply must give an assignment satisfying every clause (or say UNSAT when the solver agrees)."""
    satisfiable = solve_cnf(clauses, n_vars) is not None

    def check(text: str) -> Check:
        a = parse_assignment(text, n_vars)
        if a is None:
            if not satisfiable and re.search(r"\bunsat", text, flags=re.I):
                return Check(True, "correctly unsatisfiable", "UNSAT")
            return Check(None, f"give a value for every variable x1..x{n_vars}, e.g. 'x1=1 x2=0'.")
        broken = [c for c in clauses if not any(a[abs(x)] == (x > 0) for x in c)]
        if broken:
            shown = " ".join("(" + " or ".join(_lit(x) for x in c) + ")" for c in broken[:3])
            return Check(False, f"{len(broken)} clause(s) violated: {shown}", _fmt_assign(a))
        return Check(True, "all clauses satisfied", _fmt_assign(a))

    return check


def _lit(x: int) -> str:
    return f"x{x}" if x > 0 else f"not x{-x}"


def _fmt_assign(a: dict[int, bool]) -> str:
    return " ".join(f"x{v}={int(b)}" for v, b in sorted(a.items()))


# ---- Game of 24 --------------------------------------------------------------------------------------


def game24_checker(numbers: Sequence[int]) -> Checker:
    """The answer's expression must use exactly these numbers, each once, and evaluate to 24 (exact)."""
    want = Counter(numbers)

    def check(text: str) -> Check:
        exprs = [e for e in re.findall(r"[\d\s+\-*/×÷()]{5,}", text) if sum(ch.isdigit() for ch in e) >= 2]
        if not exprs:
            return Check(None, "write one expression using all four numbers, e.g. (a+b)*(c-d) = 24")
        for e in reversed(exprs):
            expr = e.replace("×", "*").replace("÷", "/").strip()
            used = Counter(int(x) for x in re.findall(r"\d+", expr))
            val = _eval_exact(expr)
            if used == want and val == 24:
                return Check(True, f"{expr} = 24", expr)
        expr = exprs[-1].replace("×", "*").replace("÷", "/").strip()
        used = Counter(int(x) for x in re.findall(r"\d+", expr))
        if used != want:
            return Check(False, f"{expr} uses {sorted(used.elements())}, must use {sorted(want.elements())}", expr)
        return Check(False, f"{expr} = {_eval_exact(expr)}, not 24", expr)

    return check


def _eval_exact(expr: str) -> Fraction | None:
    """Evaluate + - * / ( ) over integers exactly (no eval of arbitrary code)."""
    toks = re.findall(r"\d+|[-+*/()]", expr)
    pos = 0

    def peek() -> str | None:
        return toks[pos] if pos < len(toks) else None

    def take() -> str:
        nonlocal pos
        pos += 1
        return toks[pos - 1]

    def atom() -> Fraction:
        t = take()
        if t == "(":
            v = add()
            if take() != ")":
                raise ValueError
            return v
        if t == "-":
            return -atom()
        return Fraction(int(t))

    def mul() -> Fraction:
        v = atom()
        while peek() in ("*", "/"):
            op, r = take(), atom()
            v = v * r if op == "*" else v / r
        return v

    def add() -> Fraction:
        v = mul()
        while peek() in ("+", "-"):
            op, r = take(), mul()
            v = v + r if op == "+" else v - r
        return v

    try:
        v = add()
        return v if pos == len(toks) else None
    except (ValueError, IndexError, ZeroDivisionError):
        return None


def solve24(numbers: Sequence[int]) -> str | None:
    """One expression reaching 24, or None (to pick solvable puzzles for the reproduction)."""
    items = [(Fraction(n), str(n)) for n in numbers]

    def rec(items: list[tuple[Fraction, str]]) -> str | None:
        if len(items) == 1:
            return items[0][1] if items[0][0] == 24 else None
        for i in range(len(items)):
            for j in range(len(items)):
                if i == j:
                    continue
                (a, ea), (b, eb) = items[i], items[j]
                rest = [items[k] for k in range(len(items)) if k not in (i, j)]
                cands = [(a + b, f"({ea}+{eb})"), (a - b, f"({ea}-{eb})"), (a * b, f"({ea}*{eb})")]
                if b != 0:
                    cands.append((a / b, f"({ea}/{eb})"))
                for c in cands:
                    r = rec(rest + [c])
                    if r:
                        return r
        return None

    return rec(items)
