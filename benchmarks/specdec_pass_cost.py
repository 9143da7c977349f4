"""What a target pass over n tokens costs, in 1-token decoding steps, at two context lengths (the curve
`lmlab.specdec.cost.PassCost` measures for cost-aware trees). fp32, lmlab's kernels, best of 3 per cell.
Run: HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 python benchmarks/specdec_pass_cost.py [--json benchmarks/results/specdec_pass_cost.json]
"""

import argparse
import json

from lmlab.core.loader import load_model
from lmlab.specdec.cost import PassCost

WIDTHS = (1, 2, 4, 6, 8, 12, 16, 24, 32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    a = ap.parse_args()
    m = load_model(dtype="float32").model
    c = PassCost(m, widths=WIDTHS, contexts=(100, 1000), reps=3)
    print(
        "| context | 1-token step ms | "
        + " | ".join(f"n={n}" for n in WIDTHS[1:])
        + " |\n|---|---|"
        + "---|" * (len(WIDTHS) - 1)
    )
    for ctx, row in c.table.items():
        print(f"| {ctx} | {c.step_s[ctx] * 1e3:.1f} | " + " | ".join(f"{v:.2f}" for v in row[1:]) + " |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"widths": WIDTHS, "table": c.table, "step_s": c.step_s}, f, indent=2)


if __name__ == "__main__":
    main()
