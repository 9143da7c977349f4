"""Section of `lmlab reproduce`: the DeepSeekMoE comparison at laptop scale (tables, figure, verdicts).

Quick mode trains the `QUICK` setup for one seed (ctx.seed), plus the Fig. 3 ladder, within the global
report's time budget; seeds of the same setup already trained by an earlier `lmlab moe reproduce --quick`
(cached per run) are included and labelled. Non-quick runs the three seeds of `lmlab moe reproduce --quick`.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..core.paths import atomic_write_text, cache_dir
from ..core.report import ReproduceContext, Section, Verdict, markdown_table
from .experiment import MAIN, QUICK, Setup, run_all

PAPER = {"dense": 2.060, "switch": 1.881, "gshard": 1.867, "deepseekmoe": 1.808}  # Table 1, Pile loss at 2B


def _cached_seeds(s: Setup, candidates: list[int]) -> list[int]:
    root = cache_dir("moe", "runs")
    return [seed for seed in candidates if all((root / f"{s.key(a, seed)}.json").exists() for a in MAIN)]


def _figure(res: dict[str, Any], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(14, 4))
    summ = res["summary"]
    ax[0].bar(
        [r["arch"] for r in summ],
        [r["val_loss_mean"] for r in summ],
        yerr=[0 if math.isnan(r["val_loss_std"]) else r["val_loss_std"] for r in summ],
        capsize=4,
    )
    lo = min(r["val_loss_mean"] for r in summ)
    ax[0].set_ylim(lo - 0.3, None)
    ax[0].set_title("held-out loss (mean ± std over seeds)")
    for arch, sp in res["specialization"]["masked_top"].items():
        ax[1].plot(sp["ratio"], sp["val_loss"], marker="o", label=arch)
    ax[1].set_xlabel("ratio of disabled top routed experts")
    ax[1].set_ylabel("held-out loss")
    ax[1].set_title("Fig. 4: redundancy among routed experts")
    ax[1].legend()
    if res["ablation"]:
        ax[2].bar([r["arch"] for r in res["ablation"]], [r["val_loss"] for r in res["ablation"]], color="tab:green")
        ax[2].set_ylim(min(r["val_loss"] for r in res["ablation"]) - 0.3, None)
        ax[2].set_title("Fig. 3: shared isolation, finer segmentation")
    fig.tight_layout()
    path = out / "moe_comparison.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _verdicts(res: dict[str, Any]) -> list[Verdict]:
    m = {r["arch"]: r for r in res["summary"]}
    n = m["dense"]["seeds"]

    def cmp(a: str, b: str) -> tuple[bool, str]:
        d = m[b]["val_loss_mean"] - m[a]["val_loss_mean"]
        se = math.sqrt((m[a]["val_loss_std"] ** 2 + m[b]["val_loss_std"] ** 2) / n) if n > 1 else float("nan")
        note = "" if math.isnan(se) else (" (beyond 2 SE)" if abs(d) > 2 * se else " (within 2 SE: not resolved)")
        return (
            d > 0,
            f"{a} {m[a]['val_loss_mean']:.3f} vs {b} {m[b]['val_loss_mean']:.3f}, diff {d:+.3f}, {n} seed(s){note}",
        )

    out = []
    for a, b, claim in [
        ("gshard", "dense", "MoE (GShard) beats Dense at equal tokens (Table 1: 1.867 vs 2.060)"),
        ("switch", "dense", "Switch beats Dense (Table 1: 1.881 vs 2.060)"),
        ("deepseekmoe", "gshard", "DeepSeekMoE beats GShard at equal total and activated params (1.808 vs 1.867)"),
    ]:
        holds, text = cmp(a, b)
        out.append(Verdict(claim, text, holds))
    gs, ds = m["gshard"], m["deepseekmoe"]
    out.append(
        Verdict(
            "DeepSeekMoE 1+7/63 at W/4 has the same total and activated expert parameters as GShard 0+2/16",
            f"total {ds['total_params']} vs {gs['total_params']}, activated {ds['activated_params']} vs {gs['activated_params']} "
            "(difference = the larger router)",
            abs(ds["total_params"] - gs["total_params"]) < 0.01 * gs["total_params"],
        )
    )
    if res["ablation"]:
        v = [r["val_loss"] for r in res["ablation"]]
        out.append(
            Verdict(
                "Fig. 3: each step 0+2/16 → 1+1/15 → 1+3/31 → 1+7/63 lowers the loss",
                " → ".join(f"{x:.3f}" for x in v) + " (seed 0 only)",
                all(b < a for a, b in zip(v, v[1:])),
            )
        )
    sp = res["specialization"]["masked_top"]
    rise = {a: sp[a]["val_loss"][-1] - sp[a]["val_loss"][0] for a in sp}
    out.append(
        Verdict(
            "Fig. 4: DeepSeekMoE is more sensitive than GShard to disabling its top routed experts (less redundancy)",
            f"loss rise at ratio 4/16: DeepSeekMoE {rise['deepseekmoe']:+.3f}, GShard {rise['gshard']:+.3f} "
            "(paper compares with GShard×1.5, not trained here)",
            rise["deepseekmoe"] > rise["gshard"],
        )
    )
    sh = res["specialization"]["shared"]
    d = sh["shared_disabled_plus_one_routed"] - sh["with_shared"]
    out.append(
        Verdict(
            "Fig. 5: the shared expert cannot be replaced by one more routed expert (1.808 → 2.414)",
            f"{sh['with_shared']:.3f} → {sh['shared_disabled_plus_one_routed']:.3f} ({d:+.3f})",
            d > 0,
        )
    )
    return out


def run(ctx: ReproduceContext) -> Section:
    s = (
        replace(QUICK, seeds=[ctx.seed] + [x for x in _cached_seeds(QUICK, [0, 1, 2]) if x != ctx.seed])
        if ctx.quick
        else replace(QUICK, seeds=[0, 1, 2])
    )
    reused = s.seeds[1:] if ctx.quick else []
    res = run_all(s, log=lambda m: None)
    atomic_write_text(ctx.out_dir / "moe_results.json", json.dumps(res, indent=1))
    fig = _figure(res, ctx.out_dir)
    setup = {k: v for k, v in res["setup"].items() if k not in ("seeds", "data")}
    paper = [{"arch": a, "paper_pile_loss_2B": PAPER[a]} for a in MAIN]
    md = [
        "DeepSeekMoE (arXiv:2401.06066) vs Dense, Switch and GShard, trained from scratch on the same tokens "
        "(Python standard library sources, BPE trained with `tokenizers`), same AdamW + cosine schedule. "
        f"Setup: `{json.dumps(setup)}`; corpus {res['corpus_tokens']['train']} train / {res['corpus_tokens']['val']} held-out tokens.",
        f"Seeds: {s.seeds}"
        + (
            f" (seed(s) {reused} reused from the per-run cache of an earlier `lmlab moe reproduce --quick`)"
            if reused
            else ""
        )
        + (". Quick report mode: one fresh seed; `lmlab moe reproduce --quick` runs 3 seeds." if ctx.quick else "."),
        "",
        "**Held-out loss (nats/token)**",
        "",
        markdown_table(res["summary"], floatfmt=".4f"),
        "**Paper, Table 1 (2B total params, Pile loss)**",
        "",
        markdown_table(paper),
        "**Fig. 3 ablation ladder (seed 0)**",
        "",
        markdown_table(res["ablation"], ["arch", "val_loss", "total_params", "activated_params"], floatfmt=".4f"),
        "**Fig. 4: disabling each token's top routed experts**",
        "",
        markdown_table(
            [
                {
                    "arch": a,
                    "experts masked": "/".join(map(str, v["masked_experts"])),
                    **{f"ratio {r:.3f}": l for r, l in zip(v["ratio"], v["val_loss"])},
                }
                for a, v in res["specialization"]["masked_top"].items()
            ],
            floatfmt=".4f",
        ),
        "**Fig. 5: shared expert disabled, one more routed expert activated**",
        "",
        markdown_table([res["specialization"]["shared"]], floatfmt=".4f"),
    ]
    return Section(
        "moe",
        "DeepSeekMoE: fine-grained + shared experts",
        "\n".join(md),
        figures=[fig],
        data=res,
        verdicts=_verdicts(res),
    )
