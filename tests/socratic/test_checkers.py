import random

import pytest

from lmlab.socratic import checkers as C


def test_game24_checker_exact_and_controls():
    chk = C.game24_checker([4, 6, 8, 2])
    assert chk("So (8 - 4) * 6 / 2 * 2 ... no: 6 * (8 - 4) = 24 uses 6,8,4").ok is False
    assert chk("The answer: (4 + 8) * (6 - 2 * 2) ...").ok is False  # uses 2 twice
    assert chk("(6 - 2) * 4 + 8 = 24").ok is True
    assert chk("6 / (1 - 3/4) = 24").ok is False  # wrong numbers
    assert chk("I cannot do it").ok is None
    assert C._eval_exact("8 / (3 - 8 / 3)") == 24  # exact rationals, not floats
    assert C.solve24([8, 3, 8, 3]) is not None and C.solve24([1, 1, 1, 1]) is None


def test_dpll_agrees_with_pysat_on_random_3sat():
    pytest.importorskip("pysat")
    rng = random.Random(0)
    n_sat = 0
    for _ in range(200):
        n = rng.randint(3, 8)
        clauses = [
            [v if rng.random() < 0.5 else -v for v in rng.sample(range(1, n + 1), 3)] for _ in range(rng.randint(2, 40))
        ]
        a = C.dpll(clauses, n)
        assert (a is None) == (C.solve_cnf(clauses, n) is None)
        if a is not None:
            n_sat += 1
            assert all(any(a[abs(x)] == (x > 0) for x in c) for c in clauses)
    assert 20 < n_sat < 180  # both outcomes were exercised


def test_sat_checker_parses_assignments_and_names_violated_clauses():
    clauses = [[1, -2], [2, 3], [-1, -3]]
    chk = C.sat_checker(clauses, 3)
    assert chk("x1=1 x2=1 x3=0").ok is True
    bad = chk("x1 = 1, x2 = 0, x3 = 1")
    assert bad.ok is False and bad.feedback == "1 clause(s) violated: (not x1 or not x3)"
    assert chk("x1=1").ok is None
    assert C.sat_checker([[1], [-1]], 1)("UNSAT").ok is True


def test_arithmetic_claims_and_sympy_and_numbers():
    assert C.arithmetic_claims("16 - 3 - 4 = 9 eggs, 9 * 2 = 18 dollars").ok is True
    r = C.arithmetic_claims("16 - 3 - 4 = 9, then 9 * 2 = 19")
    assert r.ok is False and "9 * 2 = 18, not 19" in r.feedback
    assert C.arithmetic_claims("no numbers here").ok is None
    assert C.sympy_equal("x**2 - 1")("so the result = (x - 1)*(x + 1)").ok is True
    assert C.sympy_equal("2")("= 3").ok is False
    assert C.numeric_answer(18)("... #### 18").ok is True and C.numeric_answer(18)("The answer is 1,800").ok is False
    assert C.last_number("The answer is $1,234.") == "1234"


def test_cli_checker_specs_and_dimacs_errors(tmp_path):
    from lmlab.core.errors import LmlabError
    from lmlab.socratic.cli import make_checker, read_dimacs

    cnf = tmp_path / "f.cnf"
    cnf.write_text("c tiny\np cnf 2 2\n1 2 0\n-1 0\n")
    assert read_dimacs(cnf) == ([[1, 2], [-1]], 2)
    assert make_checker(f"sat:{cnf}")("x1=0 x2=1").ok is True
    assert make_checker("24:4,6,8,2")("(6 - 2) * 4 + 8").ok is True
    assert make_checker("number:7")("The answer is 7").ok is True
    assert make_checker("python:os.path:isabs")("/x").ok is True
    cnf.write_text("p cnf 2 1\n1 2\n")
    with pytest.raises(LmlabError, match=r"f.cnf:2: a clause must end with 0"):
        read_dimacs(cnf)
    with pytest.raises(LmlabError, match="unknown --checker"):
        make_checker("magic:1")


def test_reproduction_tasks_are_well_posed():
    """Every generated instance is solvable by its own checker's definition, and the prompt's format example
    is never itself a solution (else copying the example would score)."""
    from lmlab.socratic.tasks import arith, game24, sat

    for p in game24(9, 0, sizes=(2, 3, 4)):
        nums = tuple(int(x) for x in p.id.split("-"))
        assert len(nums) == p.meta["size"] and p.checker(C.solve24(nums) + " = 24").ok is True
    for p in sat(10, 0) + sat(5, 1, n_vars=4, n_clauses=6, width=3):
        a = C.solve_cnf(p.meta["clauses"], p.meta["n_vars"])
        assert p.checker(" ".join(f"x{v}={int(b)}" for v, b in a.items())).ok is True
        assert p.checker(p.hint).ok is not True
    for p in arith(8, 0):
        assert p.score(f"The answer is {p.meta['gold']}.").ok and int(p.meta["gold"]) > 0
        assert p.checker("2 + 3 = 6. The answer is 6.").ok is False  # the step checker needs no gold
