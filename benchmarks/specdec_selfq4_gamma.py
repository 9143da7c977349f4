"""`selfq4` alone against plain decoding, for several longest-draft settings, on the Spec-Bench benchmark prompts
(first question per category, greedy, 128 tokens, fp32): the same measurement as `lmlab specdec bench --methods
ar,selfq4`, repeated per `gamma_max`.
Run: HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 python benchmarks/specdec_selfq4_gamma.py [--gammas 6,8,10,16] [--json benchmarks/results/specdec_selfq4_gamma.json]
"""

import argparse
import json

import lmlab.specdec.bench as bench
from lmlab.specdec import registry

KEYS = (
    "speedup",
    "tokens_per_s",
    "mean_accepted_tokens",
    "c",
    "predicted_speedup",
    "achieved_fraction",
    "verify_cost",
    "lossless",
)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gammas", default="6,8,10,16")
    ap.add_argument("--json")
    a = ap.parse_args()
    make = registry.make_drafter
    rows = []
    for g in (int(x) for x in a.gammas.split(",")):
        bench.make_drafter = lambda lm, m, g=g, **kw: (
            make(lm, m, gamma_max=g, **kw) if m == "selfq4" else make(lm, m, **kw)
        )
        o = bench.run_bench("smollm2-135m-instruct", None, 1, 128, ("ar", "selfq4"), None, (), log=lambda s: None)[
            "overall"
        ]["selfq4"]
        rows.append({"gamma_max": g, **{k: o[k] for k in KEYS}})
    print("| gamma_max | " + " | ".join(KEYS) + " |\n|" + "---|" * (len(KEYS) + 1))
    for r in rows:
        print(
            "| "
            + " | ".join(f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in ("gamma_max", *KEYS))
            + " |"
        )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
