"""Reproduction of Math-Shepherd at laptop scale: policy -> MC annotation -> PRM/ORM -> best-of-N.

The policy (generator and MC completer) is a ~0.3M-parameter Llama trained here on the synthetic world; the
verifier is SmolLM2-135M (frozen body, trained step head: `verifier.py`), so the reward model has the
capacity the tiny policy lacks. The world is GSM8K-like (multi-digit answers, `world.GSM_LIKE`), where a wrong
prefix rarely completes to the gold answer by luck; the old small world (answers 0..30) is measured beside it.
Label quality is measured against exact step correctness, which the synthetic world provides.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmlab.core.loader import load_model
from lmlab.core.report import (
    ReproduceContext,
    Section,
    Verdict,
    markdown_table,
    paired_bootstrap_diff,
    proportion_ci,
    verdict_from_interval,
)

from .annotate import AnnotateConfig, annotate
from .policy import PolicyConfig, load_policy, train_policy
from .truth import luck_rate, step_truth
from .verifier import head_scores, orm_targets, step_features, train_head, truncated
from .verify import METHODS, Candidate, bootstrap_ci, per_problem_accuracy, plot, sample_candidates
from .world import GSM_LIKE, SMALL, Difficulty, make_problems


@dataclass
class Plan:
    """Sizes of one run (quick or full); the report prints them."""

    test_problems: int
    annotate_problems: int
    small_world_problems: int  # annotated with the small world's own policy, for the luck rate before
    feature_layers: int  # SmolLM2 blocks run for the verifier's features (30 = the whole model)
    seeds: tuple[int, ...]  # reward-model (head) seeds
    ns: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)


# quick: no small-world policy (4.5 CPU-minutes more); the simulated luck rate still compares the two worlds
QUICK = Plan(test_problems=32, annotate_problems=120, small_world_problems=0, feature_layers=8, seeds=(0, 1))
FULL = Plan(test_problems=200, annotate_problems=600, small_world_problems=200, feature_layers=30, seeds=(0, 1, 2))


# ------------------------------------------------------------------------------------------ label quality
def label_quality(rows: list[dict[str, Any]], problems: dict[str, Any], n: int) -> dict[str, Any]:
    """MC labels against exact step truth (all steps but the last, whose label is its own answer's correctness),
    and the lucky-completion rate: the fraction of the N completions from a truly wrong prefix that still reach
    the gold answer (95 % interval: bootstrap over problems, since steps of one problem are correlated)."""
    hard, soft, truth = [], [], []
    per_problem = []  # (lucky completions, completions) from wrong prefixes, per problem
    for r in rows:
        lucky = tried = 0
        for s in r["solutions"]:
            t = step_truth(problems[r["id"]], s["steps"])[:-1]
            hard += s["hard"][:-1]
            soft += s["soft"][:-1]
            truth += t
            for ok, f in zip(t, s["soft"][:-1]):
                if not ok:
                    lucky += round(f * n)
                    tried += n
        per_problem.append((lucky, tried))
    h, so, tr = np.array(hard), np.array(soft), np.array(truth, dtype=float)
    wrong = int((tr == 0).sum())
    fp = int(h[tr == 0].sum()) if wrong else 0
    lk, tt = np.array(per_problem, dtype=float).T if per_problem else (np.zeros(1), np.zeros(1))
    rate = float(lk.sum() / tt.sum()) if tt.sum() else float("nan")
    rng = np.random.default_rng(0)
    boots = []
    for _ in range(2000):
        i = rng.integers(0, len(lk), len(lk))
        if tt[i].sum():
            boots.append(lk[i].sum() / tt[i].sum())
    lo, hi = np.percentile(boots, [2.5, 97.5]) if boots else (float("nan"), float("nan"))
    return {
        "steps": int(len(tr)),
        "true_fraction": float(tr.mean()) if len(tr) else 0.0,
        "hard_accuracy": float((h == tr).mean()) if len(tr) else 0.0,
        "hard_correct": int((h == tr).sum()),
        "soft_accuracy": float(((so >= 0.5) == tr).mean()) if len(tr) else 0.0,
        "wrong_steps": wrong,
        "hard_false_positives": fp,
        "hard_false_positive": fp / wrong if wrong else 0.0,
        "lucky_rate": rate,
        "lucky_ci": [float(lo), float(hi)],
        "lucky_per_problem": per_problem,
    }


def _annotate_world(
    d: Difficulty, n_problems: int, seed: int, out: Path, acfg: AnnotateConfig
) -> tuple[Any, list[dict[str, Any]], dict[str, Any], dict[str, Any], Path]:
    pcfg = PolicyConfig(difficulty=d, seed=seed)
    path = train_policy(pcfg)
    lm = load_policy(str(path))
    probs = make_problems(n_problems, seed, d, "annotate")
    stats = annotate(lm, probs, out, acfg, progress=False)
    rows = [json.loads(line) for line in (out / "annotations.jsonl").read_text().splitlines()]
    quality = label_quality(rows, {p.id: p for p in probs}, acfg.n)
    return lm, rows, stats, quality, path


# ------------------------------------------------------------------------------------------ verification
def _fmt_ci(x: float, ci: tuple[float, float] | list[float]) -> str:
    return f"{x:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def run(ctx: ReproduceContext) -> Section:
    t0 = time.time()
    out = Path(ctx.out_dir)
    plan = QUICK if ctx.quick else FULL
    seed = ctx.seed
    timings: dict[str, float] = {}
    acfg = AnnotateConfig(n=8, samples=4, seed=seed)

    # 1. the answer space: luck of a perfect completer after one slip, small world vs GSM-like world
    luck_sim = {}
    for name, d, floor in (
        ("small (0..30, floor division)", SMALL, True),
        ("GSM-like (exact arithmetic)", GSM_LIKE, False),
    ):
        k, n = luck_rate(make_problems(300, seed, d, "annotate"), seed, floor=floor)
        luck_sim[name] = proportion_ci(k, n)

    # 2. policy + MC annotation in both worlds (the small one on a slice, for the lucky-completion rate before)
    q_small = None
    if plan.small_world_problems:
        t = time.time()
        _, _, _, q_small, _ = _annotate_world(SMALL, plan.small_world_problems, seed, out / "annotations_small", acfg)
        timings["small world (policy + annotate)"] = time.time() - t
    t = time.time()
    lm, rows, stats, quality, policy_path = _annotate_world(
        GSM_LIKE, plan.annotate_problems, seed, out / "annotations", acfg
    )
    test = make_problems(plan.test_problems, seed, GSM_LIKE, "test")
    greedy_per = _greedy_per_problem(lm, test)
    timings["GSM-like world (policy + annotate)"] = time.time() - t
    by_id = {p.id: p for p in make_problems(plan.annotate_problems, seed, GSM_LIKE, "annotate")}
    n_eval = max(10, len(rows) // 6)  # held-out annotated problems for the step-level AUC
    fit_rows, eval_rows = rows[:-n_eval], rows[-n_eval:]

    # 3. candidates for best-of-N (tiny policy, fast)
    t = time.time()
    cands = sample_candidates(lm, test, max(plan.ns), seed=seed)
    timings["sample candidates"] = time.time() - t

    # 4. verifier features: SmolLM2 (first `feature_layers` blocks), one forward per solution
    t = time.time()
    vlm = load_model(ctx.model)
    body = truncated(vlm.model, plan.feature_layers)
    fit = [(r["question"], s) for r in fit_rows for s in r["solutions"]]
    ev = [(r["question"], s) for r in eval_rows for s in r["solutions"]]
    f_fit = step_features(body, vlm.tokenizer, [(q, s["steps"]) for q, s in fit])
    f_ev = step_features(body, vlm.tokenizer, [(q, s["steps"]) for q, s in ev])
    flat = [(p.question, c.steps) for p, cs in zip(test, cands) for c in cs]
    f_test = step_features(body, vlm.tokenizer, flat)
    timings["verifier features"] = time.time() - t

    # 5. heads: PRM (hard MC labels), PRM (soft), ORM, and the exact-label diagnostic, for every seed
    t = time.time()
    targets = {
        "prm": [s["hard"] for _, s in fit],
        "prm_soft": [s["soft"] for _, s in fit],
        "orm": [orm_targets(len(s["steps"]), s["correct"]) for _, s in fit],
        "prm_exact": [
            [float(x) for x in step_truth(by_id[r["id"]], s["steps"])] for r in fit_rows for s in r["solutions"]
        ],
    }
    ev_truth = [x for r in eval_rows for s in r["solutions"] for x in step_truth(by_id[r["id"]], s["steps"])]
    per_seed: dict[str, list[np.ndarray]] = {m: [] for m in ("prm", "orm", "sc_prm", "prm_soft", "prm_exact")}
    aucs: dict[str, list[float]] = {k: [] for k in targets}
    ev_scores: dict[str, list[np.ndarray]] = {k: [] for k in targets}
    for s in plan.seeds:
        heads = {k: train_head(f_fit, v, seed=s) for k, v in targets.items()}
        scores = {k: head_scores(h, f_test) for k, h in heads.items()}
        for k, h in heads.items():
            e = np.array([x for ss in head_scores(h, f_ev) for x in ss])
            ev_scores[k].append(e)
            aucs[k].append(_auc(ev_truth, e))
        it = {k: iter(v) for k, v in scores.items()}
        for cs in cands:
            for c in cs:
                st = {k: next(v) for k, v in it.items()}
                c.prm, c.orm = min(st["prm"]), st["orm"][-1]
                c.soft, c.exact = min(st["prm_soft"]), min(st["prm_exact"])  # type: ignore[attr-defined]
        for m in ("prm", "orm", "sc_prm"):
            per_seed[m].append(np.stack([per_problem_accuracy(cands, n, m) for n in plan.ns]))
        per_seed["prm_soft"].append(np.stack([_acc_by(cands, n, "soft") for n in plan.ns]))
        per_seed["prm_exact"].append(np.stack([_acc_by(cands, n, "exact") for n in plan.ns]))
    timings["reward heads"] = time.time() - t

    # 6. accuracy per method and N (seed-mean per problem; bootstrap over problems) and pairwise differences
    acc = {m: np.mean(v, 0) for m, v in per_seed.items()}  # [len(ns), problems]
    acc["sc"] = np.stack([per_problem_accuracy(cands, n, "sc") for n in plan.ns])
    oracle = np.stack([_pass_at(cands, n) for n in plan.ns])
    result: dict[str, Any] = {"n": list(plan.ns), "accuracy": {}, "ci95": {}, "pass_at_n": oracle.mean(1).tolist()}
    for m, a in acc.items():
        result["accuracy"][m] = a.mean(1).tolist()
        result["ci95"][m] = [list(bootstrap_ci(row, seed=seed)) for row in a]
    result["per_seed_accuracy"] = {m: [x.mean(1).tolist() for x in v] for m, v in per_seed.items()}
    pairs = [("prm", "orm"), ("orm", "sc"), ("prm", "sc"), ("sc_prm", "sc")]
    diffs = {
        f"{a}-{b}": [paired_bootstrap_diff(acc[a][i], acc[b][i], seed=seed) for i in range(len(plan.ns))]
        for a, b in pairs
    }
    result["differences"] = {k: [list(x) for x in v] for k, v in diffs.items()}
    result["policy_greedy_accuracy"] = float(greedy_per.mean())
    fig = out / "shepherd_best_of_n.png"
    plot(result, fig, f"Best-of-N on {len(test)} held-out GSM-like problems")
    (out / "verify.json").write_text(json.dumps(result, indent=2))

    # 7. report
    names = {
        "sc": "SC",
        "orm": "ORM",
        "prm": "PRM",
        "sc_prm": "SC+PRM",
        "prm_soft": "PRM soft",
        "prm_exact": "PRM exact*",
    }
    table = [
        {
            "N": n,
            **{
                names[m]: _fmt_ci(result["accuracy"][m][i], result["ci95"][m][i])
                for m in (*METHODS, "prm_soft", "prm_exact")
            },
            "pass@N": f"{result['pass_at_n'][i]:.3f}",
        }
        for i, n in enumerate(plan.ns)
    ]
    diff_table = [{"N": n, **{k: _fmt_ci(v[i][0], v[i][1:]) for k, v in diffs.items()}} for i, n in enumerate(plan.ns)]
    auc_txt = ", ".join(
        f"{names.get(k, k)} {np.mean(v):.3f} (seeds {', '.join(f'{x:.3f}' for x in v)})" for k, v in aucs.items()
    )
    qs = [("small world (answers 0..30)", q_small, plan.small_world_problems)] if q_small else []
    qs.append((f"GSM-like world (answers up to {GSM_LIKE.max_value})", quality, plan.annotate_problems))
    mode = "quick" if ctx.quick else "full"
    md: list[str] = [
        f"Mode **{mode}**: policy = tiny Llama trained on the world ({policy_path.name}); verifier = {ctx.model} "
        f"(first {plan.feature_layers} of {vlm.model.cfg.num_layers} blocks, frozen) + a trained MLP step head; "
        f"reward-model seeds {list(plan.seeds)}; {len(test)} held-out test problems; greedy accuracy "
        f"**{greedy_per.mean():.3f}**."
        + (
            " Quick mode runs a smaller slice of the verifier (fewer blocks, fewer problems); `lmlab reproduce --only shepherd` (full) runs the whole model.\n"
            if ctx.quick
            else "\n"
        ),
        "**Answer space and lucky completions.** A perfect completer after one arithmetic slip (gold +- 1..3) reaches "
        "the gold answer: "
        + "; ".join(f"{k}: {v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]" for k, v in luck_sim.items())
        + ". Measured with the real policies (MC completions from truly wrong prefixes, N="
        f"{acfg.n}, 95 % bootstrap over problems):\n",
        markdown_table(
            [
                {
                    "world": w,
                    "problems": n,
                    "steps labelled": q["steps"],
                    "truly wrong": q["wrong_steps"],
                    "lucky-completion rate": _fmt_ci(q["lucky_rate"], q["lucky_ci"]),
                    "hard false-positive": f"{q['hard_false_positive']:.3f}",
                    "hard label accuracy": f"{q['hard_accuracy']:.3f}",
                    "soft (>=0.5) accuracy": f"{q['soft_accuracy']:.3f}",
                }
                for w, q, n in qs
            ]
        ),
        f"\n**Step-level ROC AUC** against exact step truth on {len(eval_rows)} held-out annotated problems: {auc_txt}.\n",
        "\n**Best-of-N accuracy** (candidates sampled at temperature 0.7; mean over disjoint subsets of the 64 samples; "
        "reward-model methods averaged over seeds per problem; 95 % bootstrap interval over problems). "
        "*PRM exact: diagnostic head trained on exact step truth (no such oracle in the paper).\n",
        markdown_table(table),
        "\n**Pairwise differences** (paired bootstrap over problems, 95 %):\n",
        markdown_table(diff_table),
        f"\nStage seconds: {', '.join(f'{k} {v:.0f}' for k, v in timings.items())}.\n",
    ]
    i64 = len(plan.ns) - 1
    nmax = plan.ns[-1]
    seeds_txt = f"{len(plan.seeds)} reward-model seeds {list(plan.seeds)}; 1 policy/sampling seed ({seed})"

    def vd(claim: str, key: str) -> Verdict:
        d, lo, hi = diffs[key][i64]
        return verdict_from_interval(
            claim,
            lo,
            hi,
            0.0,
            seeds=len(plan.seeds),
            estimate=d,
            measured=f"N={nmax}: difference {d:+.3f} (95% CI [{lo:.3f}, {hi:.3f}], {len(test)} problems)",
        )

    g_d, g_lo, g_hi = paired_bootstrap_diff(acc["prm"][i64], greedy_per, seed=seed)
    luck_claim = "A multi-digit (GSM8K-like) answer space makes lucky completions rarer than answers in 0..30"
    if q_small:
        dl = _luck_diff(q_small["lucky_per_problem"], quality["lucky_per_problem"], seed)
        luck_verdict = verdict_from_interval(
            luck_claim,
            dl[1],
            dl[2],
            0.0,
            seeds=1,
            min_seeds=1,
            estimate=dl[0],
            measured=f"lucky-completion rate small {q_small['lucky_rate']:.3f} - GSM-like {quality['lucky_rate']:.3f} = "
            f"{dl[0]:+.3f} (95% CI [{dl[1]:.3f}, {dl[2]:.3f}], bootstrap over problems of one annotation run each)",
        )
    else:
        luck_verdict = Verdict(
            luck_claim,
            f"quick mode trains no small-world policy: GSM-like lucky-completion rate {quality['lucky_rate']:.3f} "
            f"[{quality['lucky_ci'][0]:.3f}, {quality['lucky_ci'][1]:.3f}]; the full mode measures the difference",
            None,
            seeds=1,
            interval=tuple(quality["lucky_ci"]),
            status="not tested",
        )
    verdicts = [
        vd("PRM best-of-N > ORM best-of-N at large N (paper, GSM8K N=256: 93.3 vs 92.6)", "prm-orm"),
        vd("ORM best-of-N > self-consistency at large N (paper: 92.6 vs 88.2)", "orm-sc"),
        vd("PRM best-of-N > self-consistency at large N (paper: 93.3 vs 88.2)", "prm-sc"),
        vd("SC + PRM > self-consistency (paper: 92.0 vs 88.2 at N=256)", "sc_prm-sc"),
        verdict_from_interval(
            "Verification improves on the policy's own greedy answer",
            g_lo,
            g_hi,
            0.0,
            seeds=len(plan.seeds),
            estimate=g_d,
            measured=f"PRM@{nmax} - greedy {g_d:+.3f} (95% CI [{g_lo:.3f}, {g_hi:.3f}])",
        ),
        luck_verdict,
        _hard_label_verdict(quality, acfg.n),
        _auc_verdict(ev_scores, ev_truth, seed, len(plan.seeds)),
    ]
    data = {
        "plan": plan.__dict__,
        "verify": result,
        "label_quality": {
            "small": {k: v for k, v in (q_small or {}).items() if k != "lucky_per_problem"},
            "gsm_like": {k: v for k, v in quality.items() if k != "lucky_per_problem"},
        },
        "luck_simulated": luck_sim,
        "step_auc": aucs,
        "annotate": stats,
        "timings": timings,
        "seeds": seeds_txt,
    }
    return Section(
        "shepherd",
        "Math-Shepherd: MC step labels, PRM, best-of-N verification",
        "\n".join(md),
        [fig],
        data,
        verdicts,
        seconds=time.time() - t0,
    )


# ------------------------------------------------------------------------------------------ helpers
def _greedy_per_problem(lm: Any, problems: list[Any]) -> np.ndarray:
    """1.0 where the policy's temperature-0 answer is right (`policy.greedy_accuracy`, kept per problem)."""
    from lmlab.core.engine import SamplingParams, generate

    from .data import extract_answer, is_correct
    from .policy import encode_prompt

    gens = generate(
        lm.model,
        lm.tokenizer,
        [encode_prompt(lm.tokenizer, p.question) for p in problems],
        SamplingParams(max_new_tokens=96, temperature=0.0),
    )
    return np.array([float(is_correct(extract_answer(g.text), p.answer)) for g, p in zip(gens, problems)])


def _acc_by(cands: list[list[Candidate]], n: int, attr: str) -> np.ndarray:
    """Best-of-n accuracy ranking by another stored score (soft / exact-label heads)."""
    out = []
    for cs in cands:
        picks = []
        for i in range(0, len(cs) - n + 1, n):
            sub = cs[i : i + n]
            pool = [c for c in sub if c.answer is not None] or sub
            picks.append(max(pool, key=lambda c: getattr(c, attr)).correct)
        out.append(np.mean(picks))
    return np.array(out)


def _pass_at(cands: list[list[Candidate]], n: int) -> np.ndarray:
    return np.array(
        [np.mean([any(c.correct for c in cs[i : i + n]) for i in range(0, len(cs) - n + 1, n)]) for cs in cands]
    )


def _auc(truth: list[bool], scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(truth, scores)) if 0 < sum(truth) < len(truth) else float("nan")


def _luck_diff(a: list[tuple[int, int]], b: list[tuple[int, int]], seed: int) -> tuple[float, float, float]:
    """Difference of two pooled rates (lucky / tried), each resampled over its own problems."""
    A, B = np.array(a, dtype=float), np.array(b, dtype=float)
    est = A[:, 0].sum() / max(A[:, 1].sum(), 1) - B[:, 0].sum() / max(B[:, 1].sum(), 1)
    rng = np.random.default_rng(seed)
    d = []
    for _ in range(2000):
        x, y = A[rng.integers(0, len(A), len(A))], B[rng.integers(0, len(B), len(B))]
        if x[:, 1].sum() and y[:, 1].sum():
            d.append(x[:, 0].sum() / x[:, 1].sum() - y[:, 0].sum() / y[:, 1].sum())
    lo, hi = np.percentile(d, [2.5, 97.5]) if d else (float("nan"), float("nan"))
    return float(est), float(lo), float(hi)


def _hard_label_verdict(q: dict[str, Any], n: int) -> Verdict:
    p, lo, hi = proportion_ci(q["hard_correct"], max(q["steps"], 1))
    return verdict_from_interval(
        "MC hard estimation gives mostly (>= 80 %) correct step labels (the paper checks against human labels)",
        lo,
        hi,
        0.8,
        seeds=1,
        min_seeds=1,
        estimate=p,
        measured=f"GSM-like world: hard labels agree with exact truth on {p:.3f} of {q['steps']} steps "
        f"(Wilson 95% [{lo:.3f}, {hi:.3f}], N={n}; steps of one annotation run)",
    )


def _auc_verdict(ev: dict[str, list[np.ndarray]], truth: list[bool], seed: int, seeds: int) -> Verdict:
    """PRM vs ORM step AUC: seed-mean scores, bootstrap over held-out steps."""
    from sklearn.metrics import roc_auc_score

    t = np.array(truth, dtype=int)
    p, o = np.mean(ev["prm"], 0), np.mean(ev["orm"], 0)
    rng = np.random.default_rng(seed)
    d = []
    for _ in range(500):
        i = rng.integers(0, len(t), len(t))
        if 0 < t[i].sum() < len(i):
            d.append(roc_auc_score(t[i], p[i]) - roc_auc_score(t[i], o[i]))
    est = _auc(truth, p) - _auc(truth, o)
    lo, hi = np.percentile(d, [2.5, 97.5]) if d else (float("nan"), float("nan"))
    return verdict_from_interval(
        "A PRM ranks steps better than an ORM (process vs outcome supervision): step AUC difference > 0",
        float(lo),
        float(hi),
        0.0,
        seeds=seeds,
        estimate=est,
        measured=f"step AUC PRM - ORM {est:+.3f} (95% CI [{lo:.3f}, {hi:.3f}], bootstrap over {len(t)} held-out steps)",
    )
