"""Smatch two ways, fine-grained sub-scores and the structure-loss analysis (F1 by position in the linearization).

- `smatch` (snowblink14, v1.0.4): the hill-climbing scorer papers report; seeded (`random.seed`) and its global
  memo cleared per pair, so the same input gives the same number. Labelled "Smatch (snowblink, seeded)".
- `smatchpp` with the ILP solver: the optimal alignment, deterministic and verifiable (the reporting metric).
  Labelled "Smatch++ (ILP, optimal)".
Both come with a 95% bootstrap CI over graphs (resampling per-graph match counts).

Sub-scores follow Damonte et al. (2017), as amrlib's `smatch_enhanced` prints them. Concepts, frames, no-WSD,
named entities, negation and wikification are multiset F1 over labels (as amr-evaluation computes them); SRL,
reentrancies and unlabeled are scored under the ILP variable alignment of the whole graph (amr-evaluation instead
re-runs hill-climbing Smatch on each subgraph). The position analysis (paper section 2, "structure loss
accumulation") is the procedure of design notes section 2(a): every gold item gets its relative token position in
the gold NLR linearization, every predicted item its position in the predicted one, 10 bins, micro F1 per bin.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import penman
from penman import layout

from .graphs import MODEL, AmrGraph, one_line
from .linearize import linearize_tree

BINS = 10
SUBSCORES = (
    "Unlabeled",
    "No WSD",
    "Concepts",
    "Frames",
    "Named Ent.",
    "Negations",
    "Wikification",
    "Reentrancies",
    "SRL",
)
_FRAME = re.compile(r"-\d\d+$")


def _f1(m: float, t: float, g: float) -> tuple[float, float, float]:
    p = m / t if t else 0.0
    r = m / g if g else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def bootstrap_ci(counts: np.ndarray, n: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile CI of corpus F1 from rows (match, test_total, gold_total), resampling graphs."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(counts), size=(n, len(counts)))
    s = counts[idx].sum(axis=1)
    p = np.divide(s[:, 0], s[:, 1], out=np.zeros(n), where=s[:, 1] > 0)
    r = np.divide(s[:, 0], s[:, 2], out=np.zeros(n), where=s[:, 2] > 0)
    f = np.divide(2 * p * r, p + r, out=np.zeros(n), where=(p + r) > 0)
    lo, hi = np.percentile(f, [2.5, 97.5])
    return float(lo), float(hi)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n: int = 2000, seed: int = 0) -> dict[str, float]:
    """Corpus-F1 difference b - a with a 95% CI, paired over graphs (and pooled over seeds).

    `a`, `b`: per-graph (match, test_total, gold_total) rows, shape [seeds, graphs, 3] (or [graphs, 3]), the same
    gold graphs in the same order. Each replicate resamples graph indices once and applies them to every seed of
    both systems, so sentence difficulty cancels; counts are summed over seeds (pooled F1).
    Returns {"diff", "lo", "hi", "p_le_0"} in F1 points x 100; p_le_0 is the share of replicates with diff <= 0."""
    a, b = (np.asarray(x, dtype=float).reshape(-1, np.shape(x)[-2], 3) for x in (a, b))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.shape[1], size=(n, a.shape[1]))

    def f1(c: np.ndarray, ix) -> np.ndarray:
        s = c[:, ix].sum(axis=(0, -2))  # [..., 3]
        p = np.divide(s[..., 0], s[..., 1], out=np.zeros(s.shape[:-1]), where=s[..., 1] > 0)
        r = np.divide(s[..., 0], s[..., 2], out=np.zeros(s.shape[:-1]), where=s[..., 2] > 0)
        return np.divide(2 * p * r, p + r, out=np.zeros(s.shape[:-1]), where=(p + r) > 0)

    full = float(f1(b, slice(None)) - f1(a, slice(None)))
    d = f1(b, idx) - f1(a, idx)
    lo, hi = np.percentile(d, [2.5, 97.5])
    return {"diff": 100 * full, "lo": 100 * float(lo), "hi": 100 * float(hi), "p_le_0": float((d <= 0).mean())}


@dataclass
class Score:
    name: str
    precision: float
    recall: float
    f1: float
    ci: tuple[float, float]
    seconds: float = 0.0

    def row(self) -> dict:
        return {
            "metric": self.name,
            "P": 100 * self.precision,
            "R": 100 * self.recall,
            "F1": 100 * self.f1,
            "F1 95% CI": f"[{100 * self.ci[0]:.1f}, {100 * self.ci[1]:.1f}]",
            "seconds": self.seconds,
        }


def _corpus(name: str, counts: list[tuple[float, float, float]], seconds: float, seed: int) -> Score:
    arr = np.asarray(counts, dtype=float).reshape(-1, 3)
    p, r, f = _f1(*arr.sum(axis=0))
    return Score(name, p, r, f, bootstrap_ci(arr, seed=seed), seconds)


def smatch_snowblink(pred: list[str], gold: list[str], seed: int = 0) -> tuple[Score, list[tuple]]:
    """Snowblink Smatch 1.0.4 (5 restarts, seeded) on one-line PENMAN strings; per-pair (match, test, gold)."""
    import time

    import smatch

    t0 = time.perf_counter()
    random.seed(seed)
    counts = []
    for a, b in zip(pred, gold, strict=True):
        smatch.match_triple_dict.clear()  # a global memo: stale entries from the previous pair corrupt scores
        m, t, g = smatch.get_amr_match(a, b)
        counts.append((m, t, g))
    return _corpus("Smatch (snowblink 1.0.4, seeded hill-climbing)", counts, time.perf_counter() - t0, seed), counts


_SMATCHPP = None


def _smatchpp():
    global _SMATCHPP
    if _SMATCHPP is None:
        from smatchpp import Smatchpp, solvers
        from smatchpp.formalism.amr import tools as amrtools

        _SMATCHPP = Smatchpp(alignmentsolver=solvers.ILP(), graph_standardizer=amrtools.AMRStandardizer())
    return _SMATCHPP


def smatch_ilp(pred: list[str], gold: list[str], seed: int = 0) -> tuple[Score, list[tuple]]:
    """Smatch++ with the ILP solver and its AMR standardizer: optimal and deterministic."""
    import time

    t0 = time.perf_counter()
    m = _smatchpp()
    counts = []
    for a, b in zip(pred, gold, strict=True):
        arr = m.process_pair(a, b)[0]["main"]  # [match(P side), match(R side), |pred|, |gold|]
        counts.append((float(arr[0]), float(arr[2]), float(arr[3])))
    return _corpus("Smatch++ (smatchpp ILP, optimal)", counts, time.perf_counter() - t0, seed), counts


# ---- items with positions, ILP alignment on our own triples (sub-scores, position analysis) ----


@dataclass
class Items:
    instances: list[tuple[str, str]]  # (var, concept)
    edges: list[tuple[str, str, str]]  # (source, role, target var)
    attrs: list[tuple[str, str, str]]  # (var, role, constant)
    pos: dict[tuple, list[float]] = field(default_factory=dict)  # item -> relative positions (multiset)


def items(tree: penman.Tree) -> Items:
    """Triples of `tree` (roles de-inverted by the AMR model) with relative NLR positions of their tokens."""
    lin = linearize_tree(tree)
    g = layout.interpret(tree, MODEL)
    variables = g.variables()
    n = max(len(lin.tokens), 1)
    out = Items([], [], [])
    assert len(lin.positions) == len(g.triples)
    for (s, r, t), p in zip(g.triples, lin.positions):
        if r == ":instance":
            item: tuple = (s, t or "")
            out.instances.append(item)
        elif t in variables:
            item = (s, r, t)
            out.edges.append(item)
        else:
            item = (s, r, t)
            out.attrs.append(item)
        out.pos.setdefault(item, []).append(p / n)
    return out


def ilp_alignment(a: Items, b: Items) -> dict[str, str]:
    """Variable map a -> b maximising matched triples (smatchpp's ILP on our triples, no standardisation)."""
    from smatchpp import align, score, solvers

    ta = [(f"aa_{v}", ":instance", c) for v, c in a.instances]
    ta += [(f"aa_{s}", r, f"aa_{t}") for s, r, t in a.edges] + [(f"aa_{s}", r, c) for s, r, c in a.attrs]
    tb = [(f"bb_{v}", ":instance", c) for v, c in b.instances]
    tb += [(f"bb_{s}", r, f"bb_{t}") for s, r, t in b.edges] + [(f"bb_{s}", r, c) for s, r, c in b.attrs]
    va, vb = {f"aa_{v}" for v, _ in a.instances}, {f"bb_{v}" for v, _ in b.instances}
    if not va or not vb:
        return {}
    aligner = align.GraphAligner(score.IDTripleMatcher(), solvers.ILP())
    mat, _, _ = aligner.align(ta, tb, va, vb)
    sa, sb = sorted(va), sorted(vb)
    return {sa[i][3:]: sb[j][3:] for i, j in enumerate(np.asarray(mat).astype(int)) if i < len(sa) and 0 <= j < len(sb)}


def _multiset(m: Counter, t: Counter, g: Counter) -> tuple[float, float, float]:
    return (sum((t & g).values()), sum(t.values()), sum(g.values()))


def _mapped(items_a, items_b, amap, key) -> tuple[float, float, float]:
    """Match count of a's items (mapped into b's variables) that b has, as a multiset."""
    ta = Counter(key(x, amap) for x in items_a)
    tb = Counter(key(x, None) for x in items_b)
    return (sum((ta & tb).values()), len(items_a), len(items_b))


def subscore_counts(pred: Items, gold: Items, amap: dict[str, str]) -> dict[str, tuple[float, float, float]]:
    def concepts(it: Items, pred_=lambda v, c: True) -> Counter:
        return Counter(c for v, c in it.instances if pred_(v, c))

    def named(it: Items) -> Counter:
        names = {s for s, r, _ in it.edges if r == ":name"}
        return concepts(it, lambda v, c: v in names)

    def negated(it: Items) -> Counter:
        neg = {s for s, r, c in it.attrs if r == ":polarity" and c == "-"}
        return concepts(it, lambda v, c: v in neg)

    def reentrant(it: Items) -> list:
        indeg = Counter(t for _, _, t in it.edges)
        return [e for e in it.edges if indeg[e[2]] > 1]

    def m(v, amap_):
        return amap_.get(v, "?" + v) if amap_ is not None else v

    out = {
        "Concepts": _multiset(Counter(), concepts(pred), concepts(gold)),
        "No WSD": _multiset(
            Counter(),
            Counter(_FRAME.sub("", c) for c in concepts(pred).elements()),
            Counter(_FRAME.sub("", c) for c in concepts(gold).elements()),
        ),
        "Frames": _multiset(
            Counter(),
            concepts(pred, lambda v, c: bool(_FRAME.search(c))),
            concepts(gold, lambda v, c: bool(_FRAME.search(c))),
        ),
        "Named Ent.": _multiset(Counter(), named(pred), named(gold)),
        "Negations": _multiset(Counter(), negated(pred), negated(gold)),
        "Wikification": _multiset(
            Counter(c for _, r, c in pred.attrs if r == ":wiki"),
            Counter(c for _, r, c in pred.attrs if r == ":wiki"),
            Counter(c for _, r, c in gold.attrs if r == ":wiki"),
        ),
    }
    srl = re.compile(r"^:ARG\d$")
    out["SRL"] = _mapped(
        [e for e in pred.edges if srl.match(e[1])],
        [e for e in gold.edges if srl.match(e[1])],
        amap,
        lambda e, a: (m(e[0], a), e[1], m(e[2], a)),
    )
    out["Reentrancies"] = _mapped(reentrant(pred), reentrant(gold), amap, lambda e, a: (m(e[0], a), e[1], m(e[2], a)))
    out["Unlabeled"] = _mapped(pred.edges, gold.edges, amap, lambda e, a: (m(e[0], a), m(e[2], a)))
    return out


def _bin(p: float) -> int:
    return min(int(p * BINS), BINS - 1)


def position_counts(pred: Items, gold: Items, amap: dict[str, str]) -> dict[str, np.ndarray]:
    """Per bin: [matched pred, pred total, matched gold, gold total] for nodes and for edges (incl. attributes)."""
    inv = {v: k for k, v in amap.items()}
    out = {}
    for kind in ("nodes", "edges"):
        arr = np.zeros((BINS, 4))
        if kind == "nodes":
            p_items, g_items = pred.instances, gold.instances
            to_g = lambda x: (amap.get(x[0], "?"), x[1])  # noqa: E731
            to_p = lambda x: (inv.get(x[0], "?"), x[1])  # noqa: E731
        else:
            p_items, g_items = pred.edges + pred.attrs, gold.edges + gold.attrs
            gvars = {v for v, _ in gold.instances}
            pvars = {v for v, _ in pred.instances}

            def to_g(x, pv=pvars):
                return (amap.get(x[0], "?"), x[1], amap.get(x[2], "?") if x[2] in pv else x[2])

            def to_p(x, gv=gvars):
                return (inv.get(x[0], "?"), x[1], inv.get(x[2], "?") if x[2] in gv else x[2])

        g_left = Counter(g_items)
        p_left = Counter(p_items)
        for x in dict.fromkeys(p_items):  # pred side: precision
            for p in pred.pos[x]:
                hit = g_left[to_g(x)] > 0
                g_left[to_g(x)] -= hit
                arr[_bin(p), 0] += hit
                arr[_bin(p), 1] += 1
        for x in dict.fromkeys(g_items):  # gold side: recall
            for p in gold.pos[x]:
                hit = p_left[to_p(x)] > 0
                p_left[to_p(x)] -= hit
                arr[_bin(p), 2] += hit
                arr[_bin(p), 3] += 1
        out[kind] = arr
    return out


def position_recall(arr: np.ndarray) -> list[float | None]:
    """Recall per bin by gold position only (defined wherever gold items fall, whatever the parser emits)."""
    return [None if tg == 0 else mg / tg for _, _, mg, tg in arr]


def position_f1(arr: np.ndarray) -> list[float | None]:
    """F1 per bin from summed `position_counts` rows (None where a bin holds no item)."""
    res: list[float | None] = []
    for mp, tp, mg, tg in arr:
        if tp == 0 or tg == 0:  # precision or recall undefined in this bin (no predicted / gold item there)
            res.append(None)
            continue
        p = mp / tp if tp else 0.0
        r = mg / tg if tg else 0.0
        res.append(2 * p * r / (p + r) if p + r else 0.0)
    return res


def _bin_f1(s: np.ndarray) -> np.ndarray:
    """F1 from summed [..., 4] position counts (matched pred, pred, matched gold, gold); NaN where undefined."""
    with np.errstate(divide="ignore", invalid="ignore"):
        p, r = s[..., 0] / s[..., 1], s[..., 2] / s[..., 3]
        f = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    return np.where((s[..., 1] > 0) & (s[..., 3] > 0), f, np.nan)


def _halves(c: np.ndarray) -> np.ndarray:
    """[..., BINS, 4] -> [..., 2, 4]: counts of the first and the second half of the bins (early, late)."""
    h = BINS // 2
    return np.stack([c[..., :h, :].sum(-2), c[..., h:, :].sum(-2)], axis=-2)


def _weights(n_graphs: int, n: int, seed: int) -> np.ndarray:
    """[n, graphs] multiplicities of a graph bootstrap; the same seed gives the same replicates, so statistics of
    different systems computed separately are still paired."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_graphs, size=(n, n_graphs))
    return np.stack([np.bincount(row, minlength=n_graphs) for row in idx]).astype(float)


def _ci(x: np.ndarray) -> tuple[float | None, float | None]:
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return None, None
    lo, hi = np.percentile(x, [2.5, 97.5])
    return float(lo), float(hi)


def _opt(x) -> float | None:
    return None if x is None or np.isnan(x) else float(x)


def position_bootstrap(
    a: np.ndarray, b: np.ndarray | None = None, n: int = 1000, seed: int = 0
) -> dict[str, list | float | None]:
    """Bootstrap CIs for the structure-loss curve of one system (`b` None) or the difference b - a of two.

    `a`, `b`: per-graph position counts [seeds, graphs, BINS, 4] (`Evaluation.position_counts_graph`), the same
    gold graphs in the same order; seeds are pooled (counts summed) and each replicate resamples graphs once for
    every seed of both systems. Statistics (F1 in 0..1, differences b - a):
    `f1` / `lo` / `hi` per bin; `early`, `late` (F1 of the first / second half of the bins, counts pooled);
    `late_minus_early` with `lme_lo` / `lme_hi` (for one system: how F1 changes along the linearization, negative =
    structure loss; for two: whether b's gain over a grows with position, the RGL mechanism); `per_seed_lme`."""
    a = np.asarray(a, dtype=float)
    sys_b = None if b is None else np.asarray(b, dtype=float)
    w = _weights(a.shape[1], n, seed)

    def stat(c: np.ndarray, weights: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        pooled = c.sum(0)  # [graphs, BINS, 4]
        s = pooled.sum(0) if weights is None else np.einsum("ng,gbk->nbk", weights, pooled)
        return _bin_f1(s), _bin_f1(_halves(s))

    def value(weights):
        fa, ha = stat(a, weights)
        if sys_b is None:
            return fa, ha
        fb, hb = stat(sys_b, weights)
        return fb - fa, hb - ha

    f, h = value(None)
    fr, hr = value(w)
    lme = hr[:, 1] - hr[:, 0]
    per_seed = []
    for k in range(a.shape[0]):
        ha = _bin_f1(_halves(a[k].sum(0)))
        d = ha if sys_b is None else _bin_f1(_halves(sys_b[k].sum(0))) - ha
        per_seed.append(_opt(d[1] - d[0]))
    cis = [_ci(fr[:, j]) for j in range(BINS)]
    lo, hi = _ci(lme)
    return {
        "f1": [_opt(x) for x in f],
        "lo": [c[0] for c in cis],
        "hi": [c[1] for c in cis],
        "early": _opt(h[0]),
        "late": _opt(h[1]),
        "late_minus_early": _opt(h[1] - h[0]),
        "lme_lo": lo,
        "lme_hi": hi,
        "per_seed_lme": per_seed,
        "seeds": int(a.shape[0]),
    }


@dataclass
class Evaluation:
    snowblink: Score
    ilp: Score
    subscores: dict[str, Score]
    positions: dict[str, list[float | None]]
    n: int
    position_counts: dict[str, list] = field(default_factory=dict)
    ilp_counts: list = field(default_factory=list)  # per graph (match, test, gold): paired comparisons
    position_counts_graph: dict[str, list] = field(default_factory=dict)  # kind -> [graphs][BINS][4] (bootstrap)

    def to_json(self) -> dict:
        return {
            "n": self.n,
            "smatch_snowblink": self.snowblink.row(),
            "smatch_ilp": self.ilp.row(),
            "subscores": {k: v.row() for k, v in self.subscores.items()},
            "position_f1": self.positions,
            "position_recall": {k: position_recall(np.asarray(v)) for k, v in self.position_counts.items()},
            "position_counts": self.position_counts,
            "ilp_counts": self.ilp_counts,
            "position_counts_graph": self.position_counts_graph,
        }

    def rows(self) -> list[dict]:
        return [self.snowblink.row(), self.ilp.row()] + [{**v.row(), "metric": k} for k, v in self.subscores.items()]


def evaluate(pred: list[AmrGraph], gold: list[AmrGraph], seed: int = 0) -> Evaluation:
    """Both Smatch scores with CIs, sub-scores and position-bucket F1 for aligned lists of graphs."""
    import time

    if len(pred) != len(gold):
        from lmlab.core.errors import LmlabError

        raise LmlabError(f"{len(pred)} predicted graphs vs {len(gold)} gold graphs", hint="the files must align 1:1")
    p_lines, g_lines = [one_line(g) for g in pred], [one_line(g) for g in gold]
    snow, _ = smatch_snowblink(p_lines, g_lines, seed)
    ilp, ilp_counts = smatch_ilp(p_lines, g_lines, seed)
    t0 = time.perf_counter()
    sub: dict[str, list] = {k: [] for k in SUBSCORES}
    pos = {"nodes": np.zeros((BINS, 4)), "edges": np.zeros((BINS, 4))}
    per_graph: dict[str, list] = {"nodes": [], "edges": []}
    for a, b in zip(pred, gold):
        ia, ib = items(a.tree), items(b.tree)
        amap = ilp_alignment(ia, ib)
        for k, c in subscore_counts(ia, ib, amap).items():
            sub[k].append(c)
        for k, arr in position_counts(ia, ib, amap).items():
            pos[k] += arr
            per_graph[k].append(arr.astype(int).tolist())
    secs = time.perf_counter() - t0
    subs = {k: _corpus(k, v, secs, seed) for k, v in sub.items()}
    return Evaluation(
        snow,
        ilp,
        subs,
        {k: position_f1(v) for k, v in pos.items()},
        len(pred),
        {k: v.tolist() for k, v in pos.items()},
        [list(c) for c in ilp_counts],
        per_graph,
    )


def plot_positions(
    curves: dict[str, dict[str, list]], path, title: str = "", bands: dict[str, dict[str, tuple]] | None = None
) -> None:
    """curves: system -> {'nodes': [...10], 'edges': [...10]}; one panel per kind. `bands`: system -> kind ->
    (lo [...10], hi [...10]), drawn as a shaded 95% interval around that system's curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    xs = [(i + 0.5) / BINS for i in range(BINS)]
    for ax, kind in zip(axes, ("nodes", "edges")):
        for name, c in curves.items():
            ys = [np.nan if v is None else 100 * v for v in c[kind]]
            (line,) = ax.plot(xs, ys, marker="o", label=name)
            band = (bands or {}).get(name, {}).get(kind)
            if band is not None:
                lo = [np.nan if v is None else 100 * v for v in band[0]]
                hi = [np.nan if v is None else 100 * v for v in band[1]]
                ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
        ax.set_title(f"{kind}: F1 by relative position (NLR order)", fontsize=9)
        ax.set_xlabel("relative position")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("F1 (%)")
    axes[1].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
