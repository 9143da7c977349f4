"""GLAN as resumable stages: subjects -> syllabus -> questions -> answers (arXiv:2402.13064, section 2).

Every LLM call goes through `Caller`, which looks it up in the SQLite cache (core.llmcache) first and
commits each reply the moment it arrives, so a killed run restarts without repeating finished calls.
Replies are validated against the stage's pydantic schema; invalid ones are retried under a new
attempt index (a new cache key), then dropped and counted. Budgets (`max_requests`, `max_tokens`) stop a
run cleanly with everything so far cached. In export mode the first stage with uncached calls is written
as OpenAI Batch API JSONL instead of being called (see batchapi.py).
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ..core.engine import SamplingParams
from ..core.llmcache import Entry, LLMCache, Request
from ..core.paths import atomic_write_text
from . import prompts as P
from .schemas import Answer, Question, SubjectList, Syllabus
from .taxonomy import Discipline

M = TypeVar("M", bound=BaseModel)


class BudgetReached(Exception):
    """--max-requests / --max-tokens hit; everything computed so far is cached."""


class PendingExport(Exception):
    """Export mode: uncached requests of a stage were collected instead of called."""

    def __init__(self, stage: str, requests: list[Request]):
        super().__init__(f"{len(requests)} pending requests in stage {stage!r}")
        self.stage, self.requests = stage, requests


@dataclass
class StageStats:
    calls: int = 0  # requests this stage needed (including retries)
    cached: int = 0  # answered from the cache
    new: int = 0  # sent to the model in this run
    invalid: int = 0  # replies that failed validation (each is retried)
    dropped: int = 0  # items given up after all retries
    prompt_tokens: int = 0  # behind every reply of the stage (cached or new)
    completion_tokens: int = 0
    seconds: float = 0.0


class Caller:
    """Cached, validated, budgeted LLM calls on any backend (local engine or OpenAI-compatible HTTP)."""

    def __init__(
        self,
        backend: Any,
        cache: LLMCache,
        seed: int = 0,
        retries: int = 2,
        max_requests: int | None = None,
        max_tokens: int | None = None,
        export: bool = False,
    ):
        self.backend, self.cache, self.seed, self.retries = backend, cache, seed, retries
        self.max_requests, self.max_tokens, self.export = max_requests, max_tokens, export
        self.stats: dict[str, StageStats] = {}
        self.new_requests = 0
        self.new_tokens = 0

    def params(self, temperature: float, max_tokens: int, sample: int, attempt: int) -> SamplingParams:
        # a distinct seed per sample/attempt: k samples of one prompt must differ on servers that honour seeds;
        # a retry of a greedy stage samples (greedy would only repeat the invalid reply)
        temperature = temperature if attempt == 0 else max(temperature, 0.7)
        return SamplingParams(
            max_new_tokens=max_tokens,
            temperature=temperature,
            top_p=1.0 if temperature == 0 else 0.95,
            seed=self.seed + sample + 1000 * attempt,
        )

    def run(
        self, stage: str, items: Sequence[tuple[Any, int]], schema: type[M], temperature: float, max_tokens: int
    ) -> list[M | None]:
        """items: (prompt, sample index). Returns the validated reply per item (None when all retries failed)."""
        st = self.stats.setdefault(stage, StageStats())
        t0 = time.time()
        out: list[M | None] = [None] * len(items)
        todo = list(range(len(items)))
        js = schema.model_json_schema()
        for attempt in range(self.retries + 1):
            if not todo:
                break
            reqs = {
                i: Request(
                    self.backend.name,
                    items[i][0],
                    asdict(self.params(temperature, max_tokens, items[i][1], attempt)),
                    js,
                    sample=items[i][1] + 1000 * attempt,
                    tag=stage,
                )
                for i in todo
            }
            entries = self._fetch(stage, st, reqs)
            failed = []
            for i in todo:
                try:
                    out[i] = schema.model_validate_json(entries[i].text)
                except ValidationError:
                    st.invalid += 1
                    failed.append(i)
            todo = failed
        st.dropped += len(todo)
        st.seconds += time.time() - t0
        return out

    def _fetch(self, stage: str, st: StageStats, reqs: dict[int, Request]) -> dict[int, Entry]:
        hit = self.cache.get_many(r.key for r in reqs.values())
        got = {i: hit[r.key] for i, r in reqs.items() if r.key in hit}
        st.calls += len(reqs)
        st.cached += len(got)
        for e in got.values():  # token columns describe every reply behind the stage, cached or new
            st.prompt_tokens += e.prompt_tokens
            st.completion_tokens += e.completion_tokens
        missing = [i for i in reqs if i not in got]
        if missing and self.export:
            raise PendingExport(stage, [reqs[i] for i in missing])
        groups: dict[str, list[int]] = {}  # one backend call per distinct sampling setup
        for i in missing:
            groups.setdefault(json.dumps(reqs[i].params, sort_keys=True), []).append(i)
        for idx in groups.values():
            self._call(st, [reqs[i] for i in idx], idx, got)
        return got

    def _call(self, st: StageStats, reqs: list[Request], idx: list[int], got: dict[int, Entry]) -> None:
        params = SamplingParams(**reqs[0].params)
        # local: one engine batch per chunk; HTTP: several pool-fulls per chunk (replies persist as they land,
        # so a chunk only bounds how far a --max-tokens budget can overshoot)
        step = getattr(self.backend, "batch_size", None) or 8 * getattr(self.backend, "concurrency", 8)
        for lo in range(0, len(reqs), step):
            left = None if self.max_requests is None else self.max_requests - self.new_requests
            if left is not None and left <= 0 or self.max_tokens is not None and self.new_tokens >= self.max_tokens:
                raise BudgetReached(f"budget reached after {self.new_requests} new calls and {self.new_tokens} tokens")
            planned = list(range(lo, min(lo + step, len(reqs))))
            chunk = planned[: left if left is not None else None]
            prompts = [reqs[k].prompt for k in chunk]
            if hasattr(self.backend, "iter_complete"):  # HTTP: persist each reply as it lands
                results = ((chunk[j], c) for j, c in self.backend.iter_complete(prompts, params, reqs[0].json_schema))
            else:
                results = zip(chunk, self.backend.complete(prompts, params, reqs[0].json_schema))
            for k, c in results:
                e = Entry(c.text, c.finish_reason, c.prompt_tokens, c.completion_tokens)
                self.cache.put(reqs[k], e)
                got[idx[k]] = e
                self.new_requests += 1
                self.new_tokens += c.prompt_tokens + c.completion_tokens
                st.new += 1
                st.prompt_tokens += c.prompt_tokens
                st.completion_tokens += c.completion_tokens
            if len(chunk) < len(planned):
                raise BudgetReached(f"--max-requests {self.max_requests} reached")


@dataclass
class GlanConfig:
    """Counts and sampling per stage. The paper: 126 disciplines, ~10M pairs; defaults here are laptop-sized."""

    subjects_per_discipline: int = 3
    subject_samples: int = 2  # k samples of the subject list at temperature, merged and deduplicated
    max_sessions: int = 4
    questions_per_subject: int = 3
    temperature: float = 0.7  # subjects and questions (diversity)
    answer_temperature: float = 0.0
    max_tokens: dict[str, int] = field(
        default_factory=lambda: {"subjects": 200, "syllabus": 320, "questions": 160, "answers": 400}
    )
    seed: int = 0


def _norm(s: str) -> str:
    return " ".join(s.casefold().split())


def sample_sessions(syllabus: list[dict], rng: random.Random) -> tuple[list[int], list[str]]:
    """GLAN 2.3: pick one or two class sessions, then 1-5 key concepts from their union."""
    picked = sorted(rng.sample(range(len(syllabus)), k=min(len(syllabus), rng.choice([1, 2]))))
    pool = list(dict.fromkeys(c for i in picked for c in syllabus[i]["concepts"]))
    concepts = rng.sample(pool, k=min(len(pool), rng.randint(1, 5)))
    return picked, concepts


def run_pipeline(disciplines: list[Discipline], caller: Caller, cfg: GlanConfig) -> list[dict]:
    """All four stages; returns the rows (with provenance). Raises BudgetReached / PendingExport to stop early."""
    model = caller.backend.name
    # stage 1: subjects, k samples per discipline, merged with exact-name dedup, capped
    items = [
        (P.subjects_prompt(d.name, cfg.subjects_per_discipline), s)
        for d in disciplines
        for s in range(cfg.subject_samples)
    ]
    lists = caller.run("subjects", items, SubjectList, cfg.temperature, cfg.max_tokens["subjects"])
    subjects: list[tuple[Discipline, str, str]] = []
    for di, d in enumerate(disciplines):
        seen: set[str] = set()
        for s in range(cfg.subject_samples):
            r = lists[di * cfg.subject_samples + s]
            for sub in r.subjects if r else []:
                if _norm(sub.name) not in seen and len(seen) < cfg.subjects_per_discipline:
                    seen.add(_norm(sub.name))
                    subjects.append((d, sub.name.strip(), sub.level))
    # stage 2: a syllabus per subject
    syl = caller.run(
        "syllabus",
        [(P.syllabus_prompt(d.name, s, lv, cfg.max_sessions), 0) for d, s, lv in subjects],
        Syllabus,
        0.0,
        cfg.max_tokens["syllabus"],
    )
    courses = [
        (d, s, lv, [x.model_dump() for x in y.sessions[: cfg.max_sessions]])
        for (d, s, lv), y in zip(subjects, syl)
        if y
    ]
    # stage 3: questions from sampled sessions/concepts, with the syllabus up to the last picked session as context
    qitems, prov = [], []
    for d, s, lv, sessions in courses:
        for q in range(cfg.questions_per_subject):
            rng = random.Random(f"{cfg.seed}|{d.name}|{s}|{q}")
            picked, concepts = sample_sessions(sessions, rng)
            titles = [sessions[i]["title"] for i in picked]
            qitems.append((P.question_prompt(d.name, s, sessions[: picked[-1] + 1], titles, concepts), q))
            prov.append(
                {
                    "field": d.field,
                    "subfield": d.subfield,
                    "discipline": d.name,
                    "subject": s,
                    "level": lv,
                    "sessions": titles,
                    "concepts": concepts,
                }
            )
    questions = caller.run("questions", qitems, Question, cfg.temperature, cfg.max_tokens["questions"])
    kept = [(p, q.question.strip()) for p, q in zip(prov, questions) if q]
    # stage 4: answers
    answers = caller.run(
        "answers", [(P.answer_prompt(q), 0) for _, q in kept], Answer, cfg.answer_temperature, cfg.max_tokens["answers"]
    )
    sampling = {
        "subjects": {"temperature": cfg.temperature, "samples": cfg.subject_samples},
        "syllabus": {"temperature": 0.0},
        "questions": {"temperature": cfg.temperature},
        "answers": {"temperature": cfg.answer_temperature},
        "seed": cfg.seed,
    }
    return [
        {"instruction": q, "response": a.answer.strip(), **p, "model": model, "sampling": sampling}
        for (p, q), a in zip(kept, answers)
        if a
    ]


def write_jsonl(rows: list[dict], path: Path) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def stage_table(caller: Caller) -> list[dict[str, Any]]:
    return [{"stage": k, **asdict(v)} for k, v in caller.stats.items()]


def rows_per_discipline(rows: list[dict]) -> Counter:
    return Counter(r["discipline"] for r in rows)
