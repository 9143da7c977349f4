"""`lmlab deepeval bench`: items/s of shared-prefix log-likelihood scoring (one prefill of the question, then the
four options packed into one row on top of it) against scoring each option as a separate full prompt, in the same
run, on the same items. Rows for the options-only prompts and for the description-augmented (oracle) prompts the
reproduction also scores (longer prefix, so more to share)."""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from ..core.paths import atomic_write_text
from ..core.report import markdown_table
from .data import build_prompt, load_subtask, subset
from .loglik import LoglikScorer, option_logprobs_separate, option_logprobs_shared


def run_bench(
    model: str = "smollm2-135m-instruct",
    subtasks: tuple[str, ...] = ("title", "deep_semantics"),
    n: int = 8,
    repeats: int = 3,
    seed: int = 0,
    json_path: Path | None = None,
    conditions: tuple[str, ...] = ("none", "oracle"),
) -> dict[str, Any]:
    """Alternate shared / separate passes `repeats` times over the same n items per subtask and condition (so load
    drifts hit both); report the median items/s of each, their ratio by wall clock and by this process's CPU time
    (steadier on a shared machine when torch runs one thread), and the largest log-prob difference between them."""
    import torch

    from ..core.loader import load_model

    load0 = _loadavg()
    lm = load_model(model, dtype=torch.float32)
    scorer = LoglikScorer(lm)
    rows = []
    for st in subtasks:
        items = subset(load_subtask(st), n, seed)
        for cond in conditions:
            desc = (lambda it: it.description) if cond == "oracle" else (lambda it: None)
            enc = [scorer.encode(build_prompt(it, 1, description=desc(it)), it.option_list()) for it in items]
            option_logprobs_shared(lm.model, *enc[0])  # warm-up (kernel packing)
            wall: dict[str, list[float]] = {"shared": [], "separate": []}
            cpu: dict[str, list[float]] = {"shared": [], "separate": []}
            diff = 0.0
            for _ in range(repeats):
                outs = {}
                for mode, fn in (("shared", option_logprobs_shared), ("separate", option_logprobs_separate)):
                    t0, c0 = time.perf_counter(), time.process_time()
                    outs[mode] = [fn(lm.model, p, cs) for p, cs in enc]
                    wall[mode].append(time.perf_counter() - t0)
                    cpu[mode].append(time.process_time() - c0)
                pairs = zip(outs["shared"], outs["separate"])
                diff = max(diff, *(abs(a - b) for o, r in pairs for a, b in zip(o, r)))
            sh, se = statistics.median(wall["shared"]), statistics.median(wall["separate"])
            P = statistics.fmean(len(p) for p, _ in enc)
            C = statistics.fmean(len(c) for _, cs in enc for c in cs)
            rows.append(
                {
                    "subtask": st,
                    "condition": cond,
                    "items": len(items),
                    "prefix_tokens": P,
                    "option_tokens": C,
                    "shared_items_per_s": len(items) / sh,
                    "separate_items_per_s": len(items) / se,
                    "speedup": se / sh,
                    "speedup_cpu_time": statistics.median(cpu["separate"]) / statistics.median(cpu["shared"]),
                    "token_ideal": 4 * (P + C) / (P + 4 * C),
                    "max_abs_logprob_diff": diff,
                }
            )
    out = {
        "model": model,
        "rows": rows,
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_start": load0,
        "loadavg": _loadavg(),
        "repeats": repeats,
        "seed": seed,
    }
    if json_path is not None:
        atomic_write_text(Path(json_path), json.dumps(out, indent=2))
    return out


def _loadavg() -> list[str]:
    try:
        return Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        return []


def bench_table(out: dict[str, Any]) -> str:
    return markdown_table(out["rows"], floatfmt=".3g")
