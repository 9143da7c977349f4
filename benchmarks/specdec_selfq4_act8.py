"""`selfq4` with its 4-bit layers on 8-bit activations (the default) and on fp32 activations (the exact-weights
kernel), alternated in one process, each against plain decoding measured in the same run: the same measurement as
`lmlab specdec bench --methods ar,selfq4` (Spec-Bench, first question per category, greedy, 128 tokens, fp32).
Run: HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 python benchmarks/specdec_selfq4_act8.py [--rounds 2] [--json benchmarks/results/specdec_selfq4_act8.json]
"""

import argparse
import json

import lmlab.specdec.bench as bench
import lmlab.specdec.drafters as drafters

KEYS = ("speedup", "tokens_per_s", "mean_accepted_tokens", "acceptance_rate", "c", "verify_cost", "lossless")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json")
    a = ap.parse_args()
    packs = drafters.use_group_packs
    rows = []
    for r in range(a.rounds):
        for act8 in (True, False):
            drafters.use_group_packs = lambda m, layers, head, act8=None, _a=act8: packs(m, layers, head, act8=_a)
            out = bench.run_bench("smollm2-135m-instruct", None, 1, 128, ("ar", "selfq4"), None, (), log=lambda s: None)
            o = out["overall"]
            rows.append(
                {"round": r, "act8": act8, "ar_tokens_per_s": o["ar"]["tokens_per_s"]}
                | {k: o["selfq4"][k] for k in KEYS}
            )
            print(json.dumps(rows[-1]), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
