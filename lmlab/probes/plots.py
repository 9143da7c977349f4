"""Figures for the report (matplotlib, Agg): layer x position heatmaps of R^2 and accuracy, R^2 vs layer per
digit count (with the random-init control), and the steering rate per layer window."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .data import POSITIONS, TARGETS


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(rows: list[dict[str, Any]], target: str, metric: str, probe: str = "ridge") -> tuple[np.ndarray, list[int]]:
    layers = sorted({r["layer"] for r in rows})
    g = np.full((len(POSITIONS), len(layers)), np.nan)
    for r in rows:
        if r["target"] == target and r["probe"] == probe:
            g[POSITIONS.index(r["position"]), layers.index(r["layer"])] = r[metric]
    return g, layers


def heatmaps(result: dict[str, Any], out: Path, metric: str) -> Path:
    """One panel per target: rows = token position, columns = layer, colour = metric of the Ridge probe."""
    plt = _plt()
    fig, axes = plt.subplots(len(TARGETS), 1, figsize=(10, 1.4 * len(TARGETS) + 1.2), squeeze=False)
    for ax, target in zip(axes[:, 0], TARGETS):
        g, layers = _grid(result["layers"], target, metric)
        im = ax.imshow(g, aspect="auto", cmap="viridis", vmin=0 if metric == "acc_1pct" else -0.1, vmax=1)
        ax.set_yticks(range(len(POSITIONS)), [f"@{p}" for p in POSITIONS])
        ax.set_xticks(range(len(layers)), layers, fontsize=7)
        ax.set_title(f"log2({target}) - Ridge {metric}", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.02)
    axes[-1, 0].set_xlabel("layer (0 = embeddings)")
    fig.tight_layout()
    path = out / f"probes_heatmap_{metric}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def r2_by_digits(result: dict[str, Any], out: Path, target: str = "sum", position: str = "last") -> Path:
    """R^2 vs layer for each digit count (within-digit-count R^2) plus overall R^2, trained vs random init."""
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    sel = sorted(
        (r for r in result["layers"] if r["probe"] == "ridge" and r["target"] == target and r["position"] == position),
        key=lambda r: r["layer"],
    )
    layers = [r["layer"] for r in sel]
    digits = sorted({int(d) for r in sel for d in r["by_digits"]})
    cmap = plt.get_cmap("plasma")
    for i, d in enumerate(digits):
        ax1.plot(
            layers,
            [r["by_digits"].get(d, r["by_digits"].get(str(d), {})).get("r2", np.nan) for r in sel],
            color=cmap(i / max(1, len(digits))),
            label=f"{d} digits",
        )
    ax1.set_title(f"within-digit-count R² of log2({target}) @{position}", fontsize=9)
    ax1.set_xlabel("layer")
    ax1.set_ylim(-1, 1)
    ax1.legend(fontsize=6, ncol=2)
    ax2.plot(layers, [r["r2"] for r in sel], label="trained")
    for pr in ("mlp",):
        m = sorted(
            (r for r in result["layers"] if r["probe"] == pr and r["target"] == target and r["position"] == position),
            key=lambda r: r["layer"],
        )
        if m:
            ax2.plot([r["layer"] for r in m], [r["r2"] for r in m], "o--", label=f"trained ({pr})")
    within = lambda rs: [float(np.mean([v["r2"] for v in r["by_digits"].values()])) for r in rs]  # noqa: E731
    ax2.plot(layers, within(sel), ":", label="trained, mean within-digit")
    if result.get("random_init"):
        rnd = sorted(
            (r for r in result["random_init"] if r["target"] == target and r["position"] == position),
            key=lambda r: r["layer"],
        )
        ax2.plot([r["layer"] for r in rnd], [r["r2"] for r in rnd], label="random init")
        ax2.plot([r["layer"] for r in rnd], within(rnd), ":", label="random init, mean within-digit")
    ax2.set_title(f"R² of log2({target}) @{position}: overall vs within digit count", fontsize=9)
    ax2.set_xlabel("layer")
    ax2.set_ylim(-0.5, 1.02)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    path = out / "probes_r2_by_digits.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def steering(result: dict[str, Any], out: Path) -> Path | None:
    rows = result.get("steering") or []
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.4))
    x = [r["start"] for r in rows]
    for key, style in (("up", "o-"), ("down", "s-")):
        label = {"up": "+α probe dir (answer ↑), dev", "down": "−α probe dir (answer ↓), dev"}[key]
        ax.plot(x, [r[key] for r in rows], style, label=label)
    st = result.get("steering_test")
    if st:
        ax.axhline((st["random_up"] + st["random_down"]) / 2, ls="--", c="gray", label="random dir, test (mean ↑/↓)")
        ax.plot([st["layers"][0]], [(st["up"] + st["down"]) / 2], "k*", ms=10, label="probe dir, test (mean ↑/↓)")
    ax.set_xlabel(f"first layer of the {len(rows[0]['layers'])}-layer window")
    ax.set_ylabel("answers moved as expected")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "probes_steering.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
