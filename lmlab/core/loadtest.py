"""A bounded load and fault test for an OpenAI-compatible server (`lmlab serve`), loopback only.

`run_load` sends `clients` concurrent clients, each making `per_client` requests drawn round-robin from a mix of well-
formed and faulty ones: plain and streaming chat, legacy completions, JSON-schema `response_format`, bodies that are
not JSON, oversized bodies, unknown models, and clients that hang up mid-stream. Every request has a deadline, so the
test stops by itself. It passes when no answer is a 5xx, no request is left hanging (client side: every request got
an answer before its deadline; server side: /health shows nothing running or waiting soon after), every accepted
request (200) was answered in full (choices with a finish_reason, a stream ending in [DONE]), and each refusal is the
documented one (400, 404, 413, 429). The caller checks the server's memory (`rss_mb`) against its own bound.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

KINDS = ("chat", "stream", "json_schema", "bad_json", "oversized", "unknown_model", "hangup", "completion")
EXPECTED = {  # statuses each kind may get (429: the bounded queue was full)
    "chat": {200, 429},
    "stream": {200, 429},
    "json_schema": {200, 429},
    "completion": {200, 429},
    "hangup": {200, 429},
    "bad_json": {400},
    "oversized": {413},
    "unknown_model": {404},
}
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 20}}, "required": ["answer"]}


def rss_mb(pid: int | str = "self") -> float:
    """Resident memory of a process in MiB (Linux /proc; 0 where unavailable)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


async def _one(client: Any, base: str, model: str, kind: str, i: int, max_tokens: int, body_limit: int) -> dict:
    chat = {"model": model, "messages": [{"role": "user", "content": f"Question {i}: name a fruit."}]}
    chat["max_tokens"] = max_tokens
    url = f"{base}/chat/completions"
    if kind == "bad_json":
        r = await client.post(url, content=b'{"messages": [', headers={"content-type": "application/json"})
        return {"status": r.status_code, "ok": "error" in r.json()}
    if kind == "oversized":
        r = await client.post(url, content=b"x" * (body_limit + 1), headers={"content-type": "application/json"})
        return {"status": r.status_code, "ok": "error" in r.json()}
    if kind == "unknown_model":
        r = await client.post(url, json={**chat, "model": "no-such-model"})
        return {"status": r.status_code, "ok": "error" in r.json()}
    if kind == "completion":
        r = await client.post(f"{base}/completions", json={"model": model, "prompt": f"{i} + 1 =", "max_tokens": 4})
        ok = r.status_code != 200 or r.json()["choices"][0]["finish_reason"] in ("stop", "length")
        return {"status": r.status_code, "ok": ok}
    if kind in ("chat", "json_schema"):
        body = (
            chat
            if kind == "chat"
            else {**chat, "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}}
        )
        r = await client.post(url, json=body)
        ok = r.status_code != 200 or r.json()["choices"][0]["finish_reason"] in ("stop", "length")
        return {"status": r.status_code, "ok": ok, "tokens": r.json().get("usage", {}).get("completion_tokens", 0)}
    # stream / hangup
    async with client.stream("POST", url, json={**chat, "stream": True}) as r:
        if r.status_code != 200:
            await r.aread()
            return {"status": r.status_code, "ok": "error" in json.loads(r.text or "{}")}
        done, chunks = False, 0
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            chunks += 1
            if "error" in json.loads(line[6:]):
                return {"status": 200, "ok": False}
            if kind == "hangup":  # leave after the first chunk: the server must cancel the rest
                return {"status": 200, "ok": True, "hung_up": True}
        return {"status": 200, "ok": done or kind == "hangup"}


async def run_load_async(
    base_url: str,
    model: str,
    clients: int = 64,
    per_client: int = 2,
    max_tokens: int = 16,
    body_limit: int = 1 << 20,
    request_timeout_s: float = 120.0,
    idle_timeout_s: float = 30.0,
    api_key: str | None = None,
    server_pid: int | str = "self",
) -> dict:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients)
    results: list[dict] = []
    rss = [rss_mb(server_pid)]
    t0 = time.monotonic()
    async with httpx.AsyncClient(headers=headers, timeout=request_timeout_s, limits=limits) as client:

        async def worker(c: int) -> None:
            for k in range(per_client):
                i = c * per_client + k
                kind = KINDS[i % len(KINDS)]
                t = time.monotonic()
                try:
                    res = await asyncio.wait_for(
                        _one(client, base_url, model, kind, i, max_tokens, body_limit), request_timeout_s
                    )
                except (asyncio.TimeoutError, httpx.TimeoutException):
                    res = {"status": "timeout", "ok": False}
                except httpx.HTTPError as e:
                    res = {"status": f"transport:{type(e).__name__}", "ok": False}
                res.update(kind=kind, seconds=time.monotonic() - t)
                results.append(res)

        async def sampler() -> None:
            while True:
                rss.append(rss_mb(server_pid))
                await asyncio.sleep(0.2)

        s = asyncio.create_task(sampler())
        await asyncio.gather(*(worker(c) for c in range(clients)))
        s.cancel()
        seconds = time.monotonic() - t0
        idle, deadline = None, time.monotonic() + idle_timeout_s  # nothing left running on the server
        while time.monotonic() < deadline:
            h = (await client.get(base_url.removesuffix("/v1") + "/health")).json()
            if h["running"] == 0 and h["waiting"] == 0:
                idle = time.monotonic() - t0 - seconds
                break
            await asyncio.sleep(0.1)
    statuses = Counter(f"{r['kind']}:{r['status']}" for r in results)
    bad = [r for r in results if r["status"] not in EXPECTED[r["kind"]] or not r["ok"]]
    five = [r for r in results if isinstance(r["status"], int) and r["status"] >= 500]
    return {
        "requests": len(results),
        "seconds": seconds,
        "statuses": dict(sorted(statuses.items())),
        "accepted": sum(r["status"] == 200 for r in results),
        "rejected_429": sum(r["status"] == 429 for r in results),
        "hung_up": sum(bool(r.get("hung_up")) for r in results),
        "server_5xx": len(five),
        "unexpected": bad[:10],
        "n_unexpected": len(bad),
        "idle_after_s": idle,
        "rss_mb": {"start": rss[0], "peak": max(rss), "end": rss_mb(server_pid)},
        "latency_s": {
            "max": max(r["seconds"] for r in results),
            "mean": sum(r["seconds"] for r in results) / len(results),
        },
        "passed": not bad and not five and idle is not None,
    }


def run_load(base_url: str, model: str, **kw: Any) -> dict:
    """`run_load_async` from synchronous code (tests, benchmarks)."""
    return asyncio.run(run_load_async(base_url, model, **kw))
