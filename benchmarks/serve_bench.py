"""`lmlab serve` throughput and time to first token against the engine's own offline batched throughput.

Same run, same model, greedy with EOS ignored (every setup does the same work):
- offline: `engine.generate` on B identical-length prompts at B = 1, 4, 16, 64 (the limit continuous batching
  approaches);
- serve: B concurrent streaming clients (OpenAI chat API over loopback), tokens/s over the wall time and TTFT;
- staggered: 16 requests of mixed lengths (8-64 new tokens) arriving evenly over 2 s; target: their tokens/s
  over serve's own concurrency-1 tokens/s reaches >= 80 % of offline batch-16 / batch-1.

    OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/serve_bench.py --tokens 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import time
from pathlib import Path

import httpx
import torch

from lmlab.core.engine import SamplingParams, encode_chat, generate
from lmlab.core.loader import load_model
from lmlab.core.report import markdown_table
from lmlab.core.serve import ServerThread, create_app

QUESTIONS = [
    "Explain why the sky is blue.",
    "Give three tips for learning to cook.",
    "What is a prime number?",
    "Describe a cat to someone who has never seen one.",
]


def offline(lm, batch: int, tokens: int) -> dict:
    prompts = [encode_chat(lm.tokenizer, [{"role": "user", "content": QUESTIONS[0]}])] * batch
    params = SamplingParams(max_new_tokens=tokens, ignore_eos=True)
    t0 = time.perf_counter()
    out = generate(lm.model, lm.tokenizer, prompts, params)
    dt = time.perf_counter() - t0
    return {
        "setup": f"offline batch {batch}",
        "streams": batch,
        "tokens": sum(len(g.token_ids) for g in out),
        "seconds": dt,
    }


async def _stream(client: httpx.AsyncClient, url: str, q: str, tokens: int, delay: float) -> tuple[float, float, int]:
    await asyncio.sleep(delay)
    body = {"messages": [{"role": "user", "content": q}], "max_tokens": tokens, "stream": True, "ignore_eos": True}
    t0 = time.perf_counter()
    ttft, n = None, 0
    async with client.stream("POST", f"{url}/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                ttft = ttft if ttft is not None else time.perf_counter() - t0
                n += 1
    return ttft or 0.0, time.perf_counter() - t0, n


async def served(url: str, lengths: list[int], delays: list[float], name: str, streams: int) -> dict:
    async with httpx.AsyncClient(timeout=1200, limits=httpx.Limits(max_connections=len(lengths) + 2)) as c:
        t0 = time.perf_counter()
        res = await asyncio.gather(*(_stream(c, url, QUESTIONS[0], n, d) for n, d in zip(lengths, delays)))
        dt = time.perf_counter() - t0
    ttfts = sorted(r[0] for r in res)
    return {
        "setup": name,
        "streams": streams,
        "tokens": sum(lengths),
        "seconds": dt,
        "ttft_mean_s": sum(ttfts) / len(ttfts),
        "ttft_p90_s": ttfts[int(0.9 * (len(ttfts) - 1))],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=16, help="new tokens per stream in the fixed-length rows")
    ap.add_argument("--batches", default="1,4,16,64")
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "serve.json")
    a = ap.parse_args()
    batches = [int(x) for x in a.batches.split(",")]
    lm = load_model("smollm2-135m-instruct", dtype=torch.float32)
    generate(lm.model, lm.tokenizer, [[1, 2, 3]], SamplingParams(max_new_tokens=2))  # warm-up
    app = create_app(lm, max_batch=max(batches), max_queue=4 * max(batches), max_tokens_limit=256)
    rows: list[dict] = []
    with ServerThread(app) as srv:
        for b in batches:  # each offline figure next to its served one: the machine's load drifts between them
            rows.append(offline(lm, b, a.tokens))
            rows.append(asyncio.run(served(srv.url, [a.tokens] * b, [0.0] * b, f"serve, {b} streams", b)))
        rng = random.Random(0)
        lengths = [rng.randint(8, 64) for _ in range(16)]
        delays = [2.0 * i / 15 for i in range(16)]
        stag = asyncio.run(served(srv.url, lengths, delays, "serve, 16 staggered over 2 s, 8-64 tokens", 16))
        rows.append(stag)
    for r in rows:
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
    off = {r["streams"]: r["tokens_per_s"] for r in rows if r["setup"].startswith("offline")}
    srv1 = next(r["tokens_per_s"] for r in rows if r["setup"] == "serve, 1 streams")
    for r in rows:
        r["vs_batch1"] = r["tokens_per_s"] / (off[1] if r["setup"].startswith("offline") else srv1)
        if r["streams"] in off and not r["setup"].startswith("offline"):
            r["vs_offline_same_batch"] = r["tokens_per_s"] / off[r["streams"]]
    target = {
        "offline_ratio_b16_b1": off.get(16, float("nan")) / off[1],
        "staggered_ratio_vs_serve_1": stag["tokens_per_s"] / srv1,
    }
    target["fraction_of_offline_ratio"] = target["staggered_ratio_vs_serve_1"] / target["offline_ratio_b16_b1"]
    target["passed_80pct"] = target["fraction_of_offline_ratio"] >= 0.8
    cols = [
        "setup",
        "streams",
        "tokens",
        "seconds",
        "tokens_per_s",
        "vs_batch1",
        "vs_offline_same_batch",
        "ttft_mean_s",
        "ttft_p90_s",
    ]
    print(markdown_table(rows, cols, ".2f"))
    meta = {
        "machine": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "load_avg": os.getloadavg(),
        "tokens": a.tokens,
        "staggered_lengths": lengths,
    }
    print(json.dumps({"target": target, "meta": meta}))
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps({"meta": meta, "target": target, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
