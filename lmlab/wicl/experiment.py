"""The paper's protocol (arXiv:2310.08309, Sec. 4): per seed, sample k demonstrations, measure uniform ICL, search the
weights with an indicator (MSP by default), measure WICL with them; and the indicator study (Sec. 5.1): over random
weight vectors, how well each indicator ranks accuracy. Results are JSON lines, one per (task, seed), appended as
each finishes, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmlab.core.errors import LmlabError

from .attention import PLACEMENTS
from .icl import LM, Scorer, build_prompt
from .search import SPACE, beam_search, exhaustive_search, random_weights
from .tasks import Task, sample_demos, sample_eval, validation_pool

INDICATORS = ("msp", "msp_last", "validate")


@dataclass
class RunConfig:
    shots: int = 8
    seeds: list[int] = field(default_factory=lambda: list(range(10)))
    placements: list[str] = field(default_factory=lambda: ["skm"])
    indicator: str = "msp"  # msp (paper: span masked) | msp_last (released code: last token) | validate
    beam: int = 1
    exhaustive: bool = False
    space: tuple[float, ...] = SPACE
    eval_n: int | None = 300
    val_n: int = 32  # held-out balanced training items for the validation indicator (kept out of the demo pool)
    balanced: bool = False
    layers: list[int] | None = None
    heads: list[int] | None = None
    label_mode: str = "sum"
    batch_rows: int = 64
    corr_vectors: int = 0  # > 0: also the indicator study with this many random weight vectors per seed
    search: bool = True  # False: only the indicator study (no ICL/WICL comparison)

    def __post_init__(self):
        if self.indicator not in INDICATORS:
            raise LmlabError(f"unknown indicator {self.indicator!r}", hint=f"use one of {', '.join(INDICATORS)}")
        if self.shots < 1:
            raise LmlabError("--shots must be >= 1")
        for p in self.placements:
            if p not in PLACEMENTS:
                raise LmlabError(f"unknown placement {p!r}", hint=f"use one of {', '.join(PLACEMENTS)}")


def load_lm(model: str, backend: str = "native", device: str = "cpu", dtype: str = "float32") -> LM:
    """native: lmlab's engine (aliases, checkpoint dirs, .gguf, hub ids of Llama-family models); transformers: any
    causal LM AutoModelForCausalLM can load (GPT-2, OPT, Qwen, ...), through the registered "wicl" attention."""
    from .attention import HFLM, NativeLM

    if backend == "native":
        from lmlab.core.loader import load_model

        lm = load_model(model, dtype=dtype, device=device)
        return NativeLM(lm.model, lm.tokenizer)
    if backend == "transformers":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from lmlab.core.loader import resolve

        try:
            path = str(resolve(model))
        except LmlabError:
            path = model
        tok = AutoTokenizer.from_pretrained(path)
        m = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(device)
        return HFLM(m, tok)
    raise LmlabError(f"unknown backend {backend!r}", hint="use native or transformers")


def _indicator(sc: Scorer, cfg: RunConfig, val: list) -> Callable[[torch.Tensor], torch.Tensor]:
    if cfg.indicator == "msp":
        return lambda W: sc.msp(W, "span")
    if cfg.indicator == "msp_last":
        return lambda W: sc.msp(W, "last_token")
    return lambda W: -sc.accuracy(val, W)


def spearman(x: list[float] | np.ndarray, y: list[float] | np.ndarray) -> float | None:
    """Spearman's rho (None where one side is constant)."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, float), np.asarray(y, float)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(spearmanr(x, y).statistic)


def run_seed(lm: LM, task: Task, cfg: RunConfig, seed: int, eval_items: list, val_idx: list[int]) -> dict[str, Any]:
    """One seed: demonstrations, uniform ICL, then for each placement the searched weights and their accuracy."""
    t0 = time.perf_counter()
    val = [task.train[i] for i in val_idx]
    demo_idx = sample_demos(task.train, cfg.shots, seed, cfg.balanced, exclude=set(val_idx))
    prompt = build_prompt(lm.tokenizer, task.template, [task.train[i] for i in demo_idx])
    base = Scorer(lm, task.template, prompt, "skm", cfg.layers, cfg.heads, cfg.label_mode, cfg.batch_rows)
    rec: dict[str, Any] = {
        "task": task.name,
        "seed": seed,
        "shots": cfg.shots,
        "demos": demo_idx,
        "prompt_tokens": len(prompt.ids),
        "eval_n": len(eval_items),
        "indicator": cfg.indicator,
        "beam": cfg.beam,
    }
    if cfg.search:
        rec["icl_acc"] = float(base.accuracy(eval_items)[0])
    for placement in cfg.placements if cfg.search else []:
        t1 = time.perf_counter()
        sc = Scorer(
            lm,
            task.template,
            prompt,
            placement,
            cfg.layers,
            cfg.heads,
            cfg.label_mode,
            cfg.batch_rows,
            cache=base.cache,
        )
        score = _indicator(sc, cfg, val)
        search = exhaustive_search if cfg.exhaustive else beam_search
        res = search(score, sc.k, cfg.space) if cfg.exhaustive else search(score, sc.k, cfg.space, cfg.beam)
        w = torch.tensor([res.weights])
        rec[placement] = {
            "weights": res.weights,
            "score": res.score,
            "evaluations": res.evaluations,
            "acc": float(sc.accuracy(eval_items, w)[0]),
            "seconds": round(time.perf_counter() - t1, 2),
        }
    if cfg.corr_vectors > 0:
        rec["indicator_study"] = indicator_study(base, cfg, seed, eval_items, val)
    rec["seconds"] = round(time.perf_counter() - t0, 2)
    return rec


def indicator_study(sc: Scorer, cfg: RunConfig, seed: int, eval_items: list, val: list) -> dict[str, Any]:
    """Random weight vectors (plus uniform): accuracy and each indicator; Spearman of each with accuracy (signed
    so that positive = the indicator ranks accuracy correctly)."""
    W = torch.cat([torch.ones(1, sc.k), random_weights(sc.k, cfg.corr_vectors, 1000 + seed, cfg.space)])
    out: dict[str, Any] = {"n_vectors": W.shape[0]}
    for placement in cfg.placements:
        s = Scorer(
            sc.lm, sc.template, sc.prompt, placement, cfg.layers, cfg.heads, "sum", cfg.batch_rows, cache=sc.cache
        )
        acc = s.accuracy(eval_items, W).tolist()
        ind = {"msp_span": (-s.msp(W, "span")).tolist(), "msp_last_token": (-s.msp(W, "last_token")).tolist()}
        if val:
            ind["validate"] = s.accuracy(val, W).tolist()
        out[placement] = {
            "acc": acc,
            **{k: v for k, v in ind.items()},
            "rho": {k: spearman(v, acc) for k, v in ind.items()},
        }
    return out


def done_keys(path: Path) -> set[tuple[str, int]]:
    if not path.exists():
        return set()
    keys = set()
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            keys.add((r["task"], r["seed"]))
    return keys


def run_task(
    lm: LM | None,
    task: Task,
    cfg: RunConfig,
    out: Path | None = None,
    log: Callable[[str], None] | None = None,
    compute: bool = True,
) -> list[dict[str, Any]]:
    """All seeds of one task; with `out`, rows are appended (and seeds already there are skipped: resumable).
    compute=False: only the seeds already in `out` (a report of what an interrupted run finished)."""
    eval_items = sample_eval(task.test, cfg.eval_n)
    val_idx = validation_pool(task.train, cfg.val_n) if cfg.val_n else []
    have = done_keys(out) if out else set()
    rows = []
    if out and have:
        rows = [json.loads(x) for x in out.read_text().splitlines() if x.strip()]
        rows = [r for r in rows if r["task"] == task.name]
    rows = [r for r in rows if r["seed"] in cfg.seeds]
    for seed in cfg.seeds:
        if (task.name, seed) in have or not compute:
            continue
        rec = run_seed(lm, task, cfg, seed, eval_items, val_idx)
        rec["config"] = {k: v for k, v in asdict(cfg).items() if k != "seeds"}
        rows.append(rec)
        if out:
            out.parent.mkdir(parents=True, exist_ok=True)
            with open(out, "a") as f:
                f.write(json.dumps(rec) + "\n")
        if log and cfg.search:
            msg = " ".join(f"{p}={rec[p]['acc']:.3f}" for p in cfg.placements)
            log(f"{task.name} seed {seed}: icl={rec['icl_acc']:.3f} {msg} ({rec['seconds']:.0f}s)")
        elif log:
            rho = {p: rec["indicator_study"][p]["rho"] for p in cfg.placements}
            log(f"{task.name} seed {seed}: indicator study rho={rho} ({rec['seconds']:.0f}s)")
    return rows


def paired_summary(rows: list[dict[str, Any]], placement: str) -> dict[str, Any]:
    """Mean ± std of ICL and WICL accuracy over seeds, the paired difference with a 95% t-interval, the paired
    t-test and Wilcoxon signed-rank p-values."""
    from scipy import stats

    icl = np.array([r["icl_acc"] for r in rows if placement in r])
    wicl = np.array([r[placement]["acc"] for r in rows if placement in r])
    n = len(icl)
    d = wicl - icl
    out: dict[str, Any] = {
        "n_seeds": n,
        "icl_mean": float(icl.mean()),
        "icl_std": float(icl.std(ddof=1)) if n > 1 else 0.0,
    }
    out.update(
        wicl_mean=float(wicl.mean()), wicl_std=float(wicl.std(ddof=1)) if n > 1 else 0.0, diff_mean=float(d.mean())
    )
    if n > 1 and d.std() > 0:
        half = float(stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / np.sqrt(n))
        out.update(
            diff_ci=[float(d.mean() - half), float(d.mean() + half)], t_p=float(stats.ttest_rel(wicl, icl).pvalue)
        )
        nz = d[d != 0]
        out["wilcoxon_p"] = float(stats.wilcoxon(nz).pvalue) if len(nz) >= 1 else None
    else:
        out.update(diff_ci=[float(d.mean()), float(d.mean())], t_p=None, wilcoxon_p=None)
    out["wins_ties_losses"] = [int((d > 0).sum()), int((d == 0).sum()), int((d < 0).sum())]
    return out
