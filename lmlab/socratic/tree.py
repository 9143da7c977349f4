"""The dialogue tree: every node is one LLM turn, stored as append-only JSON lines.

The P vs NP artefacts show that a Socratic session is not a chat: each turn is a fresh call with a
hand-built message list (a system role, selected earlier (user, assistant) pairs, sometimes only an excerpt
of an earlier reply, then the new prompt), turns branch from the same history, and 39 of 97 restart from a
fresh context. So a node records exactly what was sent (`messages`), where each carried assistant message
came from (`context`: verbatim reply, excerpt, edited, or written by a person), the reply, usage, latency and
human edits; `parent` is the turn whose reply the prompt continues, `None` for a fresh-context restart.

Store format (one JSON object per line, never rewritten; `load` folds the events in order):
  {"event": "turn", "turn": {...}}          a node (reply may be null: asked, not yet answered)
  {"event": "reply", "id", "reply", "usage", "latency_s", "finish_reason"}
  {"event": "edit", "id", "field", "before", "after", "by"}   a human edit (prompt, excerpt, pattern, reply)
  {"event": "stop", "reason", "detail"}     the run ended (budget, human stop, done)
A line cut short by a kill (the last line, without its newline) is ignored on load; any other bad line is
an `LmlabError` naming the file and line.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import LmlabError

PATTERNS = ("deduction", "transformation", "decomposition", "verification", "integration")
# One colour per pattern; the viewer and the DOT/Mermaid exports share them (and the screenshot test checks them).
PATTERN_COLOURS = {
    "deduction": "#1f77b4",
    "transformation": "#9467bd",
    "decomposition": "#ff7f0e",
    "verification": "#d62728",
    "integration": "#2ca02c",
}


@dataclass
class Turn:
    """One node. `messages` is exactly what was (or will be) sent; `context[i]` describes `messages[i]`."""

    id: str
    pattern: str
    messages: list[dict[str, str]]
    parent: str | None = None
    reply: str | None = None
    context: list[dict[str, Any]] = field(default_factory=list)  # per message: {"kind", "turn"?}
    usage: dict[str, int] = field(default_factory=lambda: {"prompt_tokens": 0, "completion_tokens": 0})
    latency_s: float = 0.0
    finish_reason: str = ""
    edits: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # notebook/cell, problem path, checker result, ...

    def __post_init__(self) -> None:
        if self.pattern not in PATTERNS:
            raise LmlabError(f"turn {self.id}: unknown pattern {self.pattern!r}", hint=f"use one of {PATTERNS}")

    @property
    def role(self) -> str:
        """The system prompt ('' when there is none)."""
        return self.messages[0]["content"] if self.messages and self.messages[0]["role"] == "system" else ""

    @property
    def prompt(self) -> str:
        return self.messages[-1]["content"] if self.messages else ""

    @property
    def fresh(self) -> bool:
        """A fresh-context restart: nothing the model said before is in the messages."""
        return not any(m["role"] == "assistant" for m in self.messages)

    def openai_messages(self, with_reply: bool = True) -> list[dict[str, str]]:
        """The turn as an OpenAI chat message list (the request, plus the reply as the last assistant message)."""
        msgs = [{"role": m["role"], "content": m["content"]} for m in self.messages]
        if with_reply and self.reply is not None:
            msgs.append({"role": "assistant", "content": self.reply})
        return msgs

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Turn:
        return cls(**d)


class DialogueTree:
    """Turns by id, in creation order, with children derived from parents. Not thread-safe by itself:
    `TreeStore` serialises writers."""

    def __init__(self) -> None:
        self.turns: dict[str, Turn] = {}
        self.stops: list[dict[str, Any]] = []

    def add(self, turn: Turn) -> Turn:
        if turn.parent is not None and turn.parent not in self.turns:
            raise LmlabError(f"turn {turn.id}: parent {turn.parent!r} is not in the tree")
        self.turns[turn.id] = turn
        return turn

    def __len__(self) -> int:
        return len(self.turns)

    def __iter__(self) -> Iterator[Turn]:
        return iter(self.turns.values())

    def __getitem__(self, tid: str) -> Turn:
        try:
            return self.turns[tid]
        except KeyError:
            raise LmlabError(f"no turn {tid!r} in the tree") from None

    def children(self, tid: str | None) -> list[Turn]:
        return [t for t in self.turns.values() if t.parent == tid]

    def roots(self) -> list[Turn]:
        return self.children(None)

    def branches(self) -> list[Turn]:
        """Turns that are not their parent's first child: explicit alternative continuations."""
        out = []
        for t in self.turns.values():
            if t.parent is not None and self.children(t.parent)[0].id != t.id:
                out.append(t)
        return out

    def path(self, tid: str) -> list[Turn]:
        """Root-to-node chain of parents."""
        chain = []
        cur: str | None = tid
        while cur is not None:
            t = self[cur]
            chain.append(t)
            cur = t.parent
        return chain[::-1]

    def usage(self) -> dict[str, int]:
        pt = sum(t.usage.get("prompt_tokens", 0) for t in self)
        ct = sum(t.usage.get("completion_tokens", 0) for t in self)
        return {"turns": len(self), "prompt_tokens": pt, "completion_tokens": ct}

    def canonical(self) -> dict[str, dict[str, Any]]:
        """The tree without timing (for 'same tree' comparisons across runs and resumes)."""
        out = {}
        for t in self:
            d = t.to_json()
            d.pop("latency_s")
            out[t.id] = d
        return out

    def export_openai(self) -> list[dict[str, Any]]:
        """One record per turn: {"id", "pattern", "messages"} with messages in OpenAI chat format."""
        return [{"id": t.id, "pattern": t.pattern, "messages": t.openai_messages()} for t in self]

    # folding store events
    def apply(self, ev: dict[str, Any], where: str) -> None:
        kind = ev.get("event")
        if kind == "turn":
            try:
                self.add(Turn.from_json(ev["turn"]))
            except (KeyError, TypeError) as e:
                raise LmlabError(f"{where}: bad turn record ({e})") from None
        elif kind in ("reply", "edit"):
            t = self.turns.get(ev.get("id"))
            if t is None:
                raise LmlabError(f"{where}: {kind} for unknown turn {ev.get('id')!r}")
            if kind == "reply":
                t.reply, t.usage = ev["reply"], ev.get("usage", t.usage)
                t.latency_s, t.finish_reason = ev.get("latency_s", 0.0), ev.get("finish_reason", "")
                t.meta.update(ev.get("meta", {}))
            else:
                _apply_edit(t, ev)
        elif kind == "stop":
            self.stops.append({k: v for k, v in ev.items() if k != "event"})
        else:
            raise LmlabError(f"{where}: unknown event {kind!r}", hint="expected turn, reply, edit or stop")


def _apply_edit(t: Turn, ev: dict[str, Any]) -> None:
    f, after = ev["field"], ev["after"]
    if f == "prompt":
        t.messages[-1]["content"] = after
    elif f == "pattern":
        if after not in PATTERNS:
            raise LmlabError(f"edit of turn {t.id}: unknown pattern {after!r}", hint=f"use one of {PATTERNS}")
        t.pattern = after
    elif f == "reply":
        t.reply = after
    elif f.startswith("message:"):
        t.messages[int(f.split(":")[1])]["content"] = after
    else:
        raise LmlabError(f"edit of turn {t.id}: unknown field {f!r}")
    t.edits.append({k: ev[k] for k in ("field", "before", "after", "by") if k in ev})


class TreeStore:
    """An append-only JSONL file plus the tree it describes; every event is flushed and fsynced as written,
    so a kill loses at most the line being written (which `load` then skips)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else None
        self.tree = DialogueTree()
        self.lock = threading.Lock()
        if self.path is not None and self.path.exists():
            self.tree = load_tree(self.path)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def _write(self, ev: dict[str, Any]) -> None:
        if self.path is None:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(ev, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def add(self, turn: Turn) -> Turn:
        with self.lock:
            self.tree.add(turn)
            self._write({"event": "turn", "turn": turn.to_json()})
        return turn

    def set_reply(self, turn: Turn, reply: str, usage: dict[str, int], latency_s: float, finish_reason: str) -> None:
        with self.lock:
            turn.reply, turn.usage, turn.latency_s, turn.finish_reason = reply, usage, latency_s, finish_reason
            ev = {"event": "reply", "id": turn.id, "reply": reply, "usage": usage, "latency_s": latency_s}
            self._write(ev | {"finish_reason": finish_reason})

    def annotate(self, turn: Turn, **meta: Any) -> None:
        """Attach results (checker verdicts, parsed answers) to a turn, as a reply event carrying `meta`."""
        with self.lock:
            turn.meta.update(meta)
            self._write(
                {
                    "event": "reply",
                    "id": turn.id,
                    "reply": turn.reply,
                    "usage": turn.usage,
                    "latency_s": turn.latency_s,
                    "finish_reason": turn.finish_reason,
                    "meta": meta,
                }
            )

    def edit(self, turn: Turn, field_: str, after: str, by: str = "human") -> None:
        with self.lock:
            before = _field_value(turn, field_)
            ev = {"event": "edit", "id": turn.id, "field": field_, "before": before, "after": after, "by": by}
            _apply_edit(turn, ev)
            self._write(ev)

    def stop(self, reason: str, detail: str = "") -> None:
        with self.lock:
            self.tree.stops.append({"reason": reason, "detail": detail})
            self._write({"event": "stop", "reason": reason, "detail": detail})


def _field_value(t: Turn, f: str) -> Any:
    if f == "prompt":
        return t.prompt
    if f.startswith("message:"):
        return t.messages[int(f.split(":")[1])]["content"]
    return getattr(t, f)


def load_tree(path: str | Path) -> DialogueTree:
    path = Path(path)
    if not path.exists():
        raise LmlabError(f"{path}: no such tree file", hint="pass the tree.jsonl a run wrote")
    tree = DialogueTree()
    raw = path.read_text(encoding="utf-8")
    lines = raw.split("\n")
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{i}"
        try:
            ev = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines) and not raw.endswith("\n"):
                break  # the line a kill cut short
            raise LmlabError(f"{where}: not valid JSON ({e.msg})", hint="each line is one event object") from None
        if not isinstance(ev, dict):
            raise LmlabError(f"{where}: expected a JSON object")
        tree.apply(ev, where)
    return tree


def save_tree(tree: DialogueTree, path: str | Path) -> None:
    """Write a whole tree as a fresh store (turn events only; replies are inside the turns)."""
    from ..core.paths import atomic_write_text

    lines = [json.dumps({"event": "turn", "turn": t.to_json()}, ensure_ascii=False) for t in tree]
    lines += [json.dumps({"event": "stop"} | s, ensure_ascii=False) for s in tree.stops]
    atomic_write_text(Path(path), "\n".join(lines) + "\n")
