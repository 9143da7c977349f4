"""Dataset-level filters for generated instruction data: exact and near-duplicate removal (MinHash LSH via
datasketch, as in distilabel) and decontamination against benchmark files by word n-gram overlap (the
GPT-3 / Llama-2 style check; n=13 in GPT-3, smaller n is stricter on short questions). Row-level quality
filters (schema, length, language, refusal, repetition) are in filters.py."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import LmlabError

_WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


def ngrams(ws: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(ws[i : i + n]) for i in range(len(ws) - n + 1)}


@dataclass
class FilterReport:
    kept: list[dict]
    removed: list[dict] = field(default_factory=list)  # rows with a "removed" reason added
    counts: dict[str, int] = field(default_factory=dict)


def _minhash(ws: list[str], num_perm: int, shingle: int):
    from datasketch import MinHash

    m = MinHash(num_perm=num_perm, seed=1)
    grams = ngrams(ws, shingle) or {tuple(ws)}
    m.update_batch([" ".join(g).encode() for g in grams])
    return m


def dedup(
    rows: list[dict], key: str = "instruction", threshold: float = 0.8, num_perm: int = 128, shingle: int = 3
) -> FilterReport:
    """Drop exact duplicates (normalised text hash), then near duplicates (estimated Jaccard of word
    `shingle`-grams >= threshold); the first occurrence is kept."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    seen: set[str] = set()
    rep = FilterReport([], [], {"exact_duplicate": 0, "near_duplicate": 0})
    for i, r in enumerate(rows):
        ws = words(r[key])
        h = hashlib.sha1(" ".join(ws).encode()).hexdigest()
        if h in seen:
            rep.removed.append({**r, "removed": "exact_duplicate"})
            rep.counts["exact_duplicate"] += 1
            continue
        seen.add(h)
        m = _minhash(ws, num_perm, shingle)
        if lsh.query(m):
            rep.removed.append({**r, "removed": "near_duplicate"})
            rep.counts["near_duplicate"] += 1
            continue
        lsh.insert(str(i), m)
        rep.kept.append(r)
    return rep


BENCH_FIELDS = ("question", "problem", "prompt", "input", "text", "turns", "instruction", "query", "description")


def _text_of(obj: dict, fields: list[str]) -> tuple[str, str] | None:
    """(field, text) for the first of `fields` present (case-insensitive); a list of strings (chat turns) joins."""
    low = {k.casefold(): v for k, v in obj.items() if isinstance(k, str)}
    for f in fields:
        v = low.get(f.casefold())
        if isinstance(v, str) and v.strip():
            return f, v
        if isinstance(v, list) and v and all(isinstance(x, str) for x in v):
            return f, "\n".join(v)
    return None


def load_benchmark_texts(path: str | Path, fields: Iterable[str] = BENCH_FIELDS) -> list[str]:
    """Texts of a benchmark file: JSONL (one object a line) or CSV / TSV with a header; per record, the first of
    `fields` present (case-insensitive; a list of strings such as Spec-Bench's `turns` is joined)."""
    path = Path(path)
    if not path.exists():
        raise LmlabError(f"{path}: benchmark file not found", hint="pass --decontaminate FILE.jsonl|.csv")
    fields = list(fields)
    hint = f"each record needs one of {', '.join(fields)} (choose with --text-field)"
    out = []
    if path.suffix.lower() in (".csv", ".tsv"):
        import csv

        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            for n, rec in enumerate(reader, 2):
                got = _text_of(rec, fields)
                if got is None:
                    raise LmlabError(
                        f"{path}:{n}: no text column (columns: {', '.join(reader.fieldnames or [])})", hint=hint
                    )
                out.append(got[1])
        return out
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise LmlabError(f"{path}:{n}: invalid JSON ({e.msg})", hint="JSONL: one JSON object a line") from None
        got = _text_of(obj, fields) if isinstance(obj, dict) else None
        if got is None:
            raise LmlabError(f"{path}:{n}: no text field", hint=hint)
        out.append(got[1])
    return out


class Decontaminator:
    """A row is contaminated when it shares any word n-gram with a benchmark text."""

    def __init__(self, benchmark_texts: Iterable[str], n: int = 10):
        self.n = n
        self.grams: set[tuple[str, ...]] = set()
        for t in benchmark_texts:
            self.grams |= ngrams(words(t), n)

    def contaminated(self, text: str) -> bool:
        return not self.grams.isdisjoint(ngrams(words(text), self.n))

    def filter(self, rows: list[dict], keys: tuple[str, ...] = ("instruction", "response")) -> FilterReport:
        rep = FilterReport([], [], {"contaminated": 0})
        for r in rows:
            if any(self.contaminated(r[k]) for k in keys):
                rep.removed.append({**r, "removed": "contaminated"})
                rep.counts["contaminated"] += 1
            else:
                rep.kept.append(r)
        return rep


def stats_rows(rows: list[dict], removed: list[dict]) -> list[dict]:
    """Per-discipline table: kept rows, mean instruction/response length (words), duplicate and contamination rates."""
    by: dict[str, dict] = {}
    for r in rows + removed:
        d = by.setdefault(
            r["discipline"],
            {
                "discipline": r["discipline"],
                "rows": 0,
                "generated": 0,
                "q_words": 0,
                "a_words": 0,
                "dup": 0,
                "contam": 0,
                "filtered": 0,
            },
        )
        d["generated"] += 1
        reason = r.get("removed")
        if reason is None:
            d["rows"] += 1
            d["q_words"] += len(words(r["instruction"]))
            d["a_words"] += len(words(r["response"]))
        elif reason == "contaminated":
            d["contam"] += 1
        elif reason in ("exact_duplicate", "near_duplicate"):
            d["dup"] += 1
        else:  # a quality filter (filters.py)
            d["filtered"] += 1
    out = []
    for d in sorted(by.values(), key=lambda x: x["discipline"]):
        out.append(
            {
                "discipline": d["discipline"],
                "rows": d["rows"],
                "generated": d["generated"],
                "mean_q_words": d["q_words"] / max(d["rows"], 1),
                "mean_a_words": d["a_words"] / max(d["rows"], 1),
                "filtered_rate": d["filtered"] / d["generated"],
                "dup_rate": d["dup"] / d["generated"],
                "contam_rate": d["contam"] / d["generated"],
            }
        )
    return out
