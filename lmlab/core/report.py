"""The reproduction report: every system contributes one `Section`; `write_report` renders md + html.

A system takes part by providing `lmlab/<system>/reproduce.py` with `run(ctx: ReproduceContext) -> Section`.
Sections must report what was measured, including where it disagrees with the paper (`verdicts`).
"""

from __future__ import annotations

import base64
import html
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .paths import atomic_write_text


@dataclass
class ReproduceContext:
    """What a system's quick reproduction gets: where to write, how hard to try, which model to use."""

    out_dir: Path  # runs/<timestamp>/<system>/ ; figures and JSON go here
    quick: bool = True
    model: str = "smollm2-135m-instruct"
    seed: int = 0


STATUSES = ("holds", "does not hold", "inconclusive", "not tested")


@dataclass
class Verdict:
    """One paper claim, what we measured for it, and the evidence behind the call.

    `Verdict(claim, measured, holds)` keeps working: `status` then follows `holds` (True: holds, False: does not
    hold, None: not tested). Evidence is optional but expected: `seeds` (how many, or which) and `interval` (a
    confidence interval as `(lo, hi)` numbers or text). An interval that spans the threshold cannot call the claim
    either way: pass `status="inconclusive"` (or build the verdict with `verdict_from_interval`), and `holds` is None.
    """

    claim: str
    measured: str
    holds: bool | None = None  # None: not tested, or inconclusive (see status)
    seeds: int | Sequence[int] | str | None = None
    interval: tuple[float, float] | str | None = None
    status: str | None = None  # one of STATUSES; derived from `holds` when not given

    def __post_init__(self) -> None:
        if self.holds is not None:
            self.holds = bool(self.holds)  # numpy / torch booleans from comparisons
        if self.status is None:
            self.status = {True: "holds", False: "does not hold", None: "not tested"}[self.holds]
        if self.status not in STATUSES:
            raise ValueError(f"Verdict status {self.status!r} is not one of {STATUSES}")
        implied = {"holds": True, "does not hold": False}.get(self.status)
        if self.holds is None:
            self.holds = implied  # Verdict(claim, measured, status="holds") is fine too
        if self.holds is not implied:
            raise ValueError(f"Verdict holds={self.holds!r} contradicts status {self.status!r}")

    def seeds_text(self) -> str:
        if self.seeds is None:
            return "–"
        if isinstance(self.seeds, int):
            return str(self.seeds)
        if isinstance(self.seeds, str):
            return self.seeds
        return (
            f"{len(self.seeds)} ({', '.join(map(str, self.seeds))})" if len(self.seeds) <= 5 else str(len(self.seeds))
        )

    def interval_text(self) -> str:
        if self.interval is None:
            return "–"
        if isinstance(self.interval, str):
            return self.interval
        lo, hi = self.interval
        return f"[{_num(lo)}, {_num(hi)}]"


def _num(x: float) -> str:
    return format(x, ".3g") if abs(x) >= 1e-3 or x == 0 else format(x, ".2e")


def bootstrap_ci(
    values: Sequence[float], stat=np.mean, *, level: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """`(estimate, lo, hi)`: the statistic of `values` and its percentile bootstrap interval (resampling items).

    Seeded, so a report is reproducible. With one value the interval is that value (no evidence of spread: callers
    should not call a claim from it; `verdict_from_interval` refuses fewer than two seeds)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    est = float(stat(x))
    if x.size == 1:
        return est, est, est
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    boots = np.apply_along_axis(stat, 1, x[idx]) if stat is not np.mean else x[idx].mean(axis=1)
    a = (1 - level) / 2
    return est, float(np.quantile(boots, a)), float(np.quantile(boots, 1 - a))


def proportion_ci(k: int, n: int, level: float = 0.95) -> tuple[float, float, float]:
    """`(k/n, lo, hi)` with the Wilson score interval: honest at 0/n or n/n, where a bootstrap collapses to a point
    (0 contaminated rows of 12 bounds the rate below 24 %, not at 0 %)."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"proportion_ci needs 0 <= k <= n and n > 0, got k={k}, n={n}")
    from statistics import NormalDist

    z = NormalDist().inv_cdf(1 - (1 - level) / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return p, max(0.0, centre - half), min(1.0, centre + half)


def paired_bootstrap_diff(
    a: Sequence[float], b: Sequence[float], *, level: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """`(mean(a - b), lo, hi)` over paired items (same prompt / seed / example in both arms), resampling pairs."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired_bootstrap_diff needs equal-length arms, got {x.shape} and {y.shape}")
    return bootstrap_ci(x - y, level=level, n_boot=n_boot, seed=seed)


def bootstrap_items(
    n: int, stat, *, level: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """`(stat(all items), lo, hi)`: percentile bootstrap of any statistic of `n` paired items, where `stat` takes an
    int index array (a resample of `range(n)`) and reads whatever arrays it closes over: a ratio of sums, an R² or a
    gap between two arms that share their items. Seeded, like `bootstrap_ci`."""
    if n <= 0:
        raise ValueError("bootstrap_items needs at least one item")
    est = float(stat(np.arange(n)))
    if n == 1:
        return est, est, est
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    boots = np.array([stat(i) for i in idx], dtype=float)
    a = (1 - level) / 2
    return est, float(np.nanquantile(boots, a)), float(np.nanquantile(boots, 1 - a))


def repeat_range(ratios: Sequence[float]) -> tuple[float, float, float, float]:
    """`(median, lo, hi, coverage)` of per-repeat ratios from paired, interleaved timings: [min, max] of n i.i.d.
    repeats covers their true median with probability 1 - 2^(1-n) (distribution-free: 94 % for 5, 97 % for 6),
    which is honest for the handful of repeats a timing affords, where a bootstrap of 5 values is not."""
    r = np.asarray(ratios, dtype=float)
    if r.size == 0:
        raise ValueError("repeat_range needs at least one ratio")
    return float(np.median(r)), float(r.min()), float(r.max()), 1 - 2.0 ** (1 - r.size)


DETERMINISTIC = "deterministic"
"""Put this word in a verdict's `seeds` for a claim no seed can change (an exactness check, a cache replay)."""


def missing_evidence(verdicts: Sequence[Verdict]) -> list[str]:
    """The claims among `verdicts` that lack their evidence: every verdict needs `seeds` and an `interval`, unless it
    is "not tested" or its `seeds` says it is deterministic. Empty when all is in order (sections' tests call it)."""
    out = []
    for v in verdicts:
        if v.status == "not tested":
            continue
        det = isinstance(v.seeds, str) and DETERMINISTIC in v.seeds
        if v.seeds is None or (v.interval is None and not det):
            out.append(f"{v.claim!r}: seeds={v.seeds!r}, interval={v.interval!r}")
    return out


def verdict_from_interval(
    claim: str,
    lo: float,
    hi: float,
    threshold: float = 0.0,
    seeds: int | Sequence[int] | str | None = None,
    *,
    measured: str | None = None,
    estimate: float | None = None,
    higher_is_better: bool = True,
    min_seeds: int = 2,
) -> Verdict:
    """The claim "the quantity is above `threshold`" (below, with `higher_is_better=False`), called from its CI.

    The whole interval on the claimed side: holds; on the other side: does not hold; spanning the threshold:
    inconclusive. Fewer than `min_seeds` seeds (when `seeds` is a count or a list) is inconclusive whatever the
    interval says: one seed is not evidence of a training-dependent claim. Pass `min_seeds=1` where the interval
    resamples items of one deterministic run (e.g. prompts under greedy decoding) and say so in `measured`."""
    if lo > hi:
        raise ValueError(f"interval [{lo}, {hi}] has lo > hi")
    n = seeds if isinstance(seeds, int) else None
    if isinstance(seeds, Sequence) and not isinstance(seeds, str):
        n = len(seeds)
    above, below = lo > threshold, hi < threshold
    if n is not None and n < min_seeds:
        status = "inconclusive"
    elif above or below:
        status = "holds" if above == higher_is_better else "does not hold"
    else:
        status = "inconclusive"
    if measured is None:
        est = "" if estimate is None else f"{_num(estimate)} "
        measured = f"{est}(95% CI [{_num(lo)}, {_num(hi)}]; threshold {_num(threshold)})"
    holds = {"holds": True, "does not hold": False}.get(status)
    return Verdict(claim, measured, holds, seeds=seeds, interval=(float(lo), float(hi)), status=status)


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
    mark = {"holds": "holds", "does not hold": "**does not hold**", "inconclusive": "_inconclusive_"}
    rows = [
        {
            "claim": v.claim,
            "measured": v.measured,
            "seeds": v.seeds_text(),
            "interval": v.interval_text(),
            "verdict": mark.get(v.status, v.status),
        }
        for v in verdicts
    ]
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
            "claims holding": f"{sum(v.status == 'holds' for v in s.verdicts)}/{len(s.verdicts)}",
            "does not hold": sum(v.status == "does not hold" for v in s.verdicts),
            "inconclusive": sum(v.status == "inconclusive" for v in s.verdicts),
            "not tested": sum(v.status == "not tested" for v in s.verdicts),
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
        s.system: {"data": s.data, "seconds": s.seconds, "error": s.error, "verdicts": [asdict(v) for v in s.verdicts]}
        for s in sections
    }
    atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2, default=str))
    return md_path, html_path
