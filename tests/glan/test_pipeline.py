"""GLAN pipeline mechanics (structure, provenance, the paper's sampling, caching, retries, budgets, Batch API) on a
deterministic scripted LLM; the real engine path is covered by test_local_engine.py and tests/core."""

from __future__ import annotations

import json
import random

import pytest

from lmlab.core.llmcache import LLMCache
from lmlab.glan.batchapi import import_results
from lmlab.glan.pipeline import GlanConfig, sample_sessions
from lmlab.glan.run import glan_run
from lmlab.glan.schemas import Answer, Question
from lmlab.glan.taxonomy import load_taxonomy

from .scripted import ScriptedBackend

CFG = GlanConfig(
    subjects_per_discipline=2,
    subject_samples=2,
    max_sessions=2,
    questions_per_subject=2,
    max_tokens={"subjects": 120, "syllabus": 160, "questions": 100, "answers": 100},
)


@pytest.fixture(scope="module")
def backend():
    return ScriptedBackend()


@pytest.fixture(scope="module")
def full_run(backend, tmp_path_factory):
    out = tmp_path_factory.mktemp("glan-full")
    return out, glan_run(out, load_taxonomy()[:2], backend, CFG)


def test_rows_have_structure_and_provenance(full_run):
    out, res = full_run
    assert res.status == "complete" and res.rows
    disciplines = {d.name: d for d in load_taxonomy()[:2]}
    rows = [json.loads(x) for x in (out / "glan.jsonl").read_text().splitlines()]
    assert rows == res.rows
    raw = [json.loads(x) for x in (out / "raw.jsonl").read_text().splitlines()]
    assert len(raw) == len(rows) + len((out / "removed.jsonl").read_text().splitlines())
    for r in rows:
        Question(question=r["instruction"]), Answer(answer=r["response"])  # schema-valid even from random weights
        d = disciplines[r["discipline"]]
        assert (r["field"], r["subfield"]) == (d.field, d.subfield)
        assert r["model"] == "scripted"  # the model travels with every row
        assert 1 <= len(r["sessions"]) <= 2 and 1 <= len(r["concepts"]) <= 5
        assert r["sampling"]["seed"] == 0 and r["sampling"]["subjects"]["samples"] == 2
    stages = {s["stage"]: s for s in res.stats["stages"]}
    assert stages["subjects"]["calls"] >= 2 * 2 and stages["subjects"]["prompt_tokens"] > 0  # k samples per discipline
    assert sum(d["generated"] for d in res.stats["disciplines"]) == len(raw)


def test_rerun_is_served_from_cache(full_run, backend):
    out, first = full_run
    again = glan_run(out, load_taxonomy()[:2], backend, CFG)
    assert again.rows == first.rows
    assert all(s["new"] == 0 and s["cached"] == s["calls"] for s in again.stats["stages"])


def test_max_requests_budget_stops_then_resumes(backend, tmp_path):
    res = glan_run(tmp_path, load_taxonomy()[:1], backend, CFG, max_requests=3)
    assert res.status == "budget" and sum(s["new"] for s in res.stats["stages"]) == 3
    assert len(LLMCache(tmp_path / "calls.sqlite")) == 3
    done = glan_run(tmp_path, load_taxonomy()[:1], backend, CFG)
    assert done.status == "complete"
    assert sum(s["cached"] for s in done.stats["stages"]) == 3  # the three budgeted calls were not repeated


def test_sample_sessions_follows_the_paper():
    syllabus = [{"title": f"s{i}", "concepts": [f"c{i}{j}" for j in range(4)]} for i in range(5)]
    sizes, nconcepts = set(), set()
    for seed in range(300):
        picked, concepts = sample_sessions(syllabus, random.Random(seed))
        sizes.add(len(picked))
        nconcepts.add(len(concepts))
        pool = {c for i in picked for c in syllabus[i]["concepts"]}
        assert picked == sorted(set(picked)) and set(concepts) <= pool and len(set(concepts)) == len(concepts)
    assert sizes == {1, 2} and nconcepts == {1, 2, 3, 4, 5}


def test_batch_export_import_round_trip(backend, tmp_path, full_run):
    """Export the first stage as Batch JSONL, answer it from a finished run's cache (as a batch endpoint
    would), import, and the rerun moves on to the next stage without calling the model for stage 1."""
    src_out, _ = full_run
    req_file = tmp_path / "requests.jsonl"
    res = glan_run(tmp_path / "run", load_taxonomy()[:2], backend, CFG, export_to=req_file)
    assert res.status == "exported"
    lines = [json.loads(x) for x in req_file.read_text().splitlines()]
    assert lines and all(
        x["url"] == "/v1/chat/completions" and x["body"]["response_format"]["type"] == "json_schema" for x in lines
    )
    assert len({x["custom_id"] for x in lines}) == len(lines)
    src = LLMCache(src_out / "calls.sqlite")
    results = []
    for x in lines:
        e = src.get(x["custom_id"])
        results.append(
            {
                "custom_id": x["custom_id"],
                "response": {
                    "status_code": 200,
                    "body": {
                        "choices": [{"message": {"role": "assistant", "content": e.text}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": e.prompt_tokens, "completion_tokens": e.completion_tokens},
                    },
                },
            }
        )
    results[-1] = {
        "custom_id": lines[-1]["custom_id"],
        "response": {"status_code": 500, "body": {}},
    }  # one failed line stays pending
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    counts = import_results(tmp_path / "results.jsonl", req_file, LLMCache(tmp_path / "run" / "calls.sqlite"))
    assert counts == {"imported": len(lines) - 1, "failed": 1, "unknown": 0}
    res2 = glan_run(tmp_path / "run", load_taxonomy()[:2], backend, CFG, export_to=req_file)
    assert res2.status == "exported"  # the failed line is pending again, alone
    assert len(req_file.read_text().splitlines()) == 1


def test_invalid_replies_are_retried_then_counted(tmp_path):
    be = ScriptedBackend(bad_every=3)
    res = glan_run(tmp_path, load_taxonomy()[:2], be, CFG)
    stages = {s["stage"]: s for s in res.stats["stages"]}
    invalid = sum(s["invalid"] for s in stages.values())
    assert invalid >= be.calls // 3 - 1 and invalid > 0
    assert sum(s["calls"] for s in stages.values()) == be.calls  # every retry is a call of its own (own cache key)
    assert res.rows and all(s["dropped"] == 0 for s in stages.values())  # one retry fixes an isolated bad reply


def test_k_subject_samples_are_merged_and_deduplicated(full_run):
    _, res = full_run
    for d in load_taxonomy()[:2]:
        subjects = [r["subject"] for r in res.rows if r["discipline"] == d.name]
        assert 1 <= len(set(subjects)) <= CFG.subjects_per_discipline


def test_max_tokens_budget(backend, tmp_path):
    res = glan_run(tmp_path, load_taxonomy()[:2], backend, CFG, max_tokens=1)
    assert res.status == "budget" and "budget reached" in res.message
    assert 0 < sum(s["new"] for s in res.stats["stages"]) <= backend.batch_size  # stops after the first chunk
