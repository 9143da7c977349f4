"""Row-level quality filters for generated instruction data, the checks users of datatrove / distilabel expect
before dedup and decontamination: schema adherence, length, language, refusals and degenerate repetition.

Each filter is a small object with a `name` and `reason(row) -> str | None` (None: keep). `apply_filters` runs
them in order, like a datatrove pipeline: a row is dropped by (and counted under) the first filter that rejects
it, and keeps the detail (which rule, which field) in `removed_detail`, so `removed.jsonl` says why.

The repetition rules and thresholds are Gopher's (Rae et al. 2021, table A1) as datatrove's
`GopherRepetitionFilter` applies them: duplicate line / paragraph fractions, the share of characters in the most
common 2-4-gram and the share of characters inside repeated 5-10-grams.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from pydantic import ValidationError

from .quality import FilterReport, words
from .schemas import Answer, Question

TEXT_KEYS = ("instruction", "response")

# Gopher table A1 (datatrove defaults)
TOP_NGRAM_FRAC = ((2, 0.20), (3, 0.18), (4, 0.16))
DUP_NGRAM_FRAC = ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))
_PARAGRAPH = re.compile(r"\n{2,}")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
# Gopher applies its n-gram rules to documents of >= 50 words; on a 30-word question one repeated 4-gram
# ("how many ... does") already covers 16 % of the characters (measured: 15 % of GSM8K test questions would go).
MIN_NGRAM_WORDS = 50


def _dup_fraction(parts: list[str]) -> tuple[float, int]:
    """(fraction of parts that repeat an earlier part, characters in those repeats)."""
    seen: set[str] = set()
    n_dup = chars = 0
    for p in parts:
        if p in seen:
            n_dup += 1
            chars += len(p)
        else:
            seen.add(p)
    return n_dup / max(len(parts), 1), chars


def top_ngram_char_fraction(ws: list[str], n: int, total_chars: int) -> float:
    """Characters covered by the most frequent word n-gram (counted once per occurrence), over all characters.
    Zero when no n-gram occurs twice."""
    grams = Counter(" ".join(ws[i : i + n]) for i in range(len(ws) - n + 1))
    if not grams:
        return 0.0
    gram, count = grams.most_common(1)[0]
    return len(gram) * count / total_chars if count > 1 else 0.0


def dup_ngram_char_fraction(ws: list[str], n: int, total_chars: int) -> float:
    """Characters inside word n-grams that repeat an earlier n-gram, over all characters. A repeat is counted once
    and skipped past (non-overlapping), so a text repeated k times scores about (k-1)/k."""
    seen: set[str] = set()
    chars, i = 0, 0
    while i <= len(ws) - n:
        gram = " ".join(ws[i : i + n])
        if gram in seen:
            chars += len(gram)
            i += n
        else:
            seen.add(gram)
            i += 1
    return chars / total_chars


def repetition_reason(text: str, line_frac: float = 0.3, line_char_frac: float = 0.2) -> str | None:
    """The first Gopher repetition rule `text` breaks, or None. Model output often repeats itself within one line,
    so sentences are checked like lines; the n-gram rules apply from `MIN_NGRAM_WORDS` words on."""
    text = text.strip()
    if not text:
        return None
    units = (("paragraph", _PARAGRAPH.split(text)), ("line", text.splitlines()), ("sentence", _SENTENCE.split(text)))
    for unit, parts in units:
        frac, chars = _dup_fraction([p.strip() for p in parts if p.strip()])
        if frac > line_frac:
            return f"dup_{unit}_frac {frac:.2f} > {line_frac}"
        if chars / len(text) > line_char_frac:
            return f"dup_{unit}_char_frac {chars / len(text):.2f} > {line_char_frac}"
    ws = words(text)
    total = len(text)  # as datatrove: n-gram characters over all characters of the text
    if len(ws) < MIN_NGRAM_WORDS:
        return None
    for n, limit in TOP_NGRAM_FRAC:
        f = top_ngram_char_fraction(ws, n, total)
        if f > limit:
            return f"top_{n}gram_char_frac {f:.2f} > {limit}"
    for n, limit in DUP_NGRAM_FRAC:
        f = dup_ngram_char_fraction(ws, n, total)
        if f > limit:
            return f"dup_{n}gram_char_frac {f:.2f} > {limit}"
    return None


@dataclass
class RepetitionFilter:
    """Gopher repetition rules on each text field."""

    keys: Sequence[str] = TEXT_KEYS
    name: str = "repetition"

    def reason(self, row: dict) -> str | None:
        for k in self.keys:
            r = repetition_reason(row[k])
            if r:
                return f"{k}: {r}"
        return None


@dataclass
class LengthFilter:
    """Word-count bounds per field: a 2-word "question" or a one-word answer to an essay question is no sample."""

    min_instruction_words: int = 5
    max_instruction_words: int = 400
    min_response_words: int = 3
    max_response_words: int = 2000
    name: str = "length"

    def reason(self, row: dict) -> str | None:
        for k, lo, hi in (
            ("instruction", self.min_instruction_words, self.max_instruction_words),
            ("response", self.min_response_words, self.max_response_words),
        ):
            n = len(words(row[k]))
            if not lo <= n <= hi:
                return f"{k}: {n} words outside [{lo}, {hi}]"
        return None


@lru_cache(maxsize=1)
def _lang_identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def detect_language(text: str) -> tuple[str, float]:
    """(ISO 639-1 code, probability) from py3langid (langid.py's model: 97 languages, offline, numpy only)."""
    lang, prob = _lang_identifier().classify(text)
    return lang, float(prob)


@dataclass
class LanguageFilter:
    """Instruction and response together must be in `languages` with probability >= `min_prob`. Texts shorter than
    `min_words` are not judged (language identification on a few words is noise)."""

    languages: Iterable[str] = ("en",)
    min_prob: float = 0.65
    min_words: int = 6
    name: str = "language"

    def reason(self, row: dict) -> str | None:
        text = f"{row['instruction']}\n{row['response']}"
        if len(words(text)) < self.min_words:
            return None
        lang, prob = detect_language(text)
        if lang not in set(self.languages) or prob < self.min_prob:
            return f"{lang} (p={prob:.2f}), want {'/'.join(self.languages)} with p >= {self.min_prob}"
        return None


_REFUSAL = re.compile(
    r"\b(i'?m sorry|i am sorry|i apologi[sz]e|as an ai\b|as a language model|i (?:can ?not|can't|won't|am unable to|"
    r"am not able to|'m unable to|'m not able to) (?:help|assist|answer|provide|comply|do that|fulfil)|"
    r"i do not have (?:access|enough information)|i don't have (?:access|enough information))",
    re.IGNORECASE,
)


@dataclass
class RefusalFilter:
    """Responses that open with a refusal or an AI disclaimer (the first `head_chars`, where refusals sit; a
    history answer that quotes "I am sorry" later on is not a refusal)."""

    head_chars: int = 200
    name: str = "refusal"

    def reason(self, row: dict) -> str | None:
        m = _REFUSAL.search(row["response"].replace("\u2019", "'")[: self.head_chars])
        return f"response opens with {m.group(0)!r}" if m else None


# The scaffolding of our prompts ("Reply in JSON: {...}") leaking into the data: a row that talks about its own
# format instead of its subject. Rows about JSON itself (a question that says "JSON") are left alone.
_SCAFFOLD = re.compile(
    r'reply in json|in json format|json format|"(?:question|answer|subjects|sessions)"\s*:|homework question|'
    r"your role is to",
    re.IGNORECASE,
)
_REQUIRED = {"instruction": str, "response": str, "discipline": str, "subject": str, "sessions": list, "concepts": list}


@dataclass
class SchemaFilter:
    """The row is what the GLAN schema promises: provenance fields present and typed, question and answer within
    their stage schemas, and neither echoing the prompts' output-format instructions."""

    name: str = "schema"

    def reason(self, row: dict) -> str | None:
        for k, t in _REQUIRED.items():
            if not isinstance(row.get(k), t) or not row[k]:
                return f"field {k!r} missing, empty or not a {t.__name__}"
        for k, model, attr in (("instruction", Question, "question"), ("response", Answer, "answer")):
            try:
                model.model_validate({attr: row[k]})
            except ValidationError as e:
                return f"{k}: {e.errors()[0]['msg']}"
        about_json = "json" in row["discipline"].casefold() or "json" in row["subject"].casefold()
        for k in TEXT_KEYS:
            m = _SCAFFOLD.search(row[k])
            if m and not about_json:
                return f"{k}: echoes the prompt's format instructions ({m.group(0)!r})"
        return None


def default_filters(languages: Iterable[str] = ("en",)) -> list:
    """Cheapest first: schema, length, refusal, repetition, language."""
    return [SchemaFilter(), LengthFilter(), RefusalFilter(), RepetitionFilter(), LanguageFilter(tuple(languages))]


def apply_filters(rows: list[dict], filters: Sequence) -> FilterReport:
    """Run `filters` in order; each row is dropped by the first that rejects it. `counts` has every filter's name
    (0 when it dropped nothing), so a report can show the whole table."""
    rep = FilterReport([], [], {f.name: 0 for f in filters})
    for r in rows:
        for f in filters:
            why = f.reason(r)
            if why:
                rep.removed.append({**r, "removed": f.name, "removed_detail": why})
                rep.counts[f.name] += 1
                break
        else:
            rep.kept.append(r)
    return rep
