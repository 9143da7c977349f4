"""Row-level quality filters: each drops what it is for and keeps a clean control row; the pipeline reports
per-filter drop counts and the benchmark files it checked."""

from __future__ import annotations

import json

import pytest

from lmlab.core.errors import LmlabError
from lmlab.core.paths import shared_data
from lmlab.glan.filters import (
    LanguageFilter,
    LengthFilter,
    RefusalFilter,
    RepetitionFilter,
    SchemaFilter,
    apply_filters,
    default_filters,
    repetition_reason,
)
from lmlab.glan.quality import load_benchmark_texts

GOOD_Q = "A 2 kg cart moving at 3 m/s collides with a 1 kg cart at rest and they stick together. Find their speed."
GOOD_A = (
    "Momentum is conserved in the collision: 2 kg x 3 m/s = 6 kg m/s before, so afterwards the 3 kg pair moves "
    "at 6 / 3 = 2 m/s. Kinetic energy is not conserved, because the carts stick together."
)


def _row(q: str = GOOD_Q, a: str = GOOD_A, **kw) -> dict:
    base = {
        "instruction": q,
        "response": a,
        "discipline": "Classical Mechanics",
        "subject": "Momentum",
        "sessions": ["Collisions"],
        "concepts": ["momentum"],
    }
    return {**base, **kw}


DEGENERATE = ("Your role is to provide a homework question in JSON format. " * 6).strip()


def test_the_clean_row_passes_every_filter():
    assert apply_filters([_row()], default_filters()).kept == [_row()]


def test_degenerate_repetition_from_the_old_report_is_dropped():
    assert repetition_reason(DEGENERATE).startswith("dup_sentence_frac")
    rep = apply_filters([_row(q=DEGENERATE), _row()], [RepetitionFilter()])
    assert rep.counts == {"repetition": 1} and rep.kept == [_row()]
    assert rep.removed[0]["removed_detail"].startswith("instruction:")
    # the same row is also caught by the schema filter (it echoes the prompt's format instructions)
    assert "format instructions" in SchemaFilter().reason(_row(q=DEGENERATE))


def test_ngram_repetition_within_one_long_paragraph():
    loop = " ".join(["the force acts on the mass and the mass moves with the force"] * 6)
    assert repetition_reason(loop).startswith(("top_", "dup_"))
    # control: a long, varied paragraph (Gopher's rules apply from 50 words)
    assert repetition_reason(GOOD_A + " " + GOOD_Q + " Check the answer against the units of each term.") is None


def test_repetition_filter_keeps_real_benchmark_questions():
    # control: human-written GSM8K questions; measured 2.6 % dropped (Gopher's n-gram rules on short texts)
    qs = load_benchmark_texts(shared_data("gsm8k", "test.jsonl"))
    dropped = sum(repetition_reason(q) is not None for q in qs)
    assert dropped / len(qs) < 0.05


def test_length_filter():
    f = LengthFilter()
    assert f.reason(_row(q="Explain momentum.")).startswith("instruction: 2 words")
    assert f.reason(_row(a="Yes.")).startswith("response: 1 words")
    assert f.reason(_row()) is None


def test_language_filter():
    fr = _row(
        q="Un chariot de 2 kg roulant à 3 m/s percute un chariot de 1 kg au repos. Quelle est leur vitesse commune ?",
        a="La quantité de mouvement est conservée : la vitesse commune des deux chariots est donc de 2 m/s.",
    )
    assert LanguageFilter().reason(fr).startswith("fr")
    assert LanguageFilter(languages=("fr",)).reason(fr) is None
    assert LanguageFilter().reason(_row()) is None


def test_refusal_filter():
    f = RefusalFilter()
    assert "sorry" in f.reason(_row(a="I'm sorry, but I cannot help with that request about carts."))
    assert f.reason(_row(a="As an AI language model, I do not solve homework. Ask your teacher.")) is not None
    # control: a later quote of an apology is not a refusal
    late = GOOD_A + " " * 200 + 'The general wrote: "I am sorry for the delay."'
    assert f.reason(_row(a=late)) is None


def test_schema_filter():
    f = SchemaFilter()
    assert "field 'concepts'" in f.reason(_row(concepts=[]))
    assert "format instructions" in f.reason(_row(a='{"answer": "2 m/s"}'))
    assert f.reason(_row(q="Explain what JSON format is for in a REST API response body.", subject="JSON APIs")) is None
    assert f.reason(_row()) is None


def test_decontamination_reads_jsonl_lists_and_csv(tmp_path):
    j = tmp_path / "b.jsonl"
    j.write_text(json.dumps({"turns": ["first turn", "second turn"]}) + "\n" + json.dumps({"Question": "q"}) + "\n")
    assert load_benchmark_texts(j) == ["first turn\nsecond turn", "q"]
    c = tmp_path / "b.csv"
    c.write_text('Class Index,Title,Description\n3,T,"A, quoted text"\n')
    assert load_benchmark_texts(c) == ["A, quoted text"]
    assert load_benchmark_texts(c, fields=("title",)) == ["T"]
    with pytest.raises(LmlabError, match=r"b.csv:2: no text column"):
        load_benchmark_texts(c, fields=("body",))


def test_run_reports_per_filter_drops_and_files_checked(tmp_path):
    from lmlab.glan.pipeline import GlanConfig
    from lmlab.glan.run import glan_run
    from lmlab.glan.taxonomy import load_taxonomy

    from .scripted import ScriptedBackend

    bench = tmp_path / "bench.csv"
    bench.write_text("text\nsomething unrelated to anything generated here at all today\n")
    cfg = GlanConfig(subjects_per_discipline=1, subject_samples=1, max_sessions=1, questions_per_subject=1)
    res = glan_run(tmp_path / "run", load_taxonomy()[:1], ScriptedBackend(), cfg, decontaminate=[bench])
    f = res.stats["filters"]
    assert set(f) >= {"schema", "length", "refusal", "repetition", "language", "exact_duplicate", "contaminated"}
    assert res.stats["decontaminated_against"] == [{"file": str(bench), "texts": 1, "removed": 0}]
    assert res.stats["generated"] == res.stats["kept"] + sum(f.values())
