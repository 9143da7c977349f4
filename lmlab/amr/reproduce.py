"""`lmlab amr reproduce`: default-order vs reverse-order vs RGL parsers on The Little Prince (and Bio AMR, out of
domain): both Smatch scores with bootstrap CIs, position-bucket F1 curves, ablations (no KL, fixed r).

Trained parsers are cached under `lmlab`'s cache dir (`amr/<settings hash>`), so an interrupted run resumes at the
first parser it has not trained yet. Backbone: a from-scratch BART (HF `BartForConditionalGeneration`, so the same
code fine-tunes AMRBART on a GPU); no pretrained BART exists offline, and on this 2-core CPU a 1M-parameter model
trained for 800 steps is what a minutes-scale run affords. Every parser must beat a constant-graph control (the
best single training graph on dev); comparisons are paired bootstraps over graphs with the seeds pooled.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from lmlab.core.paths import atomic_write_text, cache_dir, shared_data
from lmlab.core.report import Section, Verdict, markdown_table

from .graphs import AmrGraph, one_line, read_amr
from .linearize import delinearize, linearize
from .metrics import BINS, evaluate, paired_bootstrap, plot_positions, smatch_snowblink
from .parser import AmrTokenizer, Parser, TrainSettings, WordTokenizer, settings_key, train_plain, train_rgl

CONTROL = "constant graph (control)"
NLR_CONT = "default (NLR) continued"


@dataclass
class ReproConfig:
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    max_target_tokens: int | None = None  # train only on graphs this short (None: all)
    train_limit: int | None = None
    test_limit: int | None = None
    bio_limit: int | None = None
    beam: int = 5
    plain: TrainSettings = field(default_factory=TrainSettings)
    rgl_steps: int | None = None
    ablations: bool = True
    ablation_seeds: int = 1
    tokenizer: str = "bpe"  # "bpe" (HF byte-level BPE + AMR tokens, AMRBART-compatible) or "word" (shared vocab)
    control_candidates: int = 30
    rgl_init: str = "scratch"  # "nlr": RGL starts from the trained NLR parser (then NLR_CONT is its control)
    rgl_warmup: int = 20
    rgl_lr: float | None = None  # None: the plain parsers' LR (a warm start continues at a lower one)


def quick_config() -> ReproConfig:
    """Minutes-scale (settings chosen on DEV, benchmarks/RESULTS.md): two seeds, the word vocabulary shared by
    sentences and graphs, graphs of <= 48 target tokens, greedy decoding, a Bio subset, no ablations. RGL and the
    "NLR continued" control both start from the seed's trained NLR parser and train the same number of steps."""
    st = TrainSettings(
        steps=800,
        warmup=50,
        d_model=128,
        layers=2,
        heads=4,
        ffn=256,
        batch_size=16,
        gate_dim=64,
        lr=1e-3,
        max_target=160,
    )
    return ReproConfig(
        seeds=[0, 1],
        max_target_tokens=48,
        bio_limit=40,
        beam=1,
        plain=st,
        rgl_steps=300,
        ablations=False,
        tokenizer="word",
        rgl_init="nlr",
        rgl_lr=5e-4,
    )


def full_config() -> ReproConfig:
    st = TrainSettings(
        steps=3000,
        warmup=200,
        d_model=128,
        layers=3,
        heads=4,
        ffn=512,
        batch_size=16,
        gate_dim=256,
        lr=1e-3,
        vocab_size=1500,
        max_target=512,
    )
    return ReproConfig(seeds=[0, 1, 2], beam=5, plain=st, rgl_steps=3000, ablations=True, ablation_seeds=1)


def make_tokenizer(cfg: ReproConfig, train: list[AmrGraph]):
    """(tokenizer, cache key) of a reproduction config: the word vocabulary is rebuilt (milliseconds), the BPE
    tokenizer cached."""
    if cfg.tokenizer == "word":
        return WordTokenizer.train(train), f"word-{len(train)}"
    tok_key = settings_key(cfg.plain, f"tok-{len(train)}")
    tok_dir = cache_dir("amr", "tokenizers", tok_key)
    if (tok_dir / "tokenizer.json").is_file():
        return AmrTokenizer.load(tok_dir), tok_key
    tok = AmrTokenizer.train(train, cfg.plain.vocab_size)
    tok.save(tok_dir)
    return tok, tok_key


def constant_graph(train: list[AmrGraph], dev: list[AmrGraph], k: int = 30, seed: int = 0) -> AmrGraph:
    """The control every parser must beat: one training graph output for every sentence, the best on DEV of `k`
    candidates (training graphs of 2-8 concepts ranked by how common their concepts are in training graphs).
    A parser that ignores its input (a degenerate template) scores at or below this."""
    from collections import Counter

    from .metrics import items

    df: Counter = Counter()
    concepts = [[c for _, c in items(g.tree).instances] for g in train]
    for cs in concepts:
        df.update(set(cs))
    pool = [(sum(df[c] for c in cs) / len(cs), i) for i, cs in enumerate(concepts) if 2 <= len(cs) <= 8]
    cands = [train[i] for _, i in sorted(pool, reverse=True)[:k]]
    gold = [one_line(g) for g in dev]
    best = max(cands, key=lambda c: smatch_snowblink([one_line(c)] * len(dev), gold, seed)[0].f1)
    return best


def _cached(key: str, make) -> Parser:
    path = cache_dir("amr", "parsers", key)
    if (path / "config.json").is_file():
        return Parser.load(path)
    parser = make()
    tmp = path.with_name(path.name + ".tmp")
    parser.save(tmp)
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return parser


def _decode(tokens: list[list[str]], like: list[AmrGraph]) -> list[AmrGraph]:
    out = []
    for toks, g in zip(tokens, like):
        d = delinearize(toks)
        out.append(AmrGraph(id=g.id, metadata={"id": g.id, "snt": g.sentence}, tree=d.tree, status=d.repairs))
    return out


def run_experiment(cfg: ReproConfig, out_dir: Path, log=print) -> dict:
    """Train and evaluate every system for every seed; returns (and writes) the results JSON."""
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start, c_start = time.perf_counter(), time.process_time()
    train = read_amr(shared_data("amr_little_prince", "lpp-v3.0-train.txt"))
    test = read_amr(shared_data("amr_little_prince", "lpp-v3.0-test.txt"))[: cfg.test_limit]
    bio = read_amr(shared_data("amr_bio", "amr-release-test-bio.txt"))[: cfg.bio_limit]
    dev = read_amr(shared_data("amr_little_prince", "lpp-v3.0-dev.txt"))
    tok, tok_key = make_tokenizer(cfg, train)
    control = constant_graph(train, dev, cfg.control_candidates)
    if cfg.max_target_tokens:
        train = [g for g in train if len(tok.target(linearize(g.tree))) <= cfg.max_target_tokens]
    train = train[: cfg.train_limit]
    log(f"amr: {len(train)} training graphs, {len(test)} test, {len(bio)} bio; seeds {cfg.seeds}")
    evalsets = {"test": test, "bio": bio}
    results: dict = {"config": _cfg_json(cfg), "n_train": len(train), "runs": {}, "timing": {}}

    def score(name: str, seed: int, graphs: dict[str, list[AmrGraph]], seconds: dict) -> None:
        for split, pred in graphs.items():
            e = evaluate(pred, evalsets[split], seed=seed)
            repaired = sum(bool(g.status) for g in pred)
            distinct = len({one_line(g) for g in pred})
            row = {
                **e.to_json(),
                "repaired": repaired,
                "distinct": distinct,
                **{f"seconds_{k}": v for k, v in seconds.items()},
            }
            results["runs"].setdefault(name, {}).setdefault(split, {})[str(seed)] = row
            log(
                f"  {name} seed {seed} {split}: smatch {100 * e.snowblink.f1:.1f} ilp {100 * e.ilp.f1:.1f}"
                f" (repaired {repaired}/{len(pred)}, {distinct} distinct graphs)"
            )
        atomic_write_text(out_dir / "results.json", json.dumps(results, indent=1, default=float))

    sents = {k: [g.sentence for g in v] for k, v in evalsets.items()}
    results["control"] = {"graph": one_line(control), "id": control.id}
    score(CONTROL, 0, {k: [control] * len(v) for k, v in evalsets.items()}, {})
    for seed in cfg.seeds:
        st = replace(cfg.plain, seed=seed, history=[])
        key = settings_key(st, f"{len(train)}-{tok_key}")
        t0 = time.perf_counter()
        nlr = _cached(f"nlr-{key}", lambda st=st: train_plain(train, "nlr", st, tok=tok))
        nrl = _cached(f"nrl-{key}", lambda st=st: train_plain(train, "nrl", replace(st, history=[]), tok=tok))
        t_train = time.perf_counter() - t0
        log(f"  seed {seed}: NLR + NRL parsers ready ({t_train:.0f} s)")
        # pass 1: silver reversed graphs for train and every evaluation set
        t0 = time.perf_counter()
        silver_path = cache_dir("amr", "silver") / f"{key}-b{cfg.beam}.json"
        if silver_path.is_file():
            silver = json.loads(silver_path.read_text())
        else:
            silver = {"train": nrl.parse_tokens([g.sentence for g in train], beam=1)}
            silver.update({k: nrl.parse_tokens(v, beam=cfg.beam) for k, v in sents.items()})
            atomic_write_text(silver_path, json.dumps(silver))
        t_silver = time.perf_counter() - t0
        for name, parser in (("default (NLR)", nlr), ("reverse (NRL)", nrl)):
            t0 = time.perf_counter()
            toks = silver if parser is nrl else {k: nlr.parse_tokens(v, beam=cfg.beam) for k, v in sents.items()}
            secs = time.perf_counter() - t0 if parser is nlr else t_silver
            score(name, seed, {k: _decode(toks[k], evalsets[k]) for k in evalsets}, {"decode": secs})
        warm = nlr if cfg.rgl_init == "nlr" else None
        if warm is not None:
            # the control for a warm-started RGL: the same NLR parser trained on for the same number of steps
            cst = replace(
                st, steps=cfg.rgl_steps or st.steps, warmup=cfg.rgl_warmup, lr=cfg.rgl_lr or st.lr, history=[]
            )
            t0 = time.perf_counter()
            cont = _cached(
                f"nlrc-{settings_key(cst, key)}",
                lambda cst=cst, nlr=nlr: train_plain(train, "nlr", cst, tok=tok, init=nlr),
            )
            t_cont = time.perf_counter() - t0
            t0 = time.perf_counter()
            toks = {k: cont.parse_tokens(v, beam=cfg.beam) for k, v in sents.items()}
            score(
                NLR_CONT,
                seed,
                {k: _decode(toks[k], evalsets[k]) for k in evalsets},
                {"train": t_cont, "decode": time.perf_counter() - t0},
            )
        variants = [("RGL", {})]
        if cfg.ablations and seed in cfg.seeds[: cfg.ablation_seeds]:
            variants += [("RGL no KL", {"kl": False}), ("RGL fixed r=0.5", {"fixed_r": 0.5})]
        for name, change in variants:
            rst = replace(st, steps=cfg.rgl_steps or st.steps, history=[], **change)
            if warm is not None:
                rst = replace(rst, warmup=cfg.rgl_warmup, lr=cfg.rgl_lr or st.lr)
            rkey = settings_key(rst, f"rgl-{cfg.rgl_init}-{key}")
            t0 = time.perf_counter()
            rgl = _cached(
                f"rgl-{rkey}",
                lambda rst=rst, silver=silver, nrl=nrl, warm=warm: train_rgl(
                    train, silver["train"], nrl, rst, init=warm
                ),
            )
            t_rgl = time.perf_counter() - t0
            t0 = time.perf_counter()
            toks = {k: rgl.parse_tokens(v, beam=cfg.beam, silver=silver[k]) for k, v in sents.items()}
            score(
                name,
                seed,
                {k: _decode(toks[k], evalsets[k]) for k in evalsets},
                {"train": t_rgl, "decode": time.perf_counter() - t0},
            )
        results["timing"][str(seed)] = {"plain_train": t_train, "silver": t_silver}
    results["seconds"] = time.perf_counter() - t_start
    results["cpu_seconds"] = time.process_time() - c_start
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=1, default=float))
    return results


def _cfg_json(cfg: ReproConfig) -> dict:
    d = asdict(cfg)
    d["plain"].pop("history", None)
    return d


# ---------------- summary, verdicts ----------------


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def summarize(results: dict) -> tuple[list[dict], dict[str, dict[str, list]]]:
    """Rows per system x split (mean over seeds, CI of the first seed, seed spread) and mean position curves."""
    rows, curves = [], {}
    for name, splits in results["runs"].items():
        for split, by_seed in splits.items():
            runs = list(by_seed.values())
            snow = [r["smatch_snowblink"]["F1"] for r in runs]
            ilp = [r["smatch_ilp"]["F1"] for r in runs]
            rows.append(
                {
                    "system": name,
                    "split": split,
                    "seeds": len(runs),
                    "Smatch (snowblink)": _mean(snow),
                    "snowblink 95% CI (seed 0)": runs[0]["smatch_snowblink"]["F1 95% CI"],
                    "Smatch++ (ILP)": _mean(ilp),
                    "ILP 95% CI (seed 0)": runs[0]["smatch_ilp"]["F1 95% CI"],
                    "ILP seed range": f"{min(ilp):.1f}-{max(ilp):.1f}",
                    "SRL": _mean([r["subscores"]["SRL"]["F1"] for r in runs]),
                    "Reentr.": _mean([r["subscores"]["Reentrancies"]["F1"] for r in runs]),
                    "Concepts": _mean([r["subscores"]["Concepts"]["F1"] for r in runs]),
                    "repaired": sum(r["repaired"] for r in runs),
                    "distinct graphs": _mean([r.get("distinct") for r in runs]),
                }
            )
            if split == "test":
                curves[name] = {
                    k: [_mean([r["position_f1"][k][b] for r in runs]) for b in range(BINS)] for k in ("nodes", "edges")
                }
    return rows, curves


PAIRS = [
    (CONTROL, "default (NLR)"),
    (CONTROL, "reverse (NRL)"),
    (CONTROL, "RGL"),
    ("default (NLR)", "reverse (NRL)"),
    ("default (NLR)", "RGL"),
    (NLR_CONT, "RGL"),
    ("RGL", "RGL no KL"),
    ("RGL", "RGL fixed r=0.5"),
]


def comparisons(results: dict) -> list[dict]:
    """Paired Smatch++ (ILP) differences b - a per split: bootstrap over graphs, pooled over the seeds both
    systems share (the control has one 'seed' and is paired with every seed of the other), and the per-seed
    differences (the seed spread)."""
    out = []
    runs = results["runs"]
    for a, b in PAIRS:
        for split in ("test", "bio"):
            ra, rb = runs.get(a, {}).get(split, {}), runs.get(b, {}).get(split, {})
            seeds = [k for k in rb if k in ra or a == CONTROL]
            if not seeds or not all("ilp_counts" in rb[k] for k in seeds) or not ra:
                continue
            ca = [ra[k if a != CONTROL else next(iter(ra))]["ilp_counts"] for k in seeds]
            cb = [rb[k]["ilp_counts"] for k in seeds]
            pb = paired_bootstrap(np.asarray(ca), np.asarray(cb))
            per_seed = [paired_bootstrap(np.asarray(x), np.asarray(y), n=1)["diff"] for x, y in zip(ca, cb)]
            out.append({"a": a, "b": b, "split": split, "seeds": len(seeds), **pb, "per_seed": per_seed})
    return out


def _decided(c: dict, min_seeds: int = 2) -> bool | None:
    """True/False when the paired CI excludes 0 and every seed agrees in sign (>= min_seeds); else None."""
    if c["seeds"] < min_seeds:
        return None
    if c["lo"] > 0 and all(d > 0 for d in c["per_seed"]):
        return True
    if c["hi"] < 0 and all(d < 0 for d in c["per_seed"]):
        return False
    return None


def _ci(row: dict, key: str) -> tuple[float, float]:
    lo, hi = row[key].strip("[]").split(",")
    return float(lo), float(hi)


def _paired_text(c: dict) -> str:
    per = ", ".join(f"{d:+.1f}" for d in c["per_seed"])
    return f"Smatch++ {c['diff']:+.1f} [{c['lo']:+.1f}, {c['hi']:+.1f}] (paired over graphs, {c['seeds']} seeds: {per})"


def verdicts(rows: list[dict], curves: dict, n_seeds: int, comps: list[dict] | None = None) -> list[Verdict]:
    out = []
    by = {(r["system"], r["split"]): r for r in rows}
    seeds = f"{n_seeds} seed{'s' if n_seeds > 1 else ''}"
    pair = {(c["a"], c["b"], c["split"]): c for c in comps or []}
    for split in ("test", "bio"):
        ctl = [
            pair[(CONTROL, s, split)] for s in ("default (NLR)", "reverse (NRL)", "RGL") if (CONTROL, s, split) in pair
        ]
        if ctl:
            dec = [_decided(c) for c in ctl]
            out.append(
                Verdict(
                    f"Control: every parser beats the best constant graph (chosen on dev), {split}",
                    "; ".join(f"{c['b']} {_paired_text(c)}" for c in ctl),
                    True if all(d is True for d in dec) else (False if any(d is False for d in dec) else None),
                    seeds=ctl[0]["seeds"],
                    interval=(min(c["lo"] for c in ctl), max(c["hi"] for c in ctl)),
                )
            )
    for split in ("test", "bio"):
        a, b = by.get(("default (NLR)", split)), by.get(("RGL", split))
        if not a or not b:
            continue
        cc = pair.get((NLR_CONT, "RGL", split))
        if cc is not None:
            out.append(
                Verdict(
                    f"RGL beats its own starting NLR parser trained on for as many steps (the fair control), {split}",
                    f"RGL - NLR continued: {_paired_text(cc)}" + ("" if _decided(cc) is not None else "; inconclusive"),
                    _decided(cc),
                    seeds=cc["seeds"],
                    interval=(cc["lo"], cc["hi"]),
                    status=None if _decided(cc) is not None or cc["seeds"] < 2 else "inconclusive",
                )
            )
        c = pair.get(("default (NLR)", "RGL", split))
        if c is not None:
            out.append(
                Verdict(
                    f"RGL beats the default-order parser in Smatch (paper: +0.5-0.8 on AMR 3.0/2.0), {split}",
                    f"RGL - NLR: {_paired_text(c)}; means ILP {b['Smatch++ (ILP)']:.1f} vs {a['Smatch++ (ILP)']:.1f}, "
                    f"snowblink {b['Smatch (snowblink)']:.1f} vs {a['Smatch (snowblink)']:.1f}"
                    + ("" if _decided(c) is not None else "; inconclusive"),
                    _decided(c),
                    seeds=c["seeds"],
                    interval=(c["lo"], c["hi"]),
                    status=None if _decided(c) is not None or c["seeds"] < 2 else "inconclusive",
                )
            )
            continue
        la, ha = _ci(a, "ILP 95% CI (seed 0)")
        lb, hb = _ci(b, "ILP 95% CI (seed 0)")
        sep = lb > ha or hb < la
        holds = (b["Smatch++ (ILP)"] > a["Smatch++ (ILP)"]) if (sep and n_seeds >= 3) else None
        out.append(
            Verdict(
                f"RGL beats the default-order parser in Smatch (paper: +0.5-0.8 on AMR 3.0/2.0), {split}",
                f"ILP {b['Smatch++ (ILP)']:.1f} [{lb:.1f}, {hb:.1f}] vs {a['Smatch++ (ILP)']:.1f} [{la:.1f}, {ha:.1f}]; "
                f"snowblink {b['Smatch (snowblink)']:.1f} vs {a['Smatch (snowblink)']:.1f}; {seeds}; "
                + ("CIs separate" if sep else "CIs overlap: inconclusive"),
                holds,
            )
        )

    def halves(c):
        """Mean of the first and second half of the defined bins (NaN where there are none)."""
        v = [x for x in c if x is not None]
        h = len(v) // 2
        e, l = _mean(v[:h]), _mean(v[h:])
        return (float("nan") if e is None else e), (float("nan") if l is None else l)

    if "default (NLR)" in curves:
        e, l = halves(curves["default (NLR)"]["nodes"])
        out.append(
            Verdict(
                "Structure loss: default-order node F1 falls with position in the linearization",
                f"NLR node F1 first half of bins {100 * e:.1f}, second half {100 * l:.1f} (test, {seeds}; no CI per bin)",
                (l < e) if n_seeds >= 3 and e == e and l == l else None,
            )
        )
    if "reverse (NRL)" in curves and "default (NLR)" in curves:
        e, l = halves(curves["reverse (NRL)"]["nodes"])
        out.append(
            Verdict(
                "The reverse parser mirrors it (better late in the default order)",
                f"NRL node F1 (positions in the gold default order) first half {100 * e:.1f}, second half {100 * l:.1f}"
                f" ({seeds})",
                (l > e) if n_seeds >= 3 and e == e and l == l else None,
            )
        )
    if "RGL" in curves and "default (NLR)" in curves:
        _, l_r = halves(curves["RGL"]["nodes"])
        _, l_d = halves(curves["default (NLR)"]["nodes"])
        out.append(
            Verdict(
                "RGL flattens the tail (late-position F1 above the default parser's)",
                f"second-half node F1: RGL {100 * l_r:.1f} vs NLR {100 * l_d:.1f} ({seeds})",
                (l_r > l_d) if n_seeds >= 3 and l_r == l_r and l_d == l_d else None,
            )
        )
    return out


def render(results: dict, out_dir: Path, quick: bool) -> Section:
    rows, curves = summarize(results)
    comps = comparisons(results)
    n_seeds = len(results["config"]["seeds"])
    fig = out_dir / "amr_position_f1.png"
    if curves:
        plot_positions(curves, fig, title=f"Little Prince test, mean of {n_seeds} seed(s)")
    cols = [
        "system",
        "split",
        "seeds",
        "Smatch (snowblink)",
        "snowblink 95% CI (seed 0)",
        "Smatch++ (ILP)",
        "ILP 95% CI (seed 0)",
        "ILP seed range",
        "SRL",
        "Reentr.",
        "Concepts",
        "repaired",
        "distinct graphs",
    ]
    recall_rows = []
    for name, splits in results["runs"].items():
        runs = list(splits.get("test", {}).values())
        if runs and "position_recall" in runs[0]:
            for k in ("nodes", "edges"):
                vals = [_mean([r["position_recall"][k][b] for r in runs]) for b in range(BINS)]
                recall_rows.append(
                    {"system": name, "kind": k, **{f"b{b}": None if v is None else 100 * v for b, v in enumerate(vals)}}
                )
    curve_rows = [
        {"system": n, "kind": k, **{f"b{b}": (None if v[b] is None else 100 * v[b]) for b in range(BINS)}}
        for n, c in curves.items()
        for k, v in c.items()
    ]
    c = results["config"]
    md = (
        f"Little Prince v3.0: {results['n_train']} training graphs"
        + (f" (only graphs of <= {c['max_target_tokens']} target tokens)" if c["max_target_tokens"] else "")
        + f"; test {c['test_limit'] or 143}, Bio AMR test {c['bio_limit'] or 500} (out of domain). "
        f"Backbone: from-scratch BART d={c['plain']['d_model']}, {c['plain']['layers']}+{c['plain']['layers']} "
        f"layers, {c['plain']['steps']} steps (RGL {c['rgl_steps']}), beam {c['beam']}, seeds {c['seeds']}, "
        f"{c.get('tokenizer', 'bpe')} vocabulary. "
        + (
            f"Control: the constant graph `{results['control']['graph']}` ({results['control']['id']}, the best of "
            f"{c.get('control_candidates', 30)} training graphs on DEV) output for every sentence. "
            if "control" in results
            else ""
        )
        + "Smatch (snowblink 1.0.4, seeded) is the paper-comparable scorer; Smatch++ (smatchpp ILP) the optimal one; "
        "CIs are 95% bootstrap over graphs.\n\n"
        + markdown_table(rows, cols, floatfmt=".1f")
        + "\n**Paired differences (Smatch++ ILP, b - a, points; 95% bootstrap CI over graphs, seeds pooled)**\n\n"
        + markdown_table(
            [
                {
                    "b - a": f"{c['b']} - {c['a']}",
                    "split": c["split"],
                    "seeds": c["seeds"],
                    "diff": c["diff"],
                    "95% CI": f"[{c['lo']:+.1f}, {c['hi']:+.1f}]",
                    "per seed": ", ".join(f"{d:+.1f}" for d in c["per_seed"]),
                }
                for c in comps
            ],
            floatfmt="+.1f",
        )
        + "\n**F1 (%) by relative position (10 bins) on test**\n\n"
        + markdown_table(curve_rows, floatfmt=".0f")
        + "\n**Recall (%) by relative position of the gold item in the gold default linearization**\n\n"
        + markdown_table(recall_rows, floatfmt=".0f")
        + f"\n_run time {results.get('seconds', 0):.0f} s wall, {results.get('cpu_seconds', 0):.0f} s CPU"
        f"{'; quick mode' if quick else ''}._\n"
    )
    return Section(
        system="amr",
        title="AMR parsing with reverse graph linearization (arXiv:2310.08860)",
        markdown=md,
        figures=[fig] if curves else [],
        data=results,
        verdicts=verdicts(rows, curves, n_seeds, comps),
    )


def run(ctx) -> Section:
    t0 = time.perf_counter()
    cfg = quick_config() if ctx.quick else full_config()
    results = run_experiment(cfg, Path(ctx.out_dir))
    sec = render(results, Path(ctx.out_dir), ctx.quick)
    sec.seconds = time.perf_counter() - t0
    return sec
