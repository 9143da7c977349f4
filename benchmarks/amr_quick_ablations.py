"""RGL's two ablations (no KL; fixed r = 0.5) at quick-mode scale, 3 seeds: the comparisons `lmlab amr reproduce`
makes in full mode, run once on the quick parsers (which it reuses from the cache when a quick run made them).
Run: HF_HUB_OFFLINE=1 python benchmarks/amr_quick_ablations.py [--json benchmarks/results/amr_quick_ablations.json]
"""

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from lmlab.amr.reproduce import comparisons, quick_config, run_experiment


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--out", default="runs/amr-quick-ablations")
    a = ap.parse_args()
    cfg = replace(quick_config(), ablations=True, ablation_seeds=3)
    t0 = time.perf_counter()
    res = run_experiment(cfg, Path(a.out))
    wall = time.perf_counter() - t0
    rows = [c for c in comparisons(res) if c["a"] == "RGL" and c["b"].startswith("RGL ")]
    print("| ablation - RGL | split | Smatch++ diff [95% CI] | per seed |\n|---|---|---|---|")
    for c in rows:
        per = ", ".join(f"{d:+.1f}" for d in c["per_seed"])
        print(f"| {c['b']} | {c['split']} | {c['diff']:+.1f} [{c['lo']:+.1f}, {c['hi']:+.1f}] | {per} |")
    print(f"wall {wall:.0f} s, CPU {res.get('cpu_seconds', float('nan')):.0f} s")
    if a.json:
        Path(a.json).write_text(json.dumps({"comparisons": rows, "wall_s": wall, "cpu_s": res.get("cpu_seconds")}))


if __name__ == "__main__":
    main()
