"""Quick reproduction of arXiv:2401.03735 on the embedded SmolLM2-135M (subset; `lmlab probe numbers` runs it all)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from lmlab.core.paths import atomic_write_text
from lmlab.core.report import ReproduceContext, Section, Verdict, markdown_table

from . import plots
from .data import POSITIONS, TARGETS
from .experiment import NumbersConfig, quick_config, run_numbers


def _best(rows: list[dict[str, Any]], position: str, target: str, probe: str = "ridge") -> dict[str, Any] | None:
    sel = [r for r in rows if r["position"] == position and r["target"] == target and r["probe"] == probe]
    return max(sel, key=lambda r: r["r2"]) if sel else None


def within_digit_r2(
    rows: list[dict[str, Any]], position: str, target: str, probe: str = "ridge"
) -> tuple[int, float] | None:
    """(layer, R²) of the layer with the best mean within-digit-count R². Overall R² over 2-10-digit numbers is
    dominated by the number's length, which even a random-init model encodes (see the control); R² inside one
    digit count measures whether the value itself is read out."""
    per = {
        r["layer"]: float(np.mean([v["r2"] for v in r["by_digits"].values()]))
        for r in rows
        if r["position"] == position and r["target"] == target and r["probe"] == probe
    }
    return max(per.items(), key=lambda kv: kv[1]) if per else None


def summary_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Best layer per (position, target): trained Ridge, trained MLP, random-init Ridge; overall and within digit count."""
    out = []
    rand = result.get("random_init") or []
    for pos in POSITIONS:
        for tgt in TARGETS:
            b = _best(result["layers"], pos, tgt)
            m = _best(result["layers"], pos, tgt, "mlp")
            r = _best(rand, pos, tgt)
            w, wr = within_digit_r2(result["layers"], pos, tgt), within_digit_r2(rand, pos, tgt)
            out.append(
                {
                    "position": f"@{pos}",
                    "target": f"log2({tgt})",
                    "best layer": b["layer"],
                    "R²": b["r2"],
                    "ρ": b["pearson"],
                    "acc 1%": b["acc_1pct"],
                    "MSE": b["mse"],
                    "MLP R²": m["r2"] if m else None,
                    "random-init R²": r["r2"] if r else None,
                    "within-digit R² (layer)": f"{w[1]:.3f} ({w[0]})",
                    "random-init within-digit R²": wr[1] if wr else None,
                }
            )
    return out


def verdicts(result: dict[str, Any]) -> list[Verdict]:
    v = []
    ba, bb = _best(result["layers"], "a", "a"), _best(result["layers"], "b", "b")
    bs = _best(result["layers"], "last", "sum")
    v.append(
        Verdict(
            "log2 of each operand is linearly decodable at its last token (high R², paper: ρ near 1 in middle layers)",
            f"Ridge R² {ba['r2']:.3f} for a (layer {ba['layer']}), {bb['r2']:.3f} for b (layer {bb['layer']}); ρ {ba['pearson']:.3f} / {bb['pearson']:.3f}",
            min(ba["r2"], bb["r2"]) >= 0.9,
        )
    )
    if result.get("random_init"):
        rs = _best(result["random_init"], "last", "sum")
        w, wr = within_digit_r2(result["layers"], "last", "sum"), within_digit_r2(result["random_init"], "last", "sum")
        v.append(
            Verdict(
                "high overall R² reflects learned value encoding, not just number length (random-init control)",
                f"overall R² of log2(a+b) at the last token: trained {bs['r2']:.3f} vs random-init {rs['r2']:.3f} (length alone gives this)",
                bs["r2"] - rs["r2"] >= 0.2,
            )
        )
        v.append(
            Verdict(
                "within one digit count, the trained model encodes the value far better than a random-init model",
                f"mean within-digit-count R² of log2(a+b) at the last token: trained {w[1]:.3f} (layer {w[0]}) vs random-init {wr[1]:.3f} (layer {wr[0]})",
                w[1] - wr[1] >= 0.2,
            )
        )
    acc = max(r["acc_1pct"] for r in result["layers"] if r["probe"] == "ridge")
    v.append(
        Verdict(
            "values are encoded only approximately: exact-to-1 % readout is much rarer than high R² ('at least partially')",
            f"best approximate accuracy (within 1 %) of any Ridge probe: {acc:.2f}, while R² reaches {bs['r2']:.3f}",
            acc < 0.5 <= bs["r2"],
        )
    )
    st = result.get("steering") or []
    if st:
        top = max(st, key=lambda r: r["up"] + r["down"])
        rnd = max(r["random_up"] for r in st)
        v.append(
            Verdict(
                "adding the probe direction moves the model's answer the expected way (paper: up to 73 % on Mistral-7B, layers 14–19)",
                f"best window layers {top['layers'][0]}–{top['layers'][-1]}: up {top['up']:.2f}, down {top['down']:.2f}; random direction at most {rnd:.2f} "
                f"(model's own addition accuracy ≤ {max(result['addition_accuracy'].values()):.2f})",
                min(top["up"], top["down"]) > rnd + 0.1,
            )
        )
    return v


def run(ctx: ReproduceContext, cfg: NumbersConfig | None = None) -> Section:
    cfg = cfg or (quick_config(ctx.model, ctx.seed) if ctx.quick else NumbersConfig(model=ctx.model, seed=ctx.seed))
    result = run_numbers(cfg)
    atomic_write_text(ctx.out_dir / "probes.json", json.dumps(result, default=str))
    return section(result, ctx)


def section(result: dict[str, Any], ctx: ReproduceContext) -> Section:
    """The report section for a finished experiment (also re-renders a saved probes.json)."""
    cfg = result["config"]
    figs = [
        plots.heatmaps(result, ctx.out_dir, "r2"),
        plots.heatmaps(result, ctx.out_dir, "acc_1pct"),
        plots.r2_by_digits(result, ctx.out_dir),
    ]
    sf = plots.steering(result, ctx.out_dir)
    figs += [sf] if sf else []
    add = [{"digits": d, "accuracy": a} for d, a in result["addition_accuracy"].items()]
    steer = [
        {
            "layers": f"{r['layers'][0]}–{r['layers'][-1]}",
            "+α ↑": r["up"],
            "−α ↓": r["down"],
            "random ↑": r["random_up"],
        }
        for r in result.get("steering", [])
    ]
    md = (
        f"Model `{result['model']}`; {result['n_train']} train / {result['n_test']} test prompts "
        f"(`Question: What is the sum of {{a}} and {{b}} ?\\nAnswer: `, NumProbe data, {'quick subset' if ctx.quick else 'full'}); "
        "Ridge (α = 0.1) and MLP probes on log2 targets, scored on the held-out test split. "
        "Overall R² spans 2–10-digit numbers and mostly measures length; the within-digit-count columns (mean over "
        "digit counts of R² inside each) measure the value.\n\n"
        "**Best layer per position and target**\n\n"
        + markdown_table(summary_rows(result))
        + "\n**The model's own addition accuracy (greedy, exact match)**\n\n"
        + markdown_table(add)
        + (
            f"\n**Steering** ({cfg['steer_digits']}-digit test problems, step {cfg['steer_alpha']} × mean residual norm per layer, "
            "rate of answers moving the expected way)\n\n" + markdown_table(steer)
            if steer
            else ""
        )
    )
    return Section(
        "probes",
        "Number probes (arXiv:2401.03735)",
        md,
        figures=figs,
        data={k: result[k] for k in ("model", "n_train", "n_test", "addition_accuracy")}
        | {"summary": summary_rows(result), "steering": result.get("steering")},
        verdicts=verdicts(result),
    )
