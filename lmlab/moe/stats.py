"""Across-seed evidence for the comparison: t-intervals, differences paired by seed, loss-vs-steps curves.

Every architecture of one seed sees the same batches and the same non-FFN initial weights
(`MoETransformer.init_weights(seed=...)`), so the unit of evidence is the *seed*: a claim "A beats B" is the
mean over seeds of L_B(seed) - L_A(seed) with a Student-t interval (df = seeds - 1). Three seeds give a wide
interval (t = 4.30); that is the honest price of three seeds, and `verdict_from_interval` calls it inconclusive
when it spans zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..core.errors import LmlabError


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """`(mean, lo, hi)`: the mean and its Student-t confidence interval. One value: the interval is that value
    (callers must not call a claim from it; `verdict_from_interval` refuses fewer than two seeds)."""
    from scipy.stats import t

    x = [float(v) for v in values]
    if not x:
        raise ValueError("t_interval needs at least one value")
    m = sum(x) / len(x)
    if len(x) == 1:
        return m, m, m
    sd = math.sqrt(sum((v - m) ** 2 for v in x) / (len(x) - 1))
    half = float(t.ppf(0.5 + level / 2, len(x) - 1)) * sd / math.sqrt(len(x))
    return m, m - half, m + half


def by_seed(runs: list[dict[str, Any]], arch: str, key: str = "val_loss") -> dict[int, Any]:
    return {r["seed"]: r[key] for r in runs if r["arch"] == arch}


def paired(runs: list[dict[str, Any]], better: str, worse: str, key: str = "val_loss") -> dict[str, Any]:
    """L_worse(seed) - L_better(seed) over the seeds both were trained on (> 0: `better` has the lower loss)."""
    a, b = by_seed(runs, better, key), by_seed(runs, worse, key)
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise LmlabError(f"no seed trained for both {better} and {worse}", hint="train both architectures")
    diffs = [b[s] - a[s] for s in seeds]
    mean, lo, hi = t_interval(diffs)
    return {"better": better, "worse": worse, "seeds": seeds, "diffs": diffs, "mean": mean, "lo": lo, "hi": hi}


def arch_curve(runs: list[dict[str, Any]], arch: str) -> list[dict[str, Any]]:
    """Held-out loss of one architecture at each evaluated step: mean and t-interval over its seeds."""
    per: dict[int, list[dict[str, Any]]] = {}
    for r in runs:
        if r["arch"] == arch:
            for p in r.get("curve", []):
                per.setdefault(p["step"], []).append(p)
    out = []
    for step in sorted(per):
        m, lo, hi = t_interval([p["val_loss"] for p in per[step]])
        out.append(
            {"step": step, "tokens": per[step][0]["tokens"], "seeds": len(per[step]), "mean": m, "lo": lo, "hi": hi}
        )
    return out


def gap_curve(runs: list[dict[str, Any]], better: str, worse: str) -> list[dict[str, Any]]:
    """L_worse - L_better at each evaluated step, paired by seed: mean and t-interval (> 0: `better` ahead)."""
    curves = {
        (r["arch"], r["seed"]): {p["step"]: p for p in r.get("curve", [])} for r in runs if r["arch"] in (better, worse)
    }
    seeds = sorted({s for a, s in curves if a == better} & {s for a, s in curves if a == worse})
    steps = sorted(set.intersection(*(set(curves[(a, s)]) for a in (better, worse) for s in seeds))) if seeds else []
    out = []
    for step in steps:
        d = [curves[(worse, s)][step]["val_loss"] - curves[(better, s)][step]["val_loss"] for s in seeds]
        m, lo, hi = t_interval(d)
        tokens = curves[(better, seeds[0])][step]["tokens"]
        out.append({"step": step, "tokens": tokens, "seeds": len(seeds), "gap": m, "lo": lo, "hi": hi, "diffs": d})
    return out


def gap_trend(gaps: list[dict[str, Any]], start_fraction: float = 0.5) -> dict[str, Any] | None:
    """How a gap moves late in training: final gap - gap at the first evaluated step >= `start_fraction` of
    the run, paired by seed, with a t-interval. > 0: the `better` architecture pulls further ahead as training
    tokens grow; < 0: the gap closes."""
    if len(gaps) < 2:
        return None
    last = gaps[-1]
    first = next(g for g in gaps if g["step"] >= start_fraction * last["step"])
    if first is last:
        first = gaps[-2]
    change = [b - a for a, b in zip(first["diffs"], last["diffs"])]
    m, lo, hi = t_interval(change)
    return {
        "from_step": first["step"],
        "to_step": last["step"],
        "from_tokens": first["tokens"],
        "to_tokens": last["tokens"],
        "change": m,
        "lo": lo,
        "hi": hi,
        "seeds": len(change),
    }
