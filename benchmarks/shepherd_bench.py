"""Annotation throughput: shared-prefix batched completion vs naive per-completion generation (same run).

Math-Shepherd labels each step prefix of each sampled solution by N completions. Three ways to draw them:
  naive        engine.generate on one prefix per call, once per completion (re-prefills the prefix N times)
  per-cut      one prefill per step prefix, fanned out to N rows (KVCache.reorder), N rows decode together
  shared       one prefill per *solution*, every cut of it fanned out at once (complete_cuts; what annotate uses)
All use the same policy, prefixes, SamplingParams and N. Figures are completions/s and generated tokens/s,
with ratios against naive measured in the same process.

    python benchmarks/shepherd_bench.py [--problems 16] [--n 8] [--json benchmarks/results/shepherd_annotate.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from lmlab.core.engine import SamplingParams, generate
from lmlab.core.report import markdown_table
from lmlab.shepherd.annotate import newline_token_ids, step_ends
from lmlab.shepherd.complete import complete_cuts
from lmlab.shepherd.policy import PolicyConfig, encode_prompt, load_policy, train_policy
from lmlab.shepherd.world import make_problems


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="policy checkpoint (default: the tiny shepherd policy)")
    ap.add_argument("--problems", type=int, default=16)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--naive-problems", type=int, default=4, help="naive is slow: time it on the first few problems")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/shepherd_annotate.json"))
    args = ap.parse_args()

    lm = load_policy(args.model or str(train_policy(PolicyConfig())))
    tok, model = lm.tokenizer, lm.model
    params = SamplingParams(max_new_tokens=96, temperature=1.0)
    nl = newline_token_ids(tok)
    seqs, cuts = [], []
    for i, p in enumerate(make_problems(args.problems, 0, split="bench")):
        prompt = encode_prompt(tok, p.question)
        sol = complete_cuts(model, tok, [prompt], [[len(prompt)]], 1, params, torch.Generator().manual_seed(i))[0][0][0]
        seqs.append(prompt + sol)
        cuts.append([len(prompt) + e for e in step_ends(sol, nl)[:-1]])

    def timed(fn, subset: int) -> dict:
        t = time.perf_counter()
        outs = fn(subset)
        dt = time.perf_counter() - t
        comps = [c for per_seq in outs for per_cut in per_seq for c in per_cut]
        return {"completions": len(comps), "tokens": sum(len(c) + 1 for c in comps), "seconds": dt}

    def naive(k: int):
        g = torch.Generator().manual_seed(1)
        out = []
        for s, cs in zip(seqs[:k], cuts[:k]):
            per = []
            for c in cs:
                per.append(
                    [
                        generate(
                            model,
                            tok,
                            [s[:c]],
                            SamplingParams(
                                max_new_tokens=96, temperature=1.0, seed=int(torch.randint(0, 2**31, (1,), generator=g))
                            ),
                        )[0].token_ids
                        for _ in range(args.n)
                    ]
                )
            out.append(per)
        return out

    def per_cut(k: int):
        g = torch.Generator().manual_seed(2)
        return [
            [complete_cuts(model, tok, [s[:c]], [[c]], args.n, params, g)[0][0] for c in cs]
            for s, cs in zip(seqs[:k], cuts[:k])
        ]

    def shared(k: int):
        return complete_cuts(model, tok, seqs[:k], cuts[:k], args.n, params, torch.Generator().manual_seed(3))

    shared(1)  # warm-up (allocator, kernels)
    rows = []
    for name, fn, k in [
        ("naive per-completion", naive, args.naive_problems),
        ("per-cut fan-out", per_cut, args.problems),
        ("shared prefix (annotate)", shared, args.problems),
    ]:
        r = timed(fn, k)
        rows.append(
            {
                "method": name,
                "problems": k,
                **r,
                "completions_per_s": r["completions"] / r["seconds"],
                "tokens_per_s": r["tokens"] / r["seconds"],
            }
        )
    for r in rows:
        r["speedup_vs_naive"] = r["completions_per_s"] / rows[0]["completions_per_s"]
        r["token_speedup_vs_naive"] = r["tokens_per_s"] / rows[0]["tokens_per_s"]
    print(
        markdown_table(
            rows,
            [
                "method",
                "problems",
                "completions",
                "tokens",
                "seconds",
                "completions_per_s",
                "tokens_per_s",
                "speedup_vs_naive",
                "token_speedup_vs_naive",
            ],
            ".2f",
        )
    )
    meta = {
        "model": str(lm.path),
        "n": args.n,
        "device": str(model.device),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
