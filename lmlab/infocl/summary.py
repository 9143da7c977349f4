"""Mean ± std over task orders, paired differences with t intervals, and the accuracy-vs-task plot."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np


def _ms(xs: list[float]) -> tuple[float, float]:
    a = np.asarray([x for x in xs if x is not None], dtype=float)
    return (float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0) if len(a) else (float("nan"), 0.0)


def summarize(results: list[dict]) -> list[dict]:
    """One row per (benchmark, method): final accuracy, forgetting, BWT, analogous-class accuracy (mean ± std)."""
    by: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in results:
        by[(r["benchmark"], r["method"])].append(r)
    rows = []
    for (bench, method), rs in by.items():
        row = {"benchmark": bench, "method": method, "orders": len(rs)}
        for key, name in (("final_acc", "final acc"), ("forgetting", "forgetting"), ("bwt", "BWT"),
                          ("acc_old_with_later_analog", "old w/ analog"), ("acc_old_without_later_analog", "old w/o analog"),
                          ("analogous_error_share", "analog err %"),
                          ("erank_first_kept", "task-1 erank kept %")):  # fmt: skip
            m, s = _ms([r.get(key) for r in rs])
            row[name] = f"{m:.1f} ± {s:.1f}"
        row["seconds"] = round(sum(r["seconds"] for r in rs), 1)
        rows.append(row)
    return rows


_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def paired(results: list[dict], bench: str, a: str, b: str, key: str = "final_acc") -> dict | None:
    """Mean of (a - b) over the orders both ran (same order, same initial weights), with a 95 % t interval."""
    ra = {r["order"]: r.get(key) for r in results if r["benchmark"] == bench and r["method"] == a}
    rb = {r["order"]: r.get(key) for r in results if r["benchmark"] == bench and r["method"] == b}
    d = [ra[o] - rb[o] for o in sorted(set(ra) & set(rb)) if ra[o] is not None and rb[o] is not None]
    if len(d) < 2:
        return None
    m, s = float(np.mean(d)), float(np.std(d, ddof=1))
    half = _T975.get(len(d) - 1, 1.96) * s / math.sqrt(len(d))
    return {"mean": m, "lo": m - half, "hi": m + half, "n": len(d), "diffs": d}


def plot_curves(results: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benches = sorted({r["benchmark"] for r in results})
    fig, axes = plt.subplots(1, len(benches), figsize=(6 * len(benches), 4), squeeze=False)
    for ax, bench in zip(axes[0], benches):
        by: dict[str, list[list[float]]] = defaultdict(list)
        for r in results:
            if r["benchmark"] == bench:
                by[r["method"]].append(r["avg_acc"])
        for method, curves in by.items():
            a = np.asarray(curves)
            x = np.arange(1, a.shape[1] + 1)
            ax.plot(x, a.mean(0), marker="o", ms=3, label=method)
            if len(a) > 1:
                ax.fill_between(x, a.mean(0) - a.std(0, ddof=1), a.mean(0) + a.std(0, ddof=1), alpha=0.1)
        ax.set_title(f"{bench}: accuracy on all seen classes")
        ax.set_xlabel("tasks learned")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
