"""Resumable predictions: JSON lines keyed by (model, subtask, template, item, rotation).

Each finished prediction is appended as one complete line with a single `os.write` on an O_APPEND descriptor and
fsync'd, so a crash or Ctrl-C loses at most the prediction in flight; a torn last line (power loss mid-write) is
ignored on reading and rewritten on the next run. A rerun skips every key already present."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..core.errors import LmlabError

KEY_FIELDS = ("model", "subtask", "template", "item", "rotation")


def key_of(rec: dict[str, Any]) -> tuple:
    return tuple(rec[f] for f in KEY_FIELDS)


class PredictionStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.records: dict[tuple, dict[str, Any]] = {}
        self.torn = 0
        if self.path.exists():
            for rec in self._read():
                self.records[key_of(rec)] = rec

    def _read(self) -> Iterator[dict[str, Any]]:
        lines = self.path.read_bytes().split(b"\n")
        for no, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except json.JSONDecodeError:
                if no == len(lines):  # a torn final line from an interrupted write: drop it, it is redone
                    self.torn += 1
                    continue
                raise LmlabError(f"{self.path}:{no}: invalid JSON", hint="not a deepeval predictions file?") from None
            if not isinstance(rec, dict) or any(f not in rec for f in KEY_FIELDS):
                raise LmlabError(
                    f"{self.path}:{no}: missing one of the key fields {', '.join(KEY_FIELDS)}",
                    hint="not a deepeval predictions file?",
                )
            yield rec

    def __contains__(self, key: tuple) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def get(self, key: tuple) -> dict[str, Any] | None:
        return self.records.get(key)

    def append(self, rec: dict[str, Any]) -> None:
        line = (json.dumps(rec, ensure_ascii=False) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.torn or (self.path.exists() and self.path.stat().st_size and not self._ends_with_newline()):
            self._rewrite()  # drop a torn tail before appending after it
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.records[key_of(rec)] = rec

    def _ends_with_newline(self) -> bool:
        with self.path.open("rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def _rewrite(self) -> None:
        from ..core.paths import atomic_write_text

        atomic_write_text(self.path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.records.values()))
        self.torn = 0

    def rows(self, **where: Any) -> list[dict[str, Any]]:
        return [r for r in self.records.values() if all(r.get(k) == v for k, v in where.items())]
