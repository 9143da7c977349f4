"""The reproduction report: every system contributes one `Section`; `write_report` renders md + html.

A system takes part by providing `lmlab/<system>/reproduce.py` with `run(ctx: ReproduceContext) -> Section`.
Sections must report what was measured, including where it disagrees with the paper (`verdicts`).
"""

from __future__ import annotations

import base64
import html
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .paths import atomic_write_text


@dataclass
class ReproduceContext:
    """What a system's quick reproduction gets: where to write, how hard to try, which model to use."""

    out_dir: Path  # runs/<timestamp>/<system>/ ; figures and JSON go here
    quick: bool = True
    model: str = "smollm2-135m-instruct"
    seed: int = 0


@dataclass
class Verdict:
    """One paper claim and what we measured for it."""

    claim: str
    measured: str
    holds: bool | None  # None: not tested at this scale


@dataclass
class Section:
    system: str
    title: str
    markdown: str
    figures: list[Path] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    verdicts: list[Verdict] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None


def markdown_table(rows: list[dict[str, Any]], columns: list[str] | None = None, floatfmt: str = ".3f") -> str:
    """Render rows of dicts as a GitHub markdown table."""
    if not rows:
        return "_(no rows)_\n"
    columns = columns or list(rows[0])

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return format(v, floatfmt)
        if v is None:
            return "–"
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _verdict_md(verdicts: list[Verdict]) -> str:
    if not verdicts:
        return ""
    mark = {True: "holds", False: "**does not hold**", None: "not tested"}
    rows = [{"claim": v.claim, "measured": v.measured, "verdict": mark[v.holds]} for v in verdicts]
    return "\n**Claims vs. measurement**\n\n" + markdown_table(rows)


def section_markdown(s: Section, rel_to: Path) -> str:
    parts = [f"## {s.title}\n", f"_system `{s.system}`, {s.seconds:.0f} s_\n"]
    if s.error:
        parts.append(f"\n**Failed:** `{s.error}`\n")
    parts.append(s.markdown.strip() + "\n")
    parts.append(_verdict_md(s.verdicts))
    for fig in s.figures:
        parts.append(f"\n![{fig.stem}]({Path(fig).resolve().relative_to(rel_to.resolve())})\n")
    return "\n".join(parts)


def write_report(run_dir: Path, sections: list[Section], header: str = "") -> tuple[Path, Path]:
    """Write report.md, report.html (figures inlined, so the html file travels alone) and results.json."""
    run_dir = Path(run_dir)
    when = time.strftime("%Y-%m-%d %H:%M:%S")
    md = [f"# lmlab reproduction report\n\n_{when}_\n\n{header}\n"]
    summary = [
        {
            "system": s.system,
            "seconds": round(s.seconds, 1),
            "status": "failed" if s.error else "ok",
            "claims holding": f"{sum(v.holds is True for v in s.verdicts)}/{len(s.verdicts)}",
        }
        for s in sections
    ]
    md.append(markdown_table(summary))
    md += [section_markdown(s, run_dir) for s in sections]
    md_text = "\n".join(md)
    md_path = run_dir / "report.md"
    atomic_write_text(md_path, md_text)

    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(md_text)
    for s in sections:  # inline figures as data URIs
        for fig in s.figures:
            rel = str(Path(fig).resolve().relative_to(run_dir.resolve()))
            b64 = base64.b64encode(Path(fig).read_bytes()).decode()
            body = body.replace(f'src="{html.escape(rel)}"', f'src="data:image/png;base64,{b64}"')
    style = "body{font-family:sans-serif;max-width:60em;margin:auto}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}"
    html_path = run_dir / "report.html"
    atomic_write_text(
        html_path, f"<!doctype html><meta charset=utf-8><title>lmlab report</title><style>{style}</style>{body}"
    )
    results = {
        s.system: {"data": s.data, "seconds": s.seconds, "error": s.error, "verdicts": [v.__dict__ for v in s.verdicts]}
        for s in sections
    }
    atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2, default=str))
    return md_path, html_path
