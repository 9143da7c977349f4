"""JSON-lines reading and writing shared by every system: errors name the file and line."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import LmlabError
from .paths import atomic_write_text


def iter_jsonl(
    path: str | Path, hint: str = "each line must be one JSON object"
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line; malformed lines raise a one-line LmlabError."""
    path = Path(path)
    if not path.exists():
        raise LmlabError(f"{path}: no such file")
    with path.open(encoding="utf-8", errors="replace") as f:
        for no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise LmlabError(f"{path}:{no}: invalid JSON ({e.msg})", hint=hint) from None
            if not isinstance(row, dict):
                raise LmlabError(f"{path}:{no}: expected a JSON object, got {type(row).__name__}", hint=hint)
            yield no, row


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write all rows atomically (a crash leaves the previous file, never half of a new one)."""
    atomic_write_text(Path(path), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return Path(path)
