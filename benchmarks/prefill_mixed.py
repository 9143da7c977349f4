"""Prefill of a mixed-length batch: padded to the longest row (the old path) vs row by row (engine.prefill_forward).

The batch is the first 16 training prompts of the draft corpus (held-out Spec-Bench questions, round-robin over
categories, so each batch mixes long articles with one-line questions), chat template applied.
Run: HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 python benchmarks/prefill_mixed.py [--json benchmarks/results/prefill_mixed.json]
"""

import argparse
import json
import time

import torch

from lmlab.core.engine import encode_chat, prefill_forward
from lmlab.core.loader import load_model
from lmlab.specdec.train import training_questions


def padded(m, prompts):
    T = max(map(len, prompts))
    ids = torch.tensor([p + [0] * (T - len(p)) for p in prompts])
    return m(ids, m.new_cache(len(prompts), T), num_tokens=[len(p) for p in prompts])


def best_of(fn, reps=3):
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--batch", type=int, default=16)
    a = ap.parse_args()
    lm = load_model(dtype="float32")
    m, tok = lm.model, lm.tokenizer
    prompts = [encode_chat(tok, [{"role": "user", "content": q}]) for q in training_questions(a.batch)]
    lens = [len(p) for p in prompts]
    with torch.inference_mode():
        base = best_of(lambda: padded(m, prompts))
        rows = best_of(lambda: prefill_forward(m, m.new_cache(len(prompts), max(lens)), prompts))
    res = {
        "batch": len(prompts),
        "tokens": sum(lens),
        "padded_tokens": len(prompts) * max(lens),
        "padded_s": round(base, 3),
        "row_by_row_s": round(rows, 3),
        "speedup": round(base / rows, 2),
    }
    print(
        f"| batch | real tokens | padded tokens | padded s | row-by-row s | speedup |\n|---|---|---|---|---|---|\n"
        f"| {res['batch']} | {res['tokens']} | {res['padded_tokens']} | {res['padded_s']} | {res['row_by_row_s']} | {res['speedup']}x |"
    )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
