"""A SQLite cache of LLM calls keyed by a content hash of everything that determines the reply.

Long generation jobs (GLAN's millions of calls) must survive Ctrl-C, crashes and failing endpoints
without repeating finished work: every completion is committed the moment it arrives (WAL journal, one
row per call), and a rerun looks each request up before calling the model. The key hashes the model,
prompt, sampling parameters, schema and a sample index, so k samples of one prompt are k entries.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import LmlabError


@dataclass
class Request:
    """One LLM call as the cache sees it. `tag` names the pipeline stage (accounting only, not hashed)."""

    model: str
    prompt: Any  # str or chat messages
    params: dict[str, Any]  # SamplingParams as a dict
    json_schema: dict | None = None
    sample: int = 0
    tag: str = ""

    @property
    def key(self) -> str:
        body = {
            "model": self.model,
            "prompt": self.prompt,
            "params": self.params,
            "schema": self.json_schema,
            "sample": self.sample,
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


@dataclass
class Entry:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    key TEXT PRIMARY KEY, tag TEXT, model TEXT, request TEXT, text TEXT, finish_reason TEXT,
    prompt_tokens INTEGER, completion_tokens INTEGER, created REAL
);
"""


class LLMCache:
    """Thread-safe (one connection, one lock); each `put` is its own committed transaction."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise LmlabError(
                f"{self.path}: not a usable SQLite cache ({e})", hint="delete it or pass another --cache path"
            ) from None
        self.lock = threading.Lock()

    def get(self, key: str) -> Entry | None:
        with self.lock:
            row = self.db.execute(
                "SELECT text, finish_reason, prompt_tokens, completion_tokens FROM calls WHERE key=?", (key,)
            ).fetchone()
        return Entry(*row) if row else None

    def get_many(self, keys: Iterable[str]) -> dict[str, Entry]:
        keys = list(keys)
        out: dict[str, Entry] = {}
        with self.lock:
            for i in range(0, len(keys), 500):
                chunk = keys[i : i + 500]
                q = f"SELECT key, text, finish_reason, prompt_tokens, completion_tokens FROM calls WHERE key IN ({','.join('?' * len(chunk))})"
                for k, *rest in self.db.execute(q, chunk):
                    out[k] = Entry(*rest)
        return out

    def put(self, req: Request, entry: Entry) -> None:
        body = json.dumps(asdict(req), ensure_ascii=False)
        self.put_key(req.key, req.tag, req.model, body, entry)

    def put_key(self, key: str, tag: str, model: str, request_json: str, entry: Entry) -> None:
        """Store a reply under a known key (Batch API import: the key travelled as custom_id)."""
        with self.lock, self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO calls VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    key,
                    tag,
                    model,
                    request_json,
                    entry.text,
                    entry.finish_reason,
                    entry.prompt_tokens,
                    entry.completion_tokens,
                    time.time(),
                ),
            )

    def usage(self) -> list[dict[str, Any]]:
        """Calls and tokens per tag (pipeline stage)."""
        with self.lock:
            rows = self.db.execute(
                "SELECT tag, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens) FROM calls GROUP BY tag ORDER BY MIN(created)"
            ).fetchall()
        return [{"stage": t, "calls": n, "prompt_tokens": p or 0, "completion_tokens": c or 0} for t, n, p, c in rows]

    def __len__(self) -> int:
        with self.lock:
            return self.db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]

    def close(self) -> None:
        with self.lock:
            self.db.close()
