"""Prefill of one long prompt: one block through torch's GEMM (the old path) vs kernel-sized pieces through lmlab's
kernels (`engine.chunked_forward`, what `prefill_forward` now does), on the benchmark's Spec-Bench prompts (the
first question of each category, chat template applied), fp32, best of 3 each.
Run: HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 python benchmarks/prefill_chunked.py [--json benchmarks/results/prefill_chunked.json]
"""

import argparse
import json

import torch
from prefill_mixed import best_of  # (beside this script)

from lmlab.core.engine import chunked_forward, encode_chat
from lmlab.core.loader import load_model
from lmlab.specdec.bench import load_questions


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    a = ap.parse_args()
    lm = load_model(dtype="float32")
    m, tok = lm.model, lm.tokenizer
    rows = []
    with torch.inference_mode():
        chunked_forward(m, torch.zeros(1, 8, dtype=torch.long), m.new_cache(1, 8))  # warm-up: pack the weights
        for q in load_questions(None, 1):
            ids = torch.tensor([encode_chat(tok, [{"role": "user", "content": q["text"]}])])
            T = ids.shape[1]
            block = best_of(lambda: m(ids, m.new_cache(1, T)))
            pieces = best_of(lambda: chunked_forward(m, ids, m.new_cache(1, T)))
            rows.append(
                {
                    "category": q["category"],
                    "tokens": T,
                    "block_s": round(block, 4),
                    "pieces_s": round(pieces, 4),
                    "speedup": round(block / pieces, 2),
                }
            )
    tot_b, tot_p = sum(r["block_s"] for r in rows), sum(r["pieces_s"] for r in rows)
    print("| category | prompt tokens | one block s | pieces s | speedup |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['category']} | {r['tokens']} | {r['block_s']:.3f} | {r['pieces_s']:.3f} | {r['speedup']:.2f}x |")
    print(f"| all | {sum(r['tokens'] for r in rows)} | {tot_b:.3f} | {tot_p:.3f} | {tot_b / tot_p:.2f}x |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": rows, "total_block_s": tot_b, "total_pieces_s": tot_p}, f, indent=2)


if __name__ == "__main__":
    main()
