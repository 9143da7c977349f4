"""OpenAI Batch API round trip: write a stage's uncached requests as Batch JSONL, read the results back
into the call cache. Upload the file to OpenAI's /v1/batches, or feed it to vLLM's batch runner
(`python -m vllm.entrypoints.openai.run_batch -i requests.jsonl -o results.jsonl --model M`); a rerun of
`lmlab glan run` then finds every reply in the cache and moves to the next stage."""

from __future__ import annotations

import json
from pathlib import Path

from ..core.errors import LmlabError
from ..core.llmcache import Entry, LLMCache, Request
from ..core.paths import atomic_write_text


def batch_line(req: Request) -> dict:
    p = req.params
    body = {
        "model": req.model,
        "messages": req.prompt if isinstance(req.prompt, list) else [{"role": "user", "content": req.prompt}],
        "max_tokens": p["max_new_tokens"],
        "temperature": p["temperature"],
        "top_p": p["top_p"],
        "seed": p["seed"],
    }
    if req.json_schema is not None:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": req.json_schema.get("title", "output"), "schema": req.json_schema, "strict": True},
        }
    return {"custom_id": req.key, "method": "POST", "url": "/v1/chat/completions", "body": body}


def export_requests(requests: list[Request], path: Path) -> None:
    """Requests file plus a sidecar (path + '.meta.jsonl') with what the cache needs to file each reply."""
    atomic_write_text(path, "".join(json.dumps(batch_line(r), ensure_ascii=False) + "\n" for r in requests))
    meta = [
        {
            "key": r.key,
            "tag": r.tag,
            "model": r.model,
            "request": json.dumps(
                {
                    "model": r.model,
                    "prompt": r.prompt,
                    "params": r.params,
                    "json_schema": r.json_schema,
                    "sample": r.sample,
                    "tag": r.tag,
                },
                ensure_ascii=False,
            ),
        }
        for r in requests
    ]
    atomic_write_text(Path(str(path) + ".meta.jsonl"), "".join(json.dumps(m, ensure_ascii=False) + "\n" for m in meta))


def import_results(results: Path, requests: Path, cache: LLMCache) -> dict[str, int]:
    """Store each successful result under its custom_id; failed lines stay pending (the next run calls them)."""
    meta_path = Path(str(requests) + ".meta.jsonl")
    if not meta_path.exists():
        raise LmlabError(
            f"{meta_path}: sidecar of the exported requests not found",
            hint="pass the requests file written by `lmlab glan export-batch`",
        )
    meta = {m["key"]: m for m in map(json.loads, meta_path.read_text().splitlines())}
    counts = {"imported": 0, "failed": 0, "unknown": 0}
    for n, line in enumerate(Path(results).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            cid, resp = obj["custom_id"], obj.get("response") or {}
        except (json.JSONDecodeError, KeyError, TypeError):
            raise LmlabError(
                f"{results}:{n}: not a Batch API result line",
                hint='expected {"custom_id": ..., "response": {"status_code", "body"}}',
            ) from None
        if cid not in meta:
            counts["unknown"] += 1
            continue
        body = resp.get("body") or {}
        if resp.get("status_code") != 200 or obj.get("error") or not body.get("choices"):
            counts["failed"] += 1
            continue
        ch, usage = body["choices"][0], body.get("usage") or {}
        m = meta[cid]
        cache.put_key(
            cid,
            m["tag"],
            m["model"],
            m["request"],
            Entry(
                ch["message"].get("content") or "",
                ch.get("finish_reason") or "stop",
                usage.get("prompt_tokens", 0),
                usage.get("completion_tokens", 0),
            ),
        )
        counts["imported"] += 1
    return counts
