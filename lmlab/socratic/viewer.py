"""Offline views of a dialogue tree: one self-contained HTML page (no scripts or fonts fetched; the tree folds
with <details>, so it works with JavaScript off), Mermaid and Graphviz DOT text.

LangGraph's `draw_mermaid_png` calls mermaid.ink and fails offline; here nothing leaves the machine: paste
the Mermaid text into any renderer, or `dot -Tsvg tree.dot`.
"""

from __future__ import annotations

import html

from .tree import PATTERN_COLOURS, PATTERNS, DialogueTree, Turn

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px;background:#fff;color:#222}
details{margin:4px 0 4px 18px;border-left:6px solid var(--c);padding-left:8px}
summary{cursor:pointer;padding:3px 0}
.badge{display:inline-block;min-width:110px;padding:3px 8px;border-radius:4px;color:#fff;font-weight:600;
background:var(--c);margin-right:8px}
.sw{display:inline-block;width:90px;height:22px;margin-right:6px;vertical-align:middle;border-radius:3px}
pre{white-space:pre-wrap;background:#f6f6f6;padding:6px;margin:4px 0;max-height:320px;overflow:auto}
.msg{font-size:12px;color:#555} .meta{font-size:12px;color:#666} .edit{color:#b00}
table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}
"""


def _short(s: str | None, n: int = 90) -> str:
    s = " ".join((s or "").split())
    return s if len(s) <= n else s[: n - 1] + "…"


def _cost(t: Turn, price_in: float, price_out: float) -> float:
    return (t.usage.get("prompt_tokens", 0) * price_in + t.usage.get("completion_tokens", 0) * price_out) / 1e6


def html_page(
    tree: DialogueTree, title: str = "Socratic dialogue tree", price_in: float = 0.0, price_out: float = 0.0
) -> str:
    """The whole tree as one HTML string. `price_in/out`: dollars per million prompt / completion tokens."""
    esc = html.escape

    def node(t: Turn) -> str:
        c = PATTERN_COLOURS[t.pattern]
        kids = "".join(node(k) for k in tree.children(t.id))
        msgs = "".join(
            f"<div class=msg>[{esc(m['role'])}{' · ' + esc(cx.get('kind', '')) if cx else ''}"
            f"{' of ' + esc(str(cx['turn'])) if cx and 'turn' in cx else ''}]</div><pre>{esc(m['content'])}</pre>"
            for m, cx in zip(t.messages, t.context or [{}] * len(t.messages))
        )
        edits = "".join(
            f"<div class=edit>edited {esc(e['field'])} by {esc(e.get('by', '?'))}: {esc(_short(str(e.get('before'))))} "
            f"→ {esc(_short(str(e.get('after'))))}</div>"
            for e in t.edits
        )
        check = t.meta.get("check")
        meta = (
            f"{t.usage.get('prompt_tokens', 0)}+{t.usage.get('completion_tokens', 0)} tokens · {t.latency_s:.2f} s"
            f" · ${_cost(t, price_in, price_out):.4f}{' · fresh context' if t.fresh else ''}"
            f"{' · check: ' + esc(str(check.get('ok'))) + ' ' + esc(_short(check.get('feedback'), 80)) if check else ''}"
        )
        return (
            f'<details open style="--c:{c}" data-pattern="{t.pattern}" id="{esc(t.id)}"><summary>'
            f"<span class=badge>{t.pattern}</span><b>{esc(t.id)}</b> {esc(_short(t.prompt))}</summary>"
            f"<div class=meta>{meta}</div>{edits}<details><summary>messages sent ({len(t.messages)})</summary>"
            f"{msgs}</details><div class=msg>reply</div><pre>{esc(t.reply or '(no reply)')}</pre>{kids}</details>"
        )

    u = tree.usage()
    cost = sum(_cost(t, price_in, price_out) for t in tree)
    counts = {p: sum(t.pattern == p for t in tree) for p in PATTERNS}
    legend = " ".join(
        f'<span class=sw style="background:{PATTERN_COLOURS[p]}"></span>{p} ({counts[p]})' for p in PATTERNS
    )
    stops = "".join(f"<div class=meta>stopped: {esc(s['reason'])} {esc(s.get('detail', ''))}</div>" for s in tree.stops)
    body = "".join(node(t) for t in tree.roots())
    return (
        f"<!doctype html><html><head><meta charset=utf-8><title>{esc(title)}</title><style>{CSS}</style></head>"
        f"<body><h2>{esc(title)}</h2><p>{legend}</p><table><tr><th>turns</th><th>prompt tokens</th>"
        f"<th>completion tokens</th><th>cost $</th><th>fresh-context roots</th></tr><tr><td>{u['turns']}</td>"
        f"<td>{u['prompt_tokens']}</td><td>{u['completion_tokens']}</td><td>{cost:.4f}</td>"
        f"<td>{len(tree.roots())}</td></tr></table>{stops}{body}</body></html>"
    )


def _nid(tid: str) -> str:
    return "n_" + "".join(ch if ch.isalnum() else "_" for ch in tid)


def mermaid(tree: DialogueTree) -> str:
    lines = ["graph TD"]
    for t in tree:
        label = f"{t.id} · {t.pattern}<br/>{_short(t.prompt, 50)}".replace('"', "'")
        lines.append(f'  {_nid(t.id)}["{label}"]:::{t.pattern}')
        if t.parent:
            lines.append(f"  {_nid(t.parent)} --> {_nid(t.id)}")
    lines += [f"  classDef {p} fill:{c},color:#fff" for p, c in PATTERN_COLOURS.items()]
    return "\n".join(lines) + "\n"


def dot(tree: DialogueTree) -> str:
    lines = ["digraph socratic {", "  node [shape=box, style=filled, fontcolor=white, fontname=Helvetica];"]
    for t in tree:
        label = f"{t.id} ({t.pattern})\\n{_short(t.prompt, 40)}".replace('"', "'")
        pen = ", peripheries=2" if t.fresh else ""
        lines.append(f'  {_nid(t.id)} [label="{label}", fillcolor="{PATTERN_COLOURS[t.pattern]}"{pen}];')
        if t.parent:
            lines.append(f"  {_nid(t.parent)} -> {_nid(t.id)};")
    return "\n".join(lines + ["}"]) + "\n"
