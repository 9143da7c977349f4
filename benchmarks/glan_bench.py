"""GLAN throughput: rows/s of the answers stage through `lmlab serve` at concurrency 1 vs 16 (same run, same
server, ratio), and the local engine called directly at batch 1 vs 16. Prints a table, writes JSON.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/glan_bench.py --rows 16 --max-tokens 48
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from lmlab.core.backends import LocalBackend, OpenAIBackend
from lmlab.core.engine import SamplingParams
from lmlab.core.report import markdown_table
from lmlab.core.serve import ServerThread, create_app
from lmlab.glan import prompts as P
from lmlab.glan.schemas import Answer


def measure(name: str, fn, rows: int) -> dict:
    t0 = time.perf_counter()
    outs = fn()
    dt = time.perf_counter() - t0
    valid = sum(1 for c in outs if _ok(c.text))
    return {
        "setup": name,
        "rows": rows,
        "seconds": dt,
        "rows_per_s": rows / dt,
        "new_tokens_per_s": sum(c.completion_tokens for c in outs) / dt,
        "valid": valid,
    }


def _ok(text: str) -> bool:
    try:
        Answer.model_validate_json(text)
        return True
    except ValueError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "glan.json")
    a = ap.parse_args()
    questions = [
        f"Homework {i}: explain, with an example, why the sum of two even numbers is even (variant {i})."
        for i in range(a.rows)
    ]
    prompts = [P.answer_prompt(q) for q in questions]
    schema = Answer.model_json_schema()
    params = SamplingParams(max_new_tokens=a.max_tokens)  # greedy: every setup does the same work
    local = LocalBackend(batch_size=16)
    local.complete(prompts[:1], SamplingParams(max_new_tokens=2), schema)  # warm-up (grammar compile, allocator)
    res = []
    with ServerThread(create_app(local.lm, max_batch=16, batch_window_s=0.02)) as srv:
        for conc in (1, 16):
            be = OpenAIBackend("smollm2-135m-instruct", base_url=srv.url, concurrency=conc, max_retries=0, timeout=600)
            res.append(
                measure(f"lmlab serve, concurrency {conc}", lambda: be.complete(prompts, params, schema), a.rows)
            )
    for bs in (1, 16):
        local.batch_size = bs
        res.append(measure(f"local engine, batch {bs}", lambda: local.complete(prompts, params, schema), a.rows))
    base_http, base_local = res[0]["rows_per_s"], res[2]["rows_per_s"]
    for r in res:
        r["ratio_vs_baseline"] = r["rows_per_s"] / (base_http if r["setup"].startswith("lmlab") else base_local)
    print(
        markdown_table(
            res, ["setup", "rows", "seconds", "rows_per_s", "new_tokens_per_s", "valid", "ratio_vs_baseline"], ".2f"
        )
    )
    meta = {
        "dtype": str(local.lm.model.embed.weight.dtype),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "load_avg": os.getloadavg(),
        "rows": a.rows,
        "max_tokens": a.max_tokens,
    }
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps({"meta": meta, "results": res}, indent=2))
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
