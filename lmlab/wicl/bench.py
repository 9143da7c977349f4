"""`lmlab wicl bench`: scoring C candidate weight vectors on Q queries.

shared: the demonstrations' K/V prefilled once (batch 1) and read in place by C x Q rows that hold only the query
tokens (what `Scorer` does in every search step); recompute: for each candidate, the whole prompt + query run again
(batched over the queries), the weights applied to the query positions - what a per-candidate implementation without
cache reuse does. Both give the same numbers (checked, max |diff| reported); the ratio of wall times is the speed-up.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lmlab.core.paths import atomic_write_text
from lmlab.core.report import markdown_table

from .attention import RowState, WeightPlan
from .experiment import load_lm
from .icl import Scorer, build_prompt
from .search import random_weights
from .tasks import load_task, sample_demos


def _recompute(sc: Scorer, queries: list[list[int]], W: torch.Tensor) -> torch.Tensor:
    """[C*Q, labels] by running prompt + query from scratch for every candidate (one batch of Q rows each)."""
    lm, P = sc.lm, len(sc.prompt.ids)
    empty = lm.prefix([])
    lab = [x[0] for x in sc.labels]
    out = []
    for w in W:
        rows = [sc.prompt.ids + q for q in queries]
        st = RowState(WeightPlan(sc.prompt.spans, sc.plan.placement), w.view(1, -1).expand(len(rows), -1))
        lg = lm.logits_at(empty, rows, [[len(r) - 1] for r in rows], st, query_start=P, columns=lab)
        out.append(torch.cat(lg).log_softmax(-1))
    return torch.cat(out)


def bench_one(lm: Any, task: str, shots: int, n_queries: int, n_cands: int, placement: str = "skm") -> dict[str, Any]:
    t = load_task(task)
    demos = [t.train[i] for i in sample_demos(t.train, shots, 0)]
    prompt = build_prompt(lm.tokenizer, t.template, demos)
    W = random_weights(shots, n_cands, 0)
    items = t.test[:n_queries]
    t0 = time.perf_counter()
    sc = Scorer(lm, t.template, prompt, placement, batch_rows=64)
    qs = [sc.query_ids(e) for e in items]
    shared = sc.label_logprobs(qs * n_cands, W.repeat_interleave(n_queries, 0))
    t_shared = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = _recompute(sc, qs, W)
    t_re = time.perf_counter() - t0
    q_tok = sum(len(q) for q in qs) / len(qs)
    return {
        "task": task,
        "shots": shots,
        "placement": placement,
        "prompt_tokens": len(prompt.ids),
        "query_tokens_mean": round(q_tok, 1),
        "queries": n_queries,
        "candidates": n_cands,
        "shared_s": round(t_shared, 3),
        "recompute_s": round(t_re, 3),
        "speedup": round(t_re / t_shared, 2),
        "token_ratio": round(
            (len(prompt.ids) + q_tok) * n_cands * n_queries / (q_tok * n_cands * n_queries + len(prompt.ids)), 2
        ),
        "max_abs_diff": float((shared - ref).abs().max()),
    }


def run_bench(
    json_path: Path,
    model: str,
    task: str,
    shots: list[int],
    queries: int,
    cands: int,
    echo: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    torch.set_grad_enabled(False)
    lm = load_lm(model)
    bench_one(lm, task, 2, 1, 1)  # warm-up: packs the weights for lmlab's kernels, so neither side pays for it
    rows = [bench_one(lm, task, k, queries, cands) for k in shots]
    meta = {
        "model": model,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "loadavg": os.getloadavg()[0],
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json_path, json.dumps({"meta": meta, "rows": rows}, indent=2))
    echo(markdown_table(rows))
    echo(json.dumps(meta))
    return rows
