"""Micro-batching for Socratic controllers on the local engine: N independent single-prompt calls made
sequentially (baseline) vs the same calls from N threads through `lmlab.socratic.batching.MicroBatcher`.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/socratic_batch_bench.py --calls 8 --tokens 32
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lmlab.core.backends import LocalBackend
from lmlab.core.engine import SamplingParams
from lmlab.core.report import markdown_table
from lmlab.socratic.batching import MicroBatcher


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/socratic_batch.json"))
    a = ap.parse_args()
    be = LocalBackend(batch_size=a.calls)
    params = SamplingParams(max_new_tokens=a.tokens, ignore_eos=True)
    prompts = [[{"role": "user", "content": f"Sub-problem {i}: what is {i} + {i * 3}?"}] for i in range(a.calls)]
    be.complete(prompts[:1], SamplingParams(max_new_tokens=2))  # warm-up
    t0 = time.perf_counter()
    seq = [be.complete([p], params)[0] for p in prompts]
    t_seq = time.perf_counter() - t0
    mb = MicroBatcher(be, max_batch=a.calls)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(a.calls) as pool:
        par = list(pool.map(lambda p: mb.complete([p], params)[0], prompts))
    t_mb = time.perf_counter() - t0
    same = sum(x.text == y.text for x, y in zip(seq, par))
    toks = sum(c.completion_tokens for c in seq)
    rows = [
        {"setup": "sequential single calls (baseline)", "seconds": t_seq, "tokens/s": toks / t_seq, "ratio": 1.0},
        {
            "setup": f"{a.calls} threads via MicroBatcher",
            "seconds": t_mb,
            "tokens/s": toks / t_mb,
            "ratio": t_seq / t_mb,
        },
    ]
    print(markdown_table(rows, floatfmt=".2f"))
    print(f"identical greedy replies: {same}/{a.calls}; batches: {mb.batches}; load {os.getloadavg()}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(
        json.dumps({"rows": rows, "identical": same, "batches": mb.batches, "load": os.getloadavg()}, indent=2)
    )


if __name__ == "__main__":
    main()
