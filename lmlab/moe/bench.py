"""Forward+backward speed and peak memory of our MoE layer vs transformers' `DeepseekV2Moe`.

Same weights, same inputs, same config; transformers is run with every experts implementation that works
on CPU ("eager", "batched_mm", "grouped_mm"). Each (impl, tokens) point runs in a fresh subprocess so its
peak RSS is its own; timings are the median of `repeats` fwd+bwd passes after one warm-up pass.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from ..core.paths import atomic_write_text
from ..core.report import markdown_table

# DeepSeek-V2-Lite-like proportions at laptop scale: 64 fine-grained routed experts (top-6) + 2 shared
CONFIG = dict(hidden_size=512, moe_intermediate_size=128, n_routed_experts=64, n_shared_experts=2,
              num_experts_per_tok=6, topk_method="greedy", routed_scaling_factor=1.0)
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


def child(impl: str, tokens: int, repeats: int, threads: int) -> dict:
    """One measurement (runs in its own process)."""
    import psutil

    torch.set_num_threads(threads)
    hf, ours = _blocks()
    if impl != "ours":
        hf.config._experts_implementation = impl
    block = ours if impl == "ours" else hf
    x = torch.randn(1, tokens, CONFIG["hidden_size"], requires_grad=True)
    g = torch.randn_like(x)
    base = psutil.Process().memory_info().rss
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        block(x).backward(g)
        if i:
            times.append(time.perf_counter() - t0)
        block.zero_grad(set_to_none=True)
        x.grad = None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    med = statistics.median(times)
    return {"tokens": tokens, "impl": impl, "tokens_per_s": tokens / med, "seconds": med,
            "peak_rss_mb": round(peak / 2**20, 1), "peak_over_base_mb": round(max(0, peak - base) / 2**20, 1)}


def run_bench(tokens_list: list[int], repeats: int, json_path: Path | None, threads: int = 1) -> dict:
    rows = []
    for tokens in tokens_list:
        for impl in IMPLS:
            if impl == "batched_mm" and _batched_mm_gb(tokens) > BATCHED_MM_LIMIT_GB:
                rows.append({"tokens": tokens, "impl": impl, "tokens_per_s": None, "peak_rss_mb": None,
                             "note": f"skipped: gathers {_batched_mm_gb(tokens):.1f} GB of expert weights"})
                continue
            cmd = [sys.executable, "-m", "lmlab.moe.bench", impl, str(tokens), str(repeats), str(threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if out.returncode:
                rows.append({"tokens": tokens, "impl": impl, "tokens_per_s": None, "peak_rss_mb": None,
                             "note": f"failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}"})
            else:
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"tokens {tokens} {impl}: {rows[-1].get('tokens_per_s')}", file=sys.stderr)
    speedup = {}
    for tokens in tokens_list:
        hf = [r["tokens_per_s"] for r in rows if r["tokens"] == tokens and r["impl"] != "ours" and r["tokens_per_s"]]
        ours = next(r for r in rows if r["tokens"] == tokens and r["impl"] == "ours")
        if hf and ours["tokens_per_s"]:
            speedup[str(tokens)] = round(ours["tokens_per_s"] / max(hf), 3)
            ours["speedup_vs_best_hf"] = speedup[str(tokens)]
    result = {"config": CONFIG, "repeats": repeats, "torch_threads": threads,
              "load_avg_1m": os.getloadavg()[0], "rows": rows, "speedup_vs_best_hf": speedup}
    print(markdown_table(rows, ["tokens", "impl", "tokens_per_s", "peak_rss_mb", "peak_over_base_mb", "speedup_vs_best_hf"], floatfmt=".1f"))
    if json_path:
        atomic_write_text(Path(json_path), json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    print(json.dumps(child(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))))
