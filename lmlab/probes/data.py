"""Addition problems for number probing: the NumProbe set (arXiv:2401.03735), a seeded generator, prompts
and the token positions the paper probes (last token of a, last token of b, last input token).

Positions come from the tokenizer's character offsets, not from "is this token a digit" heuristics, so they
are right for tokenizers that merge digits ("123" as one token) as well as for digit-splitting ones.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmlab.core.errors import LmlabError
from lmlab.core.paths import shared_data

TEMPLATE = "Question: What is the sum of {a} and {b} ?\nAnswer: "
POSITIONS = ("a", "b", "last")  # last token of a, last token of b, last input token
TARGETS = ("a", "b", "sum")  # probed as log2 of a, b and a + b
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Problem:
    id: int
    digits: int
    a: int
    b: int
    split: str

    @property
    def sum(self) -> int:
        return self.a + self.b

    def prompt(self) -> str:
        return TEMPLATE.format(a=self.a, b=self.b)


def default_data() -> Path:
    return shared_data("numprobe", "raw.jsonl")


def load_problems(path: str | Path | None = None) -> list[Problem]:
    """Read NumProbe-format JSON lines (`id`, `num_digits`, `a`, `b`, `split`; `golden` checked if present)."""
    path = Path(path) if path is not None else default_data()
    if not path.exists():
        raise LmlabError(
            f"{path}: no such file", hint="pass a JSON-lines file of addition problems (see `lmlab probe make-data`)"
        )
    out: list[Problem] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            out.append(_parse_row(path, n, line))
    if not out:
        raise LmlabError(f"{path}: no problems in file", hint="one JSON object per line with a, b, num_digits, split")
    return out


def _parse_row(path: Path, n: int, line: str) -> Problem:
    where = f"{path}:{n}"
    try:
        row: dict[str, Any] = json.loads(line)
    except json.JSONDecodeError as e:
        raise LmlabError(f"{where}: invalid JSON ({e.msg})", hint="one JSON object per line") from None
    if not isinstance(row, dict):
        raise LmlabError(f"{where}: expected a JSON object")
    for key in ("a", "b"):
        if not isinstance(row.get(key), int) or isinstance(row.get(key), bool) or row[key] <= 0:
            raise LmlabError(
                f"{where}: field {key!r} must be a positive integer, got {row.get(key)!r}",
                hint="log2 targets need a, b > 0",
            )
    split = row.get("split", "test")
    if split not in SPLITS:
        raise LmlabError(f"{where}: field 'split' is {split!r}", hint=f"use one of {', '.join(SPLITS)}")
    if "golden" in row and row["golden"] != row["a"] + row["b"]:
        raise LmlabError(
            f"{where}: golden {row['golden']} != a + b = {row['a'] + row['b']}", hint="fix or drop the golden field"
        )
    digits = row.get("num_digits", len(str(max(row["a"], row["b"]))))
    return Problem(int(row.get("id", n - 1)), int(digits), row["a"], row["b"], split)


def generate_problems(
    digits: Sequence[int] = range(2, 11),
    per_digit: int = 1000,
    seed: int = 0,
    split_fracs: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> list[Problem]:
    """A fresh NumProbe-style set: both operands uniform among `d`-digit numbers, split 80/10/10 per digit count."""
    rng = random.Random(seed)
    out: list[Problem] = []
    for d in digits:
        if d < 1:
            raise LmlabError(f"digit count {d} < 1", hint="use positive digit counts")
        lo, hi = 10 ** (d - 1) if d > 1 else 1, 10**d - 1
        n_train = round(per_digit * split_fracs[0])
        n_val = round(per_digit * split_fracs[1])
        for i in range(per_digit):
            split = "train" if i < n_train else "val" if i < n_train + n_val else "test"
            out.append(Problem(len(out), d, rng.randint(lo, hi), rng.randint(lo, hi), split))
    return out


def write_problems(problems: Sequence[Problem], path: str | Path) -> None:
    from lmlab.core.paths import atomic_write_text

    lines = [
        json.dumps({"id": p.id, "num_digits": p.digits, "a": p.a, "b": p.b, "golden": p.sum, "split": p.split})
        for p in problems
    ]
    atomic_write_text(Path(path), "\n".join(lines) + "\n")


def subset(problems: Sequence[Problem], split: str, per_digit: int | None, seed: int = 0) -> list[Problem]:
    """`per_digit` problems of one split for each digit count (all when None), in a seeded order."""
    by_d: dict[int, list[Problem]] = defaultdict(list)
    for p in problems:
        if p.split == split:
            by_d[p.digits].append(p)
    rng = random.Random(seed)
    out: list[Problem] = []
    for d in sorted(by_d):
        rows = by_d[d]
        out += rows if per_digit is None or per_digit >= len(rows) else rng.sample(rows, per_digit)
    return out


def encode(tokenizer: Any, problems: Sequence[Problem]) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of each prompt and the indices of (last token of a, last token of b, last token)."""
    ids_all, pos_all = [], []
    for p in problems:
        text = p.prompt()
        enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
        ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
        a_end = text.index(str(p.a)) + len(str(p.a))
        b_end = text.index(str(p.b), a_end) + len(str(p.b))
        pos_all.append([_last_token_before(offsets, a_end), _last_token_before(offsets, b_end), len(ids) - 1])
        ids_all.append(ids)
    return ids_all, pos_all


def _last_token_before(offsets: Sequence[tuple[int, int]], end: int) -> int:
    """Index of the token that contains character end-1 (the number's last digit)."""
    for i, (s, e) in enumerate(offsets):
        if s <= end - 1 < e:
            return i
    raise LmlabError(
        "tokenizer offsets do not cover the number", hint="use a fast (Rust) tokenizer that returns offsets"
    )
