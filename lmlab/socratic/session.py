"""Hand-driven Socratic sessions, the way the P vs NP transcript was made: each turn is a fresh call whose
messages a person chooses. `Session.ask` continues from any earlier turn (a branch when that turn already
has children), restarts from a fresh context, or carries only an excerpt of the parent's reply.

A plan file drives a session non-interactively; one JSON object per line:
  {"id": "s3", "pattern": "verification", "prompt": "Please check ...",
   "after": "s2",            # continue from this step (default: the previous step; null/"fresh": true -> restart)
   "excerpt": "one sentence",  # carry only this part of that step's reply (must occur in it)
   "role": "You are ..."}      # system prompt (default: the parent's, else the pattern's default)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..core.errors import LmlabError
from .engine import DEFAULT_ROLES, _Base
from .tree import PATTERNS, Turn

PLAN_KEYS = {"id", "pattern", "prompt", "after", "fresh", "excerpt", "role"}


class Session(_Base):
    def next_id(self) -> str:
        n = len(self.store.tree) + 1
        while f"s{n}" in self.store.tree.turns:
            n += 1
        return f"s{n}"

    def messages_for(
        self, prompt: str, parent: str | None, excerpt: str | None, role: str | None, pattern: str
    ) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
        """A child inherits exactly what its parent sent (with the parent's own excerpt choices), plus the
        parent's reply (or the chosen excerpt of it), plus the new prompt."""
        if parent is None:
            sys_prompt = role or self.cfg.roles.get(pattern, DEFAULT_ROLES[pattern])
            msgs = [{"role": "system", "content": sys_prompt}]
            ctx: list[dict[str, Any]] = [{"kind": "system"}]
        else:
            p = self.store.tree[parent]
            if p.reply is None:
                raise LmlabError(f"turn {parent} has no reply yet; it cannot be continued")
            msgs = [dict(m) for m in p.messages]
            ctx = [dict(c) for c in p.context] or [{"kind": "prompt"} for _ in msgs]
            if role:
                msgs[0] = {"role": "system", "content": role}
            carried, kind = p.reply, "verbatim"
            if excerpt:
                if excerpt not in p.reply:
                    raise LmlabError(f"the excerpt is not part of turn {parent}'s reply", hint="copy it exactly")
                carried, kind = excerpt, "excerpt"
            msgs.append({"role": "assistant", "content": carried})
            ctx.append({"kind": kind, "turn": parent})
        msgs.append({"role": "user", "content": prompt})
        ctx.append({"kind": "prompt"})
        return msgs, ctx

    def ask(
        self,
        pattern: str,
        prompt: str,
        parent: str | None = None,
        excerpt: str | None = None,
        role: str | None = None,
        tid: str | None = None,
    ) -> Turn:
        if pattern not in PATTERNS:
            raise LmlabError(f"unknown pattern {pattern!r}", hint=f"use one of {', '.join(PATTERNS)}")
        msgs, ctx = self.messages_for(prompt, parent, excerpt, role, pattern)
        return self.turn(tid or self.next_id(), pattern, msgs, parent, ctx)


def load_plan(path: str | Path) -> list[dict[str, Any]]:
    """Validate a plan file; every problem is a one-line LmlabError naming the line."""
    path = Path(path)
    if not path.exists():
        raise LmlabError(f"{path}: no such plan file")
    steps: list[dict[str, Any]] = []
    ids: set[str] = set()
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}:{i}"
        try:
            s = json.loads(line)
        except json.JSONDecodeError as e:
            raise LmlabError(f"{where}: not valid JSON ({e.msg})", hint="one step object per line") from None
        if not isinstance(s, dict):
            raise LmlabError(f"{where}: a step must be a JSON object")
        extra = set(s) - PLAN_KEYS
        if extra:
            raise LmlabError(f"{where}: unknown field {sorted(extra)[0]!r}", hint=f"fields: {sorted(PLAN_KEYS)}")
        if not isinstance(s.get("prompt"), str) or not s["prompt"].strip():
            raise LmlabError(f"{where}: 'prompt' must be a non-empty string")
        s.setdefault("pattern", "deduction")
        if s["pattern"] not in PATTERNS:
            raise LmlabError(f"{where}: unknown pattern {s['pattern']!r}", hint=f"use one of {', '.join(PATTERNS)}")
        s.setdefault("id", f"s{len(steps) + 1}")
        if s["id"] in ids:
            raise LmlabError(f"{where}: duplicate step id {s['id']!r}")
        if "after" not in s:
            s["after"] = None if s.get("fresh") or not steps else steps[-1]["id"]
        elif s["after"] is not None and s["after"] not in ids:
            raise LmlabError(f"{where}: 'after' names {s['after']!r}, which is not an earlier step")
        if s.get("fresh"):
            s["after"] = None
        if s.get("excerpt") is not None and s["after"] is None:
            raise LmlabError(f"{where}: an excerpt needs a step to take it from ('after')")
        ids.add(s["id"])
        s["line"] = i
        steps.append(s)
    if not steps:
        raise LmlabError(f"{path}: the plan has no steps")
    return steps


def run_plan(session: Session, steps: list[dict[str, Any]], plan_path: str | Path = "plan") -> list[Turn]:
    out = []
    for s in steps:
        try:
            out.append(session.ask(s["pattern"], s["prompt"], s["after"], s.get("excerpt"), s.get("role"), s["id"]))
        except LmlabError as e:
            raise LmlabError(f"{plan_path}:{s['line']}: {e}") from None
    return out
