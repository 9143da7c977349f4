"""DeepEval log-likelihood scoring: items/s with the question prefix shared across the four options (one prefill,
KV cache fanned out with `KVCache.reorder`) vs each option as a separate full prompt; same run, same items.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/deepeval_bench.py --n 8 --repeats 3
(the same as `lmlab deepeval bench --json benchmarks/results/deepeval_bench.json`)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lmlab.deepeval.bench import bench_table, run_bench

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/deepeval_bench.json"))
    a = ap.parse_args()
    out = run_bench(n=a.n, repeats=a.repeats, json_path=a.json)
    print(bench_table(out))
    print(f"torch threads {out['torch_threads']}, load average {' '.join(out['loadavg'])}")
