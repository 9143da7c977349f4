"""Answer extraction and accuracy: upstream's scorer exactly, a robust extractor, CircularEval, disagreement.

Every extractor returns an `Extraction(letter, method)`: `letter` is a presented letter or None (unparseable,
counted wrong and counted, never replaced by a random choice), `method` says which rule fired (provenance).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from .data import LETTERS

_OFFICIAL_LETTER = re.compile(r"(?<![a-zA-Z])[ABCD](?![a-zA-Z])")


@dataclass(frozen=True)
class Extraction:
    letter: str | None  # A-D, or None when nothing could be read
    method: str  # which rule fired, e.g. "official/text", "robust/letter", "robust/judge", "unparseable"


def official_extract(output: str, options: dict[str, str] | Sequence[str]) -> Extraction:
    """upstream tests/evaluate.py, rule for rule (golden tests in tests/deepeval/test_scoring.py):

    1. for X in A, B, C, D (in this order): if `options[X].strip()[:-1].lower()` is a substring of
       `output.strip().lower()`, answer X. `[:-1]` always cuts the last character (meant for a trailing period),
       and a one-character option becomes "" which matches every output.
    2. else the first capital A-D not touching another ASCII letter (`(?<![a-zA-Z])[ABCD](?![a-zA-Z])`), which may
       come from prose ("A cartoon ..." -> A).
    3. else "Unknown Option" (wrong; no retry at scoring time)."""
    opts = _as_dict(options)
    low = output.strip().lower()
    for x in LETTERS:
        if opts[x].strip()[:-1].lower() in low:
            return Extraction(x, "official/text")
    m = _OFFICIAL_LETTER.findall(output)
    if m:
        return Extraction(m[0], "official/letter")
    return Extraction(None, "unparseable")


_PUNCT = str.maketrans({c: " " for c in ".()[],:;!*#{}"})
_REFUSALS = ("sorry", "i cannot", "i can't", "cannot determine", "unable to", "not possible to")


def _norm_text(s: str) -> str:
    s = " ".join(s.strip().lower().split())
    return s[:-1] if s.endswith(".") else s


def letter_tokens(output: str) -> set[str]:
    """Option letters that stand alone as a token once `.()[],:;!*#{}` are spaces (VLMEvalKit's can_infer_option)."""
    return {t for t in output.translate(_PUNCT).split() if t in LETTERS}


def unique_text_match(output: str, options: dict[str, str] | Sequence[str]) -> str | None:
    """The one option whose (normalised) text occurs in the output; an option that is contained in another matched
    option does not count against it. None when zero or several match."""
    opts = _as_dict(options)
    low = " ".join(output.lower().split())
    hits = [x for x in LETTERS if _norm_text(opts[x]) and _norm_text(opts[x]) in low]
    hits = [x for x in hits if not any(y != x and _norm_text(opts[x]) in _norm_text(opts[y]) for y in hits)]
    return hits[0] if len(hits) == 1 else None


def canonical_extract(output: str, options: dict[str, str] | Sequence[str]) -> Extraction:
    """VLMEvalKit's canonical `can_infer` (no judge): refusal -> unparseable; exactly one standalone letter; else
    exactly one option text (plain lower-cased substring); else unparseable."""
    low = output.lower()
    if any(r in low for r in _REFUSALS):
        return Extraction(None, "unparseable")
    letters = letter_tokens(output)
    if len(letters) == 1:
        return Extraction(next(iter(letters)), "canonical/letter")
    opts = _as_dict(options)
    hits = [x for x in LETTERS if opts[x].strip().lower() in low]
    if len(hits) == 1:
        return Extraction(hits[0], "canonical/text")
    return Extraction(None, "unparseable")


Judge = Callable[[str, int], str]
"""judge(prompt, attempt) -> reply text; attempt 0 should be deterministic, later attempts may sample."""

JUDGE_PROMPT = (
    "You are helping to grade a multiple-choice answer. Here is the question with its options and a model's answer. "
    "Which option does the answer choose? Reply with one letter: A, B, C or D, or Z if it chooses none of them.\n\n"
    "Question and options:\n{question}\n\nAnswer: {output}\n\nYour reply (one letter):"
)


def robust_extract(
    output: str,
    options: dict[str, str] | Sequence[str],
    *,
    judge: Judge | None = None,
    question: str = "",
    retries: int = 2,
) -> Extraction:
    """A single standalone letter; else a unique option text; else (optional) an LLM judge asked at most
    1 + retries times; else unparseable. The judge's reply must itself be one standalone letter A-D (Z or
    anything else counts as a failed attempt)."""
    letters = letter_tokens(output)
    if len(letters) == 1:
        return Extraction(next(iter(letters)), "robust/letter")
    hit = unique_text_match(output, options)
    if hit is not None:
        return Extraction(hit, "robust/text")
    if judge is not None:
        prompt = JUDGE_PROMPT.format(question=question, output=output.strip())
        for attempt in range(1 + max(0, retries)):
            got = letter_tokens(judge(prompt, attempt))
            if len(got) == 1:
                return Extraction(next(iter(got)), f"robust/judge@{attempt}")
    return Extraction(None, "unparseable")


def _as_dict(options: dict[str, str] | Sequence[str]) -> dict[str, str]:
    return dict(options) if isinstance(options, dict) else dict(zip(LETTERS, options))


EXTRACTORS: dict[str, Callable[..., Extraction]] = {
    "official": official_extract,
    "canonical": canonical_extract,
    "robust": robust_extract,
}


# ------------------------------------------------------------------------------------------- aggregation
def accuracy(correct: Iterable[bool]) -> float:
    c = list(correct)
    return 100.0 * sum(c) / len(c) if c else float("nan")


def circular(records: Iterable[dict], scorer: str, rotations: int = 4) -> tuple[int, int, int]:
    """CircularEval over prediction records: a question (model, subtask, template, item) is a hit only when every
    one of its `rotations` rolled copies is answered right. Returns (hits, complete questions, incomplete ones)."""
    groups: dict[tuple, dict[int, bool]] = defaultdict(dict)
    for r in records:
        groups[(r["model"], r["subtask"], r["template"], r["item"])][r["rotation"]] = bool(r[f"{scorer}_correct"])
    complete = [g for g in groups.values() if len(g) >= rotations]
    hits = sum(all(g.values()) for g in complete)
    return hits, len(complete), len(groups) - len(complete)


def disagreement(records: Sequence[dict], a: str, b: str) -> dict[str, int]:
    """How often two scorers pick different letters (and differ in correctness) on the same predictions."""
    both = [r for r in records if f"{a}_letter" in r and f"{b}_letter" in r]
    return {
        "n": len(both),
        "letter_differs": sum(r[f"{a}_letter"] != r[f"{b}_letter"] for r in both),
        "correctness_differs": sum(bool(r[f"{a}_correct"]) != bool(r[f"{b}_correct"]) for r in both),
    }


def bootstrap_ci(
    correct: Sequence[bool], n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of accuracy (in %)."""
    import numpy as np

    x = np.asarray(correct, dtype=float)
    if len(x) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(1) * 100
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def paired_bootstrap_diff(
    a: Sequence[bool], b: Sequence[bool], n_boot: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Accuracy difference a - b (points) on the same items, with a paired percentile bootstrap 95% interval."""
    import numpy as np

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    d = (x[idx].mean(1) - y[idx].mean(1)) * 100
    lo, hi = np.quantile(d, [0.025, 0.975])
    return float((x.mean() - y.mean()) * 100), float(lo), float(hi)
