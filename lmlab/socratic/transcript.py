"""The P vs NP transcript (microsoft/LMOps LLM4Science notebooks) as a dialogue tree, and its replay.

Each notebook cell `# N` builds `messages=[...]` by hand and calls `gpt4_with_history(messages, ...)`;
the printed output is the list of replies. We parse the cell with `ast` (the message list is a literal),
so the messages are byte-exact; the one cell that is not valid Python (turn 96: stray text after the list)
falls back to a literal-by-literal scan, as the data's turns.jsonl conversion did.

Provenance of carried assistant messages: verbatim copy of an earlier reply, an excerpt of one (a person
picked a sentence, e.g. turn 4 carries one sentence of turn 3's 2,395-character answer), an edited version
(most of its word 4-grams come from one earlier reply), or text written by the person. The parent of a turn is the source of its
last carried assistant message; a turn without one is a fresh-context restart (parent None).
"""

from __future__ import annotations

import ast
import json
import re
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.backends import Completion
from ..core.engine import SamplingParams
from ..core.errors import LmlabError
from ..core.paths import shared_data
from .tree import DialogueTree, TreeStore, Turn

NOTEBOOKS = ("PvsNP_main.ipynb", "PvsNP_7to15.ipynb", "PvsNP_31to36.ipynb")

# Keyword rules for the pattern of a turn's ask (the last paragraph of its final prompt: long turns restate the
# problem first), checked in this order, first match wins. They are ours (the paper names the patterns but
# tags no turn); each tag records the rule that fired, so a person can audit or edit it.
PATTERN_RULES: list[tuple[str, tuple[str, ...]]] = [
    ("integration", ("organize all", "summarize", "sort out", "integrate", "put together", "in summary")),
    (
        "verification",
        (
            "check",
            "correct",
            "mistake",
            "wrong",
            "why do you say",
            "forgotten",
            "it seems that",
            "verify",
            "error",
            "are you sure",
            "would this be considered",
        ),
    ),
    ("transformation", ("what problems can", "redefine", "define ", "convert")),
    ("decomposition", ("ideas", "list ", "plan", "steps", "sub-problem", "subproblem", "several", "design")),
    (
        "transformation",
        ("transform", "formaliz", "rewrite", "express", "instead of", "reduc", "expression", "equivalent"),
    ),
]


def ask_of(prompt: str) -> str:
    """The last paragraph of a prompt (with the one before it when it is a short remark)."""
    paras = [p for p in re.split(r"\n\s*\n", prompt.strip()) if p.strip()] or [prompt]
    ask = paras[-1]
    if len(ask) < 40 and len(paras) > 1:
        ask = paras[-2] + "\n\n" + ask
    return ask


def classify_pattern(prompt: str) -> tuple[str, str]:
    """(pattern, rule) for a prompt; 'deduction' (derive the next result) when no rule fires."""
    low = " ".join(ask_of(prompt).lower().split()) + " "
    for pattern, words in PATTERN_RULES:
        for w in words:
            if w in low:
                return pattern, f"keyword:{w.strip()}"
    return "deduction", "default"


def _norm(s: str) -> str:
    return " ".join(s.split())


def _messages_from_cell(src: str, where: str) -> list[dict[str, str]]:
    try:
        tree = ast.parse(src)
    except SyntaxError:
        return _messages_by_scan(src, where)
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "messages" for t in node.targets):
            try:
                msgs = ast.literal_eval(node.value)
            except ValueError:
                raise LmlabError(f"{where}: messages=[...] is not a literal list") from None
            return _check_messages(msgs, where)
    raise LmlabError(f"{where}: no `messages=[...]` assignment in the turn's cell")


_DICT = re.compile(r"\{\s*\"role\"\s*:\s*\"(system|user|assistant)\"\s*,\s*\"content\"\s*:\s*", re.S)


def _messages_by_scan(src: str, where: str) -> list[dict[str, str]]:
    """For a cell that is not valid Python: read each {"role": R, "content": <string literal>} in turn."""
    msgs = []
    for m in _DICT.finditer(src):
        rest = src[m.end() :]
        q = next((q for q in ("'''", '"""', "'", '"') if rest.startswith(q)), None)
        if q is None:
            raise LmlabError(f"{where}: message content is not a string literal")
        end = rest.find(q, len(q))
        if end < 0:
            raise LmlabError(f"{where}: unterminated string in a message")
        msgs.append({"role": m.group(1), "content": ast.literal_eval(rest[: end + len(q)])})
    if not msgs:
        raise LmlabError(f"{where}: no messages found in the turn's cell")
    return _check_messages(msgs, where)


def _check_messages(msgs: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(msgs, list) or not msgs:
        raise LmlabError(f"{where}: messages must be a non-empty list")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or set(m) != {"role", "content"} or not isinstance(m["content"], str):
            raise LmlabError(f"{where}: message {i} must be {{'role': ..., 'content': str}}")
        if m["role"] not in ("system", "user", "assistant"):
            raise LmlabError(f"{where}: message {i} has unknown role {m['role']!r}")
    if msgs[-1]["role"] != "user":
        raise LmlabError(f"{where}: the last message must be the user's prompt")
    return msgs


def _replies_from_outputs(outputs: list[dict], where: str) -> list[str]:
    for o in outputs:
        if o.get("output_type") == "stream" and o.get("name", "stdout") == "stdout":
            text = "".join(o["text"]) if isinstance(o["text"], list) else o["text"]
            try:
                val = ast.literal_eval(text.strip())
            except (ValueError, SyntaxError):
                continue
            if isinstance(val, list) and all(isinstance(v, str) for v in val):
                return val
    raise LmlabError(f"{where}: no printed reply list in the cell's outputs")


def parse_notebook(path: str | Path) -> list[dict[str, Any]]:
    """Records {turn, notebook, cell, messages, responses} for every `# N` cell of one notebook."""
    with warnings.catch_warnings():  # the cells' LaTeX has escapes like "\l" that Python warns about
        warnings.simplefilter("ignore", (DeprecationWarning, SyntaxWarning))
        return _parse_notebook(Path(path))


def _parse_notebook(path: Path) -> list[dict[str, Any]]:
    path = Path(path)
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise LmlabError(f"{path}: not a readable notebook ({e})") from None
    out = []
    for ci, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        m = re.match(r"\s*#\s*(\d+)\s*\n", src)
        if not m or "messages" not in src:
            continue
        where = f"{path.name} cell {ci} (turn {m.group(1)})"
        rec = {"turn": int(m.group(1)), "notebook": path.name, "cell": ci}
        rec["messages"] = _messages_from_cell(src, where)
        rec["responses"] = _replies_from_outputs(cell.get("outputs", []), where)
        out.append(rec)
    return out


def load_records(source: str | Path | None = None) -> list[dict[str, Any]]:
    """The transcript's turn records, sorted by turn. `source`: a folder with the three notebooks (default:
    the shared data), one .ipynb, or a turns.jsonl (one {turn, messages, responses} object per line)."""
    src = Path(source) if source is not None else shared_data("pvsnp_socratic")
    if src.is_dir():
        recs = [r for nb in NOTEBOOKS if (src / nb).exists() for r in parse_notebook(src / nb)]
        if not recs:
            raise LmlabError(f"{src}: none of {NOTEBOOKS} found", hint="pass the pvsnp_socratic folder")
    elif src.suffix == ".ipynb":
        recs = parse_notebook(src)
    elif src.suffix in (".jsonl", ".json"):
        recs = _read_turns_jsonl(src)
    else:
        raise LmlabError(f"{src}: not a notebook folder, .ipynb or turns .jsonl")
    seen: set[int] = set()
    for r in recs:
        if r["turn"] in seen:
            raise LmlabError(f"{src}: turn {r['turn']} appears twice")
        seen.add(r["turn"])
    return sorted(recs, key=lambda r: r["turn"])


def _read_turns_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise LmlabError(f"{path}: no such transcript file")
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{i}"
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise LmlabError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(r, dict) or not isinstance(r.get("turn"), int) or "messages" not in r:
            raise LmlabError(f"{where}: a turn record needs an integer 'turn' and 'messages'")
        resp = r.get("responses")
        if not isinstance(resp, list) or not resp or not all(isinstance(x, str) for x in resp):
            raise LmlabError(f"{where}: 'responses' must be a non-empty list of strings")
        r["messages"] = _check_messages(r["messages"], where)
        out.append(r)
    return out


def _shingles(text: str, n: int = 4) -> set[tuple[str, ...]]:
    words = text.split()
    return {tuple(words[i : i + n]) for i in range(max(1, len(words) - n + 1))}


def _provenance(content: str, replies: dict[int, str], before: int) -> dict[str, Any]:
    earlier = [s for s in sorted(replies) if s < before]
    for s in reversed(earlier):
        if replies[s] == content:
            return {"kind": "verbatim", "turn": tid(s)}
    n = _norm(content)
    for s in reversed(earlier):
        if n and n in _norm(replies[s]):
            return {"kind": "excerpt", "turn": tid(s)}
    best, ratio = None, 0.0
    mine = _shingles(content)
    for s in earlier:
        r = len(mine & _shingles(replies[s])) / max(1, len(mine))
        if r > ratio:
            best, ratio = s, r
    if best is not None and ratio >= 0.5:
        return {"kind": "edited", "turn": tid(best), "similarity": round(ratio, 3)}
    return {"kind": "written"}


def tid(turn: int) -> str:
    return f"t{turn}"


def transcript_tree(records: Sequence[dict[str, Any]]) -> DialogueTree:
    """Turn records -> tree: pattern tag, provenance of every message, parent = source of the last carried
    assistant message (None for a fresh-context restart)."""
    tree = DialogueTree()
    replies = {r["turn"]: r["responses"][0] for r in records}
    for r in records:
        ctx: list[dict[str, Any]] = []
        parent = None
        for m in r["messages"]:
            if m["role"] == "assistant":
                p = _provenance(m["content"], replies, r["turn"])
                ctx.append(p)
                if "turn" in p:
                    parent = p["turn"]
            else:
                ctx.append({"kind": "prompt" if m["role"] == "user" else "system"})
        pattern, rule = classify_pattern(r["messages"][-1]["content"])
        meta = {"turn": r["turn"], "pattern_rule": rule}
        meta.update({k: r[k] for k in ("notebook", "cell", "call_kwargs", "note") if r.get(k)})
        tree.add(
            Turn(
                id=tid(r["turn"]),
                pattern=pattern,
                messages=[dict(m) for m in r["messages"]],
                parent=parent,
                reply=replies[r["turn"]],
                context=ctx,
                usage={"prompt_tokens": 0, "completion_tokens": 0},
                finish_reason="recorded",
                meta=meta,
            )
        )
    return tree


def replay_stats(tree: DialogueTree) -> dict[str, Any]:
    from collections import Counter

    carried = Counter(c["kind"] for t in tree for c in t.context if c["kind"] not in ("prompt", "system"))
    return {
        "turns": len(tree),
        "system_roles": dict(Counter(t.role for t in tree).most_common()),
        "fresh_context_turns": sum(t.fresh for t in tree),
        "branch_turns": len(tree.branches()),
        "max_user_messages": max(sum(m["role"] == "user" for m in t.messages) for t in tree),
        "patterns": dict(Counter(t.pattern for t in tree).most_common()),
        "carried_assistant_messages": dict(carried),
    }


class RecordedBackend:
    """Answers each request with the reply recorded for exactly that message list; anything else is an error
    (or goes to `fallback`). Replaying the transcript through it reproduces every turn byte for byte."""

    def __init__(self, tree: DialogueTree, name: str = "recorded-gpt-4", fallback: Any = None):
        self.name = name
        self.fallback = fallback
        self.table = {_key(t.messages): t.reply for t in tree if t.reply is not None}

    def complete(self, prompts: Sequence[Any], params: SamplingParams, json_schema: dict | None = None):
        out = []
        for p in prompts:
            reply = self.table.get(_key(p))
            if reply is None:
                if self.fallback is None:
                    raise LmlabError("recorded backend: no reply recorded for this message list")
                out.extend(self.fallback.complete([p], params, json_schema))
                continue
            out.append(Completion(reply, "stop", 0, 0))
        return out

    def stream(self, prompt: Any, params: SamplingParams):
        yield self.complete([prompt], params)[0].text


def _key(messages: Any) -> str:
    return json.dumps(messages, sort_keys=True, ensure_ascii=False)


def replay(
    source: DialogueTree,
    backend: Any,
    store: TreeStore,
    caller: Any,
    *,
    regenerate_context: bool = True,
    turns: Sequence[str] | None = None,
) -> DialogueTree:
    """Send every turn of `source` again, in order, and record the new tree in `store`.

    With `regenerate_context`, a carried assistant message that was a verbatim copy of an earlier turn's
    reply is replaced by that turn's *new* reply (so the dialogue is really regenerated by the backend);
    excerpts, edited and hand-written messages are kept as the person wrote them (their selection cannot be
    transferred to a different reply; the context record says so). Against `RecordedBackend` every new
    reply equals the recorded one, so the messages and replies reproduce exactly."""
    new_reply: dict[str, str] = {}
    for t in source:
        if turns is not None and t.id not in turns:
            continue
        msgs = [dict(m) for m in t.messages]
        ctx = [dict(c) for c in t.context]
        if regenerate_context:
            for m, c in zip(msgs, ctx):
                if c["kind"] == "verbatim" and c["turn"] in new_reply:
                    m["content"] = new_reply[c["turn"]]
        existing = store.tree.turns.get(t.id)
        if existing is not None and existing.reply is not None:
            new_reply[t.id] = existing.reply
            continue
        turn = existing or store.add(
            Turn(id=t.id, pattern=t.pattern, messages=msgs, parent=t.parent, context=ctx, meta=dict(t.meta))
        )
        t0 = time.perf_counter()
        c = caller.call(msgs, tag=t.pattern, max_new_tokens=t.meta.get("call_kwargs", {}).get("max_tokens"))
        store.set_reply(turn, c.text, c.usage, time.perf_counter() - t0, c.finish_reason)
        new_reply[t.id] = c.text
    return store.tree
