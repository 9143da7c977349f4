"""CPU-seconds per training step of each architecture, single-threaded, for the quick and full MoE setups.

Full-mode times in benchmarks/RESULTS.md are these per-step costs times the steps and runs a mode trains.
Synthetic token ids (the cost of a step does not depend on which tokens), no cache, first step not timed.

    OMP_NUM_THREADS=1 python benchmarks/moe_step_cost.py [quick_steps] [full_steps]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from lmlab.core.paths import atomic_write_text
from lmlab.core.train import TrainConfig, train
from lmlab.moe.data import batches
from lmlab.moe.experiment import FULL, LADDER, MAIN, QUICK, _loss_fn, build_model


def step_cost(s, arch: str, steps: int) -> float:
    torch.manual_seed(0)
    model = build_model(s, arch, seed=0)
    ids = torch.randint(0, s.vocab, (200_000,), dtype=torch.int32)
    it = batches(ids, s.batch, s.seq_len, 0)
    fn = _loss_fn(model)
    train(model, it, fn, TrainConfig(steps=1, warmup=1, log_every=0))  # warm-up: allocator, first-call costs
    c0 = time.process_time()
    train(model, it, fn, TrainConfig(steps=steps, warmup=1, log_every=0))
    return (time.process_time() - c0) / steps


def main() -> None:
    torch.set_num_threads(1)
    quick_steps = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    full_steps = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    rows = []
    for name, s, n in (("quick", QUICK, quick_steps), ("full", FULL, full_steps)):
        for arch in MAIN + LADDER[1:3]:
            if n:
                rows.append({"setup": name, "arch": arch, "steps_timed": n, "cpu_s_per_step": step_cost(s, arch, n)})
                print(rows[-1], flush=True)
    out = {"rows": rows, "loadavg": Path("/proc/loadavg").read_text().split()[:3], "threads": 1}
    atomic_write_text(Path("benchmarks/results/moe_step_cost.json"), json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
