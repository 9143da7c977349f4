"""Best-of-N verification (Math-Shepherd, section 4): rerank N sampled solutions per held-out problem.

Methods, for each N: self-consistency (majority vote over final answers), ORM best-of-N (highest outcome
score), PRM best-of-N (highest *minimum* step score, the paper's aggregation) and self-consistency weighted
by the PRM (each answer's votes weighted by its solutions' PRM scores). For N < the number of samples the
accuracy averages over disjoint subsets of the samples (less variance than one subset); 95 % intervals
bootstrap over problems.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmlab.core.engine import SamplingParams, make_generator
from lmlab.core.loader import LoadedModel

from .annotate import problem_seed
from .complete import complete_cuts
from .data import Problem, extract_answer, is_correct
from .policy import encode_prompt, split_steps
from .prm import PRM

METHODS = ("sc", "orm", "prm", "sc_prm")


@dataclass
class Candidate:
    steps: list[str]
    answer: str | None
    correct: bool
    prm: float = 0.0  # min step score
    orm: float = 0.0


def sample_candidates(
    lm: LoadedModel,
    problems: Sequence[Problem],
    n: int,
    temperature: float = 0.7,
    max_new_tokens: int = 96,
    seed: int = 0,
    max_rows: int = 512,
) -> list[list[Candidate]]:
    """n sampled solutions per problem: each question is prefilled once and fanned out to n rows; groups of
    problems share one decode batch of up to max_rows rows."""
    out: list[list[Candidate]] = []
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature)
    tok = lm.tokenizer
    group = max(1, max_rows // n)
    for g in range(0, len(problems), group):
        chunk = problems[g : g + group]
        prompts = [encode_prompt(tok, p.question) for p in chunk]
        gen = make_generator(problem_seed(seed, "verify|" + chunk[0].id), lm.model.device)
        sols = complete_cuts(lm.model, tok, prompts, [[len(x)] for x in prompts], n, params, gen, max_rows)
        for p, per in zip(chunk, sols):
            cands = []
            for s in per[0]:
                text = tok.decode(s, skip_special_tokens=True)
                ans = extract_answer(text)
                cands.append(Candidate(split_steps(text) or [""], ans, is_correct(ans, p.answer)))
            out.append(cands)
    return out


def score_candidates(
    problems: Sequence[Problem], cands: list[list[Candidate]], prm: PRM, orm: PRM | None = None, batch_size: int = 64
) -> None:
    """Fill Candidate.prm (min step score) and, given an ORM, Candidate.orm (last-tag score) in place."""
    flat = [(p.question, c.steps) for p, cs in zip(problems, cands) for c in cs]
    prm_scores = iter(prm.score_batch(flat, batch_size))
    orm_scores = iter(orm.score_batch(flat, batch_size)) if orm is not None else None
    for cs in cands:
        for c in cs:
            c.prm = min(next(prm_scores))
            if orm_scores is not None:
                c.orm = next(orm_scores)[-1]


def _vote(cands: Sequence[Candidate], weight: Callable[[Candidate], float]) -> bool:
    """Correctness of the answer with the largest total weight (ties: the answer seen first)."""
    totals: dict[str, float] = defaultdict(float)
    first: dict[str, int] = {}
    for i, c in enumerate(cands):
        if c.answer is not None:
            totals[c.answer] += weight(c)
            first.setdefault(c.answer, i)
    if not totals:
        return False
    best = max(totals, key=lambda a: (totals[a], -first[a]))
    return next(c.correct for c in cands if c.answer == best)


def pick(cands: Sequence[Candidate], method: str) -> bool:
    """Is the solution (or answer) the method selects correct?"""
    if method == "sc":
        return _vote(cands, lambda c: 1.0)
    if method == "sc_prm":
        return _vote(cands, lambda c: c.prm)
    if method in ("prm", "orm"):  # rank the solutions that reach an answer (as voting does); max keeps the first tie
        pool = [c for c in cands if c.answer is not None] or list(cands)
        return max(pool, key=lambda c: getattr(c, method)).correct
    raise ValueError(f"unknown method {method!r}")


def per_problem_accuracy(cands: list[list[Candidate]], n: int, method: str) -> np.ndarray:
    """Per-problem accuracy at N=n, averaged over the disjoint size-n subsets of each problem's samples."""
    return np.array([np.mean([pick(cs[i : i + n], method) for i in range(0, len(cs) - n + 1, n)]) for cs in cands])


def bootstrap_ci(values: np.ndarray, iters: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean, resampling problems."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (iters, len(values)))].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def evaluate(cands: list[list[Candidate]], ns: Sequence[int], seed: int = 0) -> dict[str, Any]:
    """The verify JSON: {"n", "accuracy": {method: [...]}, "ci95": {method: [[lo, hi], ...]}, "pass_at_n"}."""
    acc: dict[str, list[float]] = {m: [] for m in METHODS}
    ci: dict[str, list[list[float]]] = {m: [] for m in METHODS}
    for n in ns:
        for m in METHODS:
            v = per_problem_accuracy(cands, n, m)
            acc[m].append(float(v.mean()))
            ci[m].append(list(bootstrap_ci(v, seed=seed)))
    oracle = [
        float(
            np.mean(
                [np.mean([any(c.correct for c in cs[i : i + n]) for i in range(0, len(cs) - n + 1, n)]) for cs in cands]
            )
        )
        for n in ns
    ]
    return {"n": list(ns), "accuracy": acc, "ci95": ci, "pass_at_n": oracle}


def plot(result: dict[str, Any], path: Any, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ns = result["n"]
    names = {"sc": "self-consistency", "orm": "ORM best-of-N", "prm": "PRM best-of-N (min)", "sc_prm": "SC + PRM"}
    for m in METHODS:
        lo, hi = zip(*result["ci95"][m])
        ax.plot(ns, result["accuracy"][m], marker="o", label=names[m])
        ax.fill_between(ns, lo, hi, alpha=0.12)
    ax.plot(ns, result["pass_at_n"], ls=":", c="gray", label="pass@N (oracle)")
    if "policy_greedy_accuracy" in result:
        ax.axhline(result["policy_greedy_accuracy"], ls="--", c="k", lw=0.8, label="greedy")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_xlabel("N (solutions per problem)")
    ax.set_ylabel("accuracy")
    ax.set_title(title or "Best-of-N verification")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
