"""Forward+backward speed and peak memory of our MoE layer vs transformers' `DeepseekV2Moe`.

Same weights, same inputs, same config; transformers is run with every experts implementation that works
on CPU ("eager", "batched_mm", "grouped_mm"). Each (impl, tokens) point runs in a fresh subprocess so its
peak RSS is its own; timings are the median of `repeats` fwd+bwd passes after one warm-up pass.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from ..core.paths import atomic_write_text
from ..core.report import markdown_table

# DeepSeek-V2-Lite-like proportions at laptop scale: 64 fine-grained routed experts (top-6) + 2 shared
CONFIG = dict(
    hidden_size=512,
    moe_intermediate_size=128,
    n_routed_experts=64,
    n_shared_experts=2,
    num_experts_per_tok=6,
    topk_method="greedy",
    routed_scaling_factor=1.0,
)
IMPLS = ["ours", "eager", "batched_mm", "grouped_mm"]
BATCHED_MM_LIMIT_GB = 3.0  # batched_mm gathers one weight matrix per token-expert pair; skip beyond this


def _blocks():
    from transformers import DeepseekV2Config
    from transformers.models.deepseek_v2.modeling_deepseek_v2 import DeepseekV2Moe

    from .model import from_hf_block

    torch.manual_seed(0)
    hf = DeepseekV2Moe(DeepseekV2Config(**CONFIG))
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.05)
    return hf, from_hf_block(hf)


def _batched_mm_gb(tokens: int) -> float:
    c = CONFIG
    return tokens * c["num_experts_per_tok"] * 3 * c["hidden_size"] * c["moe_intermediate_size"] * 4 / 2**30


def _block(hf, ours, impl: str):
    if impl != "ours":
        hf.config._experts_implementation = impl
    return ours if impl == "ours" else hf


def _step(block, x, g) -> float:
    t0 = time.perf_counter()
    block(x).backward(g)
    dt = time.perf_counter() - t0
    block.zero_grad(set_to_none=True)
    x.grad = None
    return dt


def child(impl: str, tokens: int, threads: int) -> dict:
    """Peak memory of one fwd+bwd pass, in its own process so the peak is this implementation's.

    ru_maxrss would include import/initialisation peaks, so a thread samples RSS every millisecond
    during the pass; peak_over_base_mb is the pass's own peak above the RSS just before it.
    """
    import threading

    import psutil

    torch.set_num_threads(threads)
    hf, ours = _blocks()
    block = _block(hf, ours, impl)
    x = torch.randn(1, tokens, CONFIG["hidden_size"], requires_grad=True)
    g = torch.randn_like(x)
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak, done = [base], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.001)

    t = threading.Thread(target=sample)
    t.start()
    _step(block, x, g)
    done.set()
    t.join()
    return {"peak_rss_mb": round(peak[0] / 2**20, 1), "peak_over_base_mb": round((peak[0] - base) / 2**20, 1)}


def run_bench(tokens_list: list[int], repeats: int, json_path: Path | None, threads: int = 1) -> dict:
    """Timings interleaved round-robin in one process (so load drifts hit every impl alike), memory per subprocess."""
    torch.set_num_threads(threads)
    hf, ours = _blocks()
    rows = []
    for tokens in tokens_list:
        impls = [i for i in IMPLS if not (i == "batched_mm" and _batched_mm_gb(tokens) > BATCHED_MM_LIMIT_GB)]
        x = torch.randn(1, tokens, CONFIG["hidden_size"], requires_grad=True)
        g = torch.randn_like(x)
        times: dict[str, list[float]] = {i: [] for i in impls}
        for rep in range(repeats + 1):  # pass 0 is a warm-up
            for impl in impls:
                dt = _step(_block(hf, ours, impl), x, g)
                if rep:
                    times[impl].append(dt)
        for impl in IMPLS:
            if impl not in impls:
                rows.append(
                    {
                        "tokens": tokens,
                        "impl": impl,
                        "tokens_per_s": None,
                        "peak_rss_mb": None,
                        "note": f"skipped: gathers {_batched_mm_gb(tokens):.1f} GB of expert weights",
                    }
                )
                continue
            med = statistics.median(times[impl])
            row = {"tokens": tokens, "impl": impl, "tokens_per_s": tokens / med, "seconds": med}
            out = subprocess.run(
                [sys.executable, "-m", "lmlab.moe.bench", impl, str(tokens), str(threads)],
                capture_output=True,
                text=True,
                env={**os.environ, "HF_HUB_OFFLINE": "1"},
            )
            row.update(
                json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else {"peak_rss_mb": None}
            )
            rows.append(row)
            print(f"tokens {tokens} {impl}: {row['tokens_per_s']:.1f} tokens/s", file=sys.stderr)
    speedup = {}
    for tokens in tokens_list:
        hf_best = [
            r["tokens_per_s"] for r in rows if r["tokens"] == tokens and r["impl"] != "ours" and r["tokens_per_s"]
        ]
        mine = next(r for r in rows if r["tokens"] == tokens and r["impl"] == "ours")
        speedup[str(tokens)] = round(mine["tokens_per_s"] / max(hf_best), 3)
        mine["speedup_vs_best_hf"] = speedup[str(tokens)]
    result = {
        "config": CONFIG,
        "repeats": repeats,
        "torch_threads": threads,
        "load_avg_1m": os.getloadavg()[0],
        "rows": rows,
        "speedup_vs_best_hf": speedup,
    }
    print(
        markdown_table(
            rows,
            ["tokens", "impl", "tokens_per_s", "peak_rss_mb", "peak_over_base_mb", "speedup_vs_best_hf"],
            floatfmt=".1f",
        )
    )
    if json_path:
        atomic_write_text(Path(json_path), json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    print(json.dumps(child(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))
