"""`lmlab deepeval bench`: items/s of shared-prefix log-likelihood scoring (one prefill, cache fanned out to the
four options) against scoring each option as a separate full prompt, in the same run, on the same items."""

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
) -> dict[str, Any]:
    """Alternate shared / separate passes `repeats` times over the same n items per subtask (so load drifts hit
    both); report the median items/s of each and their ratio, and the largest log-prob difference between them."""
    import torch

    from ..core.loader import load_model

    lm = load_model(model, dtype=torch.float32)
    scorer = LoglikScorer(lm)
    rows = []
    for st in subtasks:
        items = subset(load_subtask(st), n, seed)
        enc = [scorer.encode(build_prompt(it, 1), it.option_list()) for it in items]
        option_logprobs_shared(lm.model, *enc[0])  # warm-up (kernel packing)
        times: dict[str, list[float]] = {"shared": [], "separate": []}
        diff = 0.0
        for _ in range(repeats):
            outs = {}
            for mode, fn in (("shared", option_logprobs_shared), ("separate", option_logprobs_separate)):
                t0 = time.perf_counter()
                outs[mode] = [fn(lm.model, p, cs) for p, cs in enc]
                times[mode].append(time.perf_counter() - t0)
            diff = max(diff, *(abs(a - b) for o, r in zip(outs["shared"], outs["separate"]) for a, b in zip(o, r)))
        sh, se = statistics.median(times["shared"]), statistics.median(times["separate"])
        rows.append(
            {
                "subtask": st,
                "items": len(items),
                "prefix_tokens": statistics.fmean(len(p) for p, _ in enc),
                "option_tokens": statistics.fmean(len(c) for _, cs in enc for c in cs),
                "shared_items_per_s": len(items) / sh,
                "separate_items_per_s": len(items) / se,
                "speedup": se / sh,
                "max_abs_logprob_diff": diff,
            }
        )
    try:
        load = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        load = []
    out = {
        "model": model,
        "rows": rows,
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "loadavg": load,
        "repeats": repeats,
        "seed": seed,
    }
    if json_path is not None:
        atomic_write_text(Path(json_path), json.dumps(out, indent=2))
    return out


def bench_table(out: dict[str, Any]) -> str:
    return markdown_table(out["rows"], floatfmt=".3g")
