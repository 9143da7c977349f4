"""`lmlab serve`: the OpenAI-compatible server over the native engine, driven through OpenAIBackend and raw HTTP."""

from __future__ import annotations

import json

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from lmlab.core.backends import OpenAIBackend
from lmlab.core.engine import SamplingParams, encode_chat, generate
from lmlab.core.errors import LmlabError
from lmlab.core.serve import ServerThread, create_app

KEY = "test-key"
NAME = "smollm2-135m-instruct"
CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Name a color."}],
    [{"role": "user", "content": "Say hi."}],
]


@pytest.fixture(scope="module")
def server(smollm):
    app = create_app(smollm, model_name=NAME, api_key=KEY, max_tokens_limit=64, max_body_bytes=4096, batch_window_s=0.3)
    with ServerThread(app) as s:
        s.app = app
        yield s


def _local(smollm, chats, n):
    ids = [encode_chat(smollm.tokenizer, c) for c in chats]
    return [
        (g.text, len(g.token_ids), len(i))
        for g, i in zip(generate(smollm.model, smollm.tokenizer, ids, SamplingParams(max_new_tokens=n)), ids)
    ]


def test_chat_matches_local_engine_and_batches_concurrent_requests(server, smollm):
    be = OpenAIBackend(NAME, base_url=server.url, api_key=KEY, concurrency=3)
    before = server.app.state.engine.batches
    got = be.complete(CHATS, SamplingParams(max_new_tokens=8))
    want = _local(smollm, CHATS, 8)
    assert [(c.text, c.completion_tokens, c.prompt_tokens) for c in got] == want
    assert be.usage["requests"] == 3 and be.usage["completion_tokens"] == sum(w[1] for w in want)
    assert server.app.state.engine.batches - before < 3  # concurrent requests were decoded together


def test_completions_and_streaming(server, smollm):
    be = OpenAIBackend(NAME, base_url=server.url, api_key=KEY)
    raw = be.complete(["The capital of France is"], SamplingParams(max_new_tokens=6))[0]
    ids = smollm.tokenizer("The capital of France is").input_ids
    assert raw.text == generate(smollm.model, smollm.tokenizer, [ids], SamplingParams(max_new_tokens=6))[0].text
    streamed = "".join(be.stream(CHATS[0], SamplingParams(max_new_tokens=8)))
    assert streamed == _local(smollm, CHATS[:1], 8)[0][0]


def test_response_format_json_schema(server):
    schema = {
        "title": "Capital",
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12}},
        "required": ["city"],
    }
    be = OpenAIBackend(NAME, base_url=server.url, api_key=KEY)
    c = be.complete([CHATS[0]], SamplingParams(max_new_tokens=20), json_schema=schema)[0]
    assert c.finish_reason == "stop" and set(json.loads(c.text)) == {"city"}


def test_models_and_clear_4xx_errors(server):
    h = {"Authorization": f"Bearer {KEY}"}
    u = server.url
    assert httpx.get(f"{u}/models", headers=h).json()["data"][0]["id"] == NAME
    assert httpx.get(f"{u}/models").status_code == 401
    chat = {"messages": CHATS[0], "max_tokens": 4}
    cases = [
        ({**chat, "max_tokens": 65}, 400, "limit of 64"),
        ({**chat, "model": "gpt-9"}, 404, "not served"),
        ({"max_tokens": 4}, 400, "messages"),
        ({**chat, "temperature": 5}, 400, "temperature"),
        (
            {**chat, "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "nope"}}}},
            400,
            "json schema",
        ),
        ({**chat, "response_format": {"type": "xml"}}, 400, "not supported"),
        ({**chat, "messages": [{"role": "user", "content": "x" * 5000}]}, 413, "exceeds the limit"),
    ]
    for body, status, text in cases:
        r = httpx.post(f"{u}/chat/completions", json=body, headers=h)
        assert r.status_code == status and text in r.json()["error"]["message"], (body, r.text)
    r = httpx.post(f"{u}/chat/completions", content=b"{not json", headers={**h, "content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()
    with pytest.raises(LmlabError, match="authentication"):
        OpenAIBackend(NAME, base_url=u, api_key="wrong", max_retries=0).complete(
            [CHATS[0]], SamplingParams(max_new_tokens=2)
        )


def test_unreachable_server_is_one_line_error():
    be = OpenAIBackend(NAME, base_url="http://127.0.0.1:9/v1", max_retries=0, timeout=2)
    with pytest.raises(LmlabError, match="cannot reach"):
        be.complete(["hi"], SamplingParams(max_new_tokens=2))


def test_response_format_fallback_when_server_rejects_it():
    """A server without structured outputs: the backend retries without response_format and remembers it."""
    app, seen = FastAPI(), []

    @app.post("/v1/chat/completions")
    async def chat(req: Request):
        body = await req.json()
        seen.append("response_format" in body)
        if "response_format" in body:
            return JSONResponse(
                {"error": {"message": "response_format is not supported", "type": "invalid_request_error"}},
                status_code=400,
            )
        return {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": '{"a": 1}'}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
        }

    with ServerThread(app) as s:
        be = OpenAIBackend("m", base_url=s.url, max_retries=0, concurrency=1)
        schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
        out = be.complete(["q", "q"], SamplingParams(max_new_tokens=4), json_schema=schema)
    assert [c.text for c in out] == ['{"a": 1}'] * 2 and seen == [True, False, False]
    assert not be.supports_response_format and be.usage == {"prompt_tokens": 6, "completion_tokens": 8, "requests": 2}


def test_lmlab_serve_command_in_a_subprocess(smollm, tmp_path):
    """The CLI command end to end: binds loopback on the given port, requires the key, answers, exits on SIGTERM."""
    import os
    import socket
    import subprocess
    import sys
    import time

    import torch

    from lmlab.core.config import ModelConfig
    from lmlab.core.loader import save_checkpoint
    from lmlab.core.model import Transformer

    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=49152,
        hidden_size=32,
        intermediate_size=64,
        num_layers=1,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        eos_token_id=smollm.tokenizer.eos_token_id,
    )
    save_checkpoint(Transformer(cfg), smollm.tokenizer, tmp_path / "tiny")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lmlab.cli",
            "serve",
            "--model",
            str(tmp_path / "tiny"),
            "--port",
            str(port),
            "--api-key",
            KEY,
            "--dtype",
            "float32",
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        url, deadline = f"http://127.0.0.1:{port}/v1", time.time() + 90
        while True:
            try:
                r = httpx.get(f"{url}/models", headers={"Authorization": f"Bearer {KEY}"})
                break
            except httpx.ConnectError:
                assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()[-2000:]
                time.sleep(0.2)
        assert r.status_code == 200 and r.json()["data"][0]["id"] == str(tmp_path / "tiny")
        be = OpenAIBackend(str(tmp_path / "tiny"), base_url=url, api_key=KEY)
        c = be.complete([CHATS[0]], SamplingParams(max_new_tokens=3))[0]
        assert (
            c.completion_tokens == 3 and c.finish_reason == "length"
        )  # random weights: EOS has ~1/49152 odds per step
    finally:
        proc.terminate()
        proc.wait(timeout=30)
