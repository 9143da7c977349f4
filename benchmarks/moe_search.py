"""Search for the smallest CPU setting where DeepSeekMoE's fine-grained + shared experts beat GShard (issue 21).

Each setting trains GShard (0+2/16) and one fine-grained + shared variant at equal total and activated
parameters for the same seeds, and reports the paired gap (GShard - variant) at every curve point with a
95 % t-interval over seeds, plus the process CPU-seconds the setting took (single-threaded). Runs are cached per
run (`experiment.train_run`), so an interrupted search resumes.

    OMP_NUM_THREADS=1 python benchmarks/moe_search.py base steps900 ...   # -> benchmarks/results/moe_search.json
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from lmlab.core.paths import atomic_write_text
from lmlab.moe.data import eval_windows, tokenized_corpus
from lmlab.moe.experiment import QUICK, train_run
from lmlab.moe.stats import gap_curve, gap_trend

SEEDS = [0, 1, 2]
SETTINGS = {  # name: (setup, fine-grained variant compared with gshard)
    "steps300": (QUICK, "deepseekmoe"),
    "steps600": (replace(QUICK, steps=600), "deepseekmoe"),  # = the quick report's setting
    "steps600-m2": (replace(QUICK, steps=600), "1+3/31"),  # coarser segmentation (m = 2)
    "steps1500": (replace(QUICK, steps=1500), "deepseekmoe"),
    "batch32": (replace(QUICK, steps=600, batch=32), "deepseekmoe"),
}


def run_setting(name: str) -> dict:
    s, variant = SETTINGS[name]
    s = replace(s, seeds=SEEDS, ladder=False)
    train_ids, val_ids, _ = tokenized_corpus(s.data, s.vocab)
    val = eval_windows(val_ids, s.seq_len, s.eval_windows)
    runs = []
    for seed in SEEDS:
        for arch in ("gshard", variant):
            row, _ = train_run(s, arch, seed, train_ids, val)
            runs.append({**row, "arch": "variant" if arch == variant else arch})
            print(f"{name} {arch} seed {seed}: {row['val_loss']:.4f} ({row['cpu_seconds']} CPU-s)", flush=True)
    gaps = gap_curve(runs, "variant", "gshard")
    return {
        "setup": {k: v for k, v in asdict(s).items() if k not in ("seeds", "data", "archs")},
        "variant": variant,
        "seeds": SEEDS,
        "cpu_seconds": round(sum(r["cpu_seconds"] for r in runs), 1),
        "cpu_seconds_per_step": {
            a: round(sum(r["cpu_seconds"] for r in runs if r["arch"] == a) / (len(SEEDS) * s.steps), 4)
            for a in ("gshard", "variant")
        },
        "any_cached": any(r["cached"] for r in runs),
        "final": {a: [r["val_loss"] for r in runs if r["arch"] == a] for a in ("gshard", "variant")},
        "gap_gshard_minus_variant": gaps,
        "trend": gap_trend(gaps),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None,
    }


def main(names: list[str]) -> None:
    torch.set_num_threads(1)
    path = Path("benchmarks/results/moe_search.json")
    for name in names or list(SETTINGS):
        t0 = time.time()
        entry = {**run_setting(name), "wall_seconds": round(time.time() - t0, 1)}
        out = json.loads(path.read_text()) if path.exists() else {}  # re-read: searches may run side by side
        out[name] = entry
        atomic_write_text(path, json.dumps(out, indent=1))
        g = entry["gap_gshard_minus_variant"][-1]
        print(
            f"{name}: GShard - variant {g['gap']:+.4f} [{g['lo']:+.4f}, {g['hi']:+.4f}], {entry['cpu_seconds']} CPU-s"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
