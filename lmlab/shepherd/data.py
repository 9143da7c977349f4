"""One data model for step-wise solutions, and readers/writers for the formats the field uses.

- Math-Shepherd jsonl (the released data set): `input` is the question, then "Step k: ... ки" per step;
  `label` is the same text with each `ки` replaced by `+` or `-`.
- trl PRM rows (`PRMTrainer`): {"prompt": str, "completions": [str], "labels": [bool]}.
- GSM8K jsonl: {"question", "answer"}; steps are the answer's lines, the last line is "#### <answer>".

Every reader names the file and line of a malformed row (LmlabError), never a deep traceback.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmlab.core.data import iter_jsonl
from lmlab.core.errors import LmlabError

STEP_TAG = "ки"  # Math-Shepherd's step tag (a rare Cyrillic bigram, one token in Llama/Mistral vocabularies)
ANSWER_RE = re.compile(r"####\s*(-?[\d,]*\.?\d+)")
_MS_ANSWER_RE = re.compile(r"[Tt]he answer is:?\s*\$?(-?[\d,]*\.?\d+)")
_CALC_RE = re.compile(r"<<[^>]*>>")  # GSM8K calculator annotations


@dataclass
class Problem:
    """A question with its gold final answer and (optionally) gold steps."""

    id: str
    question: str
    answer: str
    steps: list[str] = field(default_factory=list)


@dataclass
class StepSolution:
    """A solution as a list of steps; `labels[i]` in [0, 1] is the step's correctness (1 = '+').

    Hard labels are 0/1, soft labels (Math-Shepherd's soft estimation) are fractions. `answer` is the
    final answer this solution reaches (None if it reaches none); `gold` the problem's answer if known.
    """

    question: str
    steps: list[str]
    labels: list[float] | None = None
    answer: str | None = None
    gold: str | None = None
    id: str = ""

    def __post_init__(self) -> None:
        if self.labels is not None and len(self.labels) != len(self.steps):
            raise ValueError(f"{len(self.labels)} labels for {len(self.steps)} steps")


# ------------------------------------------------------------------------------------------ answers
def normalize_number(text: str) -> str | None:
    """'1,234.50' -> '1234.5'; None when the text is not a number."""
    t = text.replace(",", "").strip().rstrip(".")
    try:
        v = float(t)
    except ValueError:
        return None
    return str(int(v)) if v == int(v) else repr(v)


def extract_answer(text: str) -> str | None:
    """The final answer of a solution text: the last '#### x' (GSM8K) or 'The answer is: x' (Math-Shepherd)."""
    found = ANSWER_RE.findall(text) or _MS_ANSWER_RE.findall(text)
    return normalize_number(found[-1]) if found else None


def is_correct(answer: str | None, gold: str) -> bool:
    """Numeric equality of normalized answers (the checker Math-Shepherd uses for GSM8K-style data)."""
    return answer is not None and answer == normalize_number(gold)


# ------------------------------------------------------------------------------------------ jsonl


def _field(row: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in row:
        raise LmlabError(f"{where}: missing field {key!r}", hint=f"fields present: {', '.join(sorted(row)) or 'none'}")
    if not isinstance(row[key], kind):
        raise LmlabError(f"{where}: field {key!r} must be {kind.__name__}, got {type(row[key]).__name__}")
    return row[key]


# ------------------------------------------------------------------------------------------ GSM8K
def gsm8k_problem(row: dict[str, Any], where: str, pid: str) -> Problem:
    question = _field(row, "question", str, where)
    answer = _field(row, "answer", str, where)
    lines = [ln.strip() for ln in answer.strip().split("\n") if ln.strip()]
    gold = extract_answer(lines[-1]) if lines else None
    if gold is None:
        raise LmlabError(
            f"{where}: answer does not end with '#### <number>'", hint="GSM8K answers end with a '#### 42' line"
        )
    return Problem(id=pid, question=question, answer=gold, steps=[_CALC_RE.sub("", ln) for ln in lines[:-1]])


def read_gsm8k(path: Path, limit: int | None = None) -> list[Problem]:
    out = []
    for no, row in iter_jsonl(path):
        out.append(gsm8k_problem(row, f"{path}:{no}", f"{Path(path).stem}-{no}"))
        if limit is not None and len(out) >= limit:
            break
    return out


# ------------------------------------------------------------------------------------------ Math-Shepherd
_STEP_PREFIX = re.compile(r"^\s*Step \d+:\s*")


def to_math_shepherd(sol: StepSolution, tag: str = STEP_TAG) -> dict[str, Any]:
    """One released-format row; hard labels (label >= 0.5 -> '+')."""
    body = "\n".join(f"Step {i}: {s} {tag}" for i, s in enumerate(sol.steps, 1))
    row: dict[str, Any] = {"input": f"{sol.question} {body}"}
    if sol.labels is not None:
        marks = iter("+" if lab >= 0.5 else "-" for lab in sol.labels)
        row["label"] = re.sub(re.escape(tag), lambda _m: next(marks), row["input"])
    return row


def from_math_shepherd(row: dict[str, Any], where: str, tag: str = STEP_TAG) -> StepSolution:
    text = _field(row, "input", str, where)
    parts = text.split(tag)  # parts[:-1] end where a tag stood; parts[-1] is what follows the last tag
    if len(parts) < 2 or "Step 1:" not in parts[0]:
        raise LmlabError(
            f"{where}: 'input' is not 'question Step 1: ... {tag}' text",
            hint=f"Math-Shepherd rows start steps with 'Step k:' and end each with ' {tag}'",
        )
    question, first = parts[0].split("Step 1:", 1)
    steps = [first.strip()] + [_STEP_PREFIX.sub("", p).strip() for p in parts[1:-1]]
    labels = None
    if "label" in row:
        label = _field(row, "label", str, where)
        labels, pos = [], 0
        for p in parts[:-1]:
            mark = label[pos + len(p) : pos + len(p) + 1]
            if label[pos : pos + len(p)] != p or mark not in ("+", "-"):
                raise LmlabError(
                    f"{where}: 'label' does not match 'input' at step {len(labels) + 1}",
                    hint=f"'label' must equal 'input' with each {tag} replaced by + or -",
                )
            labels.append(1.0 if mark == "+" else 0.0)
            pos += len(p) + 1
        if label[pos:] != parts[-1]:
            raise LmlabError(f"{where}: 'label' does not match 'input' after the last step")
    return StepSolution(question=question.strip(), steps=steps, labels=labels, answer=extract_answer(text))


def read_math_shepherd(path: Path, tag: str = STEP_TAG) -> list[StepSolution]:
    return [from_math_shepherd(row, f"{path}:{no}", tag) for no, row in iter_jsonl(path)]


# ------------------------------------------------------------------------------------------ trl
def to_trl(sol: StepSolution) -> dict[str, Any]:
    """trl PRMTrainer row; labels are hard (trl takes bools)."""
    if sol.labels is None:
        raise ValueError("trl rows need labels")
    return {"prompt": sol.question, "completions": list(sol.steps), "labels": [lab >= 0.5 for lab in sol.labels]}


def from_trl(row: dict[str, Any], where: str) -> StepSolution:
    prompt = _field(row, "prompt", str, where)
    steps = _field(row, "completions", list, where)
    labels = _field(row, "labels", list, where)
    if len(steps) != len(labels):
        raise LmlabError(f"{where}: {len(steps)} completions but {len(labels)} labels", hint="one label per step")
    if not all(isinstance(s, str) for s in steps) or not all(isinstance(x, (bool, int, float)) for x in labels):
        raise LmlabError(f"{where}: 'completions' must be strings and 'labels' booleans")
    return StepSolution(
        question=prompt,
        steps=steps,
        labels=[float(x) for x in labels],
        answer=extract_answer(steps[-1] if steps else ""),
    )


def read_trl(path: Path) -> list[StepSolution]:
    return [from_trl(row, f"{path}:{no}") for no, row in iter_jsonl(path)]


# ------------------------------------------------------------------------------------------ lmlab
def to_row(sol: StepSolution) -> dict[str, Any]:
    """lmlab's own lossless jsonl row (keeps soft labels, answer and gold)."""
    return {
        "id": sol.id,
        "question": sol.question,
        "steps": sol.steps,
        "labels": sol.labels,
        "answer": sol.answer,
        "gold": sol.gold,
    }


def from_row(row: dict[str, Any], where: str) -> StepSolution:
    steps = _field(row, "steps", list, where)
    labels = row.get("labels")
    if labels is not None and (not isinstance(labels, list) or len(labels) != len(steps)):
        raise LmlabError(f"{where}: 'labels' must be a list with one number per step")
    return StepSolution(
        question=_field(row, "question", str, where),
        steps=steps,
        labels=labels,
        answer=row.get("answer"),
        gold=row.get("gold"),
        id=str(row.get("id", "")),
    )


def read_solutions(path: Path) -> list[StepSolution]:
    return [from_row(row, f"{path}:{no}") for no, row in iter_jsonl(path)]
