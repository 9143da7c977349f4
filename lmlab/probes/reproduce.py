"""Quick reproduction of arXiv:2401.03735 on the embedded SmolLM2-135M (subset; `lmlab probe numbers` runs it all)."""

from __future__ import annotations

import json
from typing import Any

from lmlab.core.paths import atomic_write_text
from lmlab.core.report import ReproduceContext, Section, Verdict, markdown_table

from . import plots
from .data import POSITIONS, TARGETS
from .experiment import NumbersConfig, quick_config, run_numbers


def _best(rows: list[dict[str, Any]], position: str, target: str, probe: str = "ridge") -> dict[str, Any] | None:
    sel = [r for r in rows if r["position"] == position and r["target"] == target and r["probe"] == probe]
    return max(sel, key=lambda r: r["r2"]) if sel else None


def summary_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Best layer per (position, target): trained Ridge, trained MLP, random-init Ridge."""
    out = []
    for pos in POSITIONS:
        for tgt in TARGETS:
            b = _best(result["layers"], pos, tgt)
            m = _best(result["layers"], pos, tgt, "mlp")
            r = _best(result.get("random_init") or [], pos, tgt)
            out.append({"position": f"@{pos}", "target": f"log2({tgt})", "best layer": b["layer"], "R²": b["r2"], "ρ": b["pearson"],
                        "acc 1%": b["acc_1pct"], "MSE": b["mse"], "MLP R²": m["r2"] if m else None,
                        "random-init R²": r["r2"] if r else None})
    return out


def verdicts(result: dict[str, Any]) -> list[Verdict]:
    v = []
    ba, bb = _best(result["layers"], "a", "a"), _best(result["layers"], "b", "b")
    bs = _best(result["layers"], "last", "sum")
    v.append(Verdict("log2 of each operand is linearly decodable at its last token (high R², paper: ρ near 1 in middle layers)",
                     f"Ridge R² {ba['r2']:.3f} for a (layer {ba['layer']}), {bb['r2']:.3f} for b (layer {bb['layer']}); ρ {ba['pearson']:.3f} / {bb['pearson']:.3f}",
                     min(ba["r2"], bb["r2"]) >= 0.9))
    if result.get("random_init"):
        rs = _best(result["random_init"], "last", "sum")
        v.append(Verdict("the encoding is learned: a random-init model of the same architecture decodes far worse (control)",
                         f"log2(a+b) at the last token: trained R² {bs['r2']:.3f} vs random-init {rs['r2']:.3f}",
                         bs["r2"] - rs["r2"] >= 0.2))
    acc = max(r["acc_1pct"] for r in result["layers"] if r["probe"] == "ridge")
    v.append(Verdict("values are encoded only approximately: exact-to-1 % readout is much rarer than high R² ('at least partially')",
                     f"best approximate accuracy (within 1 %) of any Ridge probe: {acc:.2f}, while R² reaches {bs['r2']:.3f}",
                     acc < 0.5 <= bs["r2"]))
    st = result.get("steering") or []
    if st:
        top = max(st, key=lambda r: r["up"] + r["down"])
        rnd = max(r["random_up"] for r in st)
        v.append(Verdict("adding the probe direction moves the model's answer the expected way (paper: up to 73 % on Mistral-7B, layers 14–19)",
                         f"best window layers {top['layers'][0]}–{top['layers'][-1]}: up {top['up']:.2f}, down {top['down']:.2f}; random direction at most {rnd:.2f} "
                         f"(model's own addition accuracy ≤ {max(result['addition_accuracy'].values()):.2f})",
                         min(top["up"], top["down"]) > rnd + 0.1))
    return v


def run(ctx: ReproduceContext, cfg: NumbersConfig | None = None) -> Section:
    cfg = cfg or (quick_config(ctx.model, ctx.seed) if ctx.quick else NumbersConfig(model=ctx.model, seed=ctx.seed))
    result = run_numbers(cfg)
    atomic_write_text(ctx.out_dir / "probes.json", json.dumps(result, default=str))
    figs = [plots.heatmaps(result, ctx.out_dir, "r2"), plots.heatmaps(result, ctx.out_dir, "acc_1pct"), plots.r2_by_digits(result, ctx.out_dir)]
    sf = plots.steering(result, ctx.out_dir)
    figs += [sf] if sf else []
    add = [{"digits": d, "accuracy": a} for d, a in result["addition_accuracy"].items()]
    steer = [{"layers": f"{r['layers'][0]}–{r['layers'][-1]}", "+α ↑": r["up"], "−α ↓": r["down"], "random ↑": r["random_up"]} for r in result.get("steering", [])]
    md = (f"Model `{result['model']}`; {result['n_train']} train / {result['n_test']} test prompts "
          f"(`Question: What is the sum of {{a}} and {{b}} ?\\nAnswer: `, NumProbe data, {'quick subset' if ctx.quick else 'full'}); "
          "Ridge (α = 0.1) and MLP probes on log2 targets, scored on the held-out test split.\n\n"
          "**Best layer per position and target**\n\n" + markdown_table(summary_rows(result)) +
          "\n**The model's own addition accuracy (greedy, exact match)**\n\n" + markdown_table(add) +
          (f"\n**Steering** ({cfg.steer_digits}-digit test problems, step {cfg.steer_alpha} × mean residual norm per layer, "
           "rate of answers moving the expected way)\n\n" + markdown_table(steer) if steer else ""))
    return Section("probes", "Number probes (arXiv:2401.03735)", md, figures=figs,
                   data={k: result[k] for k in ("model", "n_train", "n_test", "addition_accuracy")} | {"summary": summary_rows(result), "steering": result.get("steering")},
                   verdicts=verdicts(result))
