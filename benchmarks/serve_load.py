"""Long-form load and fault test of `lmlab serve` on the embedded model (loopback only, bounded, stops by itself).

64 concurrent clients, each making `--per-client` requests from the mix in `lmlab.core.loadtest` (streaming and plain
chat, completions, JSON-schema response_format, bad JSON, oversized bodies, unknown models, clients that hang up
mid-stream). Pass: no 5xx, no request left hanging, every accepted request answered, server RSS growth under
`--rss-growth-mb`. Prints a table, writes JSON. The short form runs in tests/core/test_serve.py on a tiny model.

    OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/serve_load.py --clients 64 --per-client 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import torch

from lmlab.core.loader import load_model
from lmlab.core.loadtest import rss_mb, run_load
from lmlab.core.report import markdown_table
from lmlab.core.serve import ServerThread, create_app


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--per-client", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-queue", type=int, default=32)
    ap.add_argument("--rss-growth-mb", type=float, default=1024)
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "serve_load.json")
    a = ap.parse_args()
    lm = load_model("smollm2-135m-instruct", dtype=torch.float32)
    body_limit = 1 << 16
    app = create_app(lm, max_batch=a.max_batch, max_queue=a.max_queue, max_body_bytes=body_limit, max_tokens_limit=256)
    with ServerThread(app) as srv:
        base = rss_mb()
        rep = run_load(
            srv.url,
            "smollm2-135m-instruct",
            clients=a.clients,
            per_client=a.per_client,
            max_tokens=a.max_tokens,
            body_limit=body_limit,
            request_timeout_s=600,
            idle_timeout_s=60,
        )
        stats = vars(app.state.engine.stats).copy()
    rep["rss_growth_mb"] = rep["rss_mb"]["peak"] - base
    rep["passed"] = rep["passed"] and rep["rss_growth_mb"] < a.rss_growth_mb
    rep["engine"] = stats
    rows = [{"kind:status": k, "count": v} for k, v in rep["statuses"].items()]
    print(markdown_table(rows))
    keys = ["requests", "seconds", "accepted", "rejected_429", "hung_up", "server_5xx", "n_unexpected", "idle_after_s"]
    print(
        markdown_table(
            [{k: rep[k] for k in keys} | {"rss_growth_mb": rep["rss_growth_mb"], "passed": rep["passed"]}],
            floatfmt=".1f",
        )
    )
    meta = {
        "machine": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "load_avg": os.getloadavg(),
        **vars(a),
    }
    meta["json"] = str(a.json)
    print(json.dumps({"engine": stats, "latency_s": rep["latency_s"], "meta": meta}))
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps({"meta": meta, "report": rep}, indent=2, default=str))
    if not rep["passed"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
