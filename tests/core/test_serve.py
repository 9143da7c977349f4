"""`lmlab serve`: the OpenAI-compatible server over the native engine, driven through OpenAIBackend and raw HTTP,
and its continuous-batching scheduler (core.scheduler) driven directly.

Exactness: on lmlab's CPU kernels (`kernels.enabled()`, AVX-512) every row's logits are bit-identical whatever its
batch mates, so batched outputs equal lone ones by construction. Elsewhere (this AVX2 machine: torch's GEMM and a
masked SDPA for rows of different lengths) rows agree to rounding only; the asserts below (identical greedy token
ids for these short outputs on the embedded model, identical seeded samples) are what was measured to hold there,
not a guarantee for long outputs."""

from __future__ import annotations

import copy
import json
import threading
import time
from types import SimpleNamespace

import httpx
import pytest
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client.parser import text_string_to_metric_families

from lmlab.core import kernels
from lmlab.core.backends import OpenAIBackend
from lmlab.core.config import ModelConfig
from lmlab.core.engine import SamplingParams, StreamEvent, encode_chat, generate
from lmlab.core.errors import LmlabError
from lmlab.core.loadtest import rss_mb, run_load
from lmlab.core.model import Transformer
from lmlab.core.scheduler import QueueTimeout, Scheduler, Sequence
from lmlab.core.serve import ServerThread, create_app

KEY = "test-key"
NAME = "smollm2-135m-instruct"
CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Name a color."}],
    [{"role": "user", "content": "Say hi."}],
]
NO_SYSTEM = (
    "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('system messages are not supported') }}"
    "{% endif %}{{ m.content }}{% endfor %}"
)


@pytest.fixture(scope="module")
def server(smollm):
    app = create_app(smollm, model_name=NAME, api_key=KEY, max_tokens_limit=64, max_body_bytes=4096)
    with ServerThread(app) as s:
        s.app = app
        yield s


@pytest.fixture(scope="module")
def tiny(smollm):
    """A 1-layer random model with the embedded tokenizer (random text, ~1 ms a step) and a template that refuses
    system messages; EOS has ~1/49152 odds a step, so generations run to max_tokens."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=49152,
        hidden_size=32,
        intermediate_size=64,
        num_layers=1,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        max_position_embeddings=1024,
        eos_token_id=smollm.tokenizer.eos_token_id,
    )
    tok = copy.deepcopy(smollm.tokenizer)
    tok.chat_template = NO_SYSTEM
    return SimpleNamespace(model=Transformer(cfg).eval(), tokenizer=tok)


def tiny_server(tiny, **kw):
    kw = {"model_name": "tiny", "max_tokens_limit": 1024, "max_body_bytes": 4096, **kw}
    s = ServerThread(create_app(tiny, **kw))
    s.app = s.server.config.app
    return s


def _lone(lm, prompt, params):
    return generate(lm.model, lm.tokenizer, [prompt], params)[0]


class Recorder:
    """A scheduler sink that records events per sequence (and the order in which sequences finish)."""

    def __init__(self):
        self.events: dict[int, list[StreamEvent]] = {}
        self.finished: list[int] = []
        self.done = threading.Event()
        self.expect = 0
        self.hooks = {}  # key -> fn(events) called after every event of that key

    def sink(self, key):
        def put(_choice, ev):
            assert not isinstance(ev, Exception), ev
            self.events.setdefault(key, []).append(ev)
            if key in self.hooks:
                self.hooks[key](self.events[key])
            if ev.finish_reason:
                self.finished.append(key)
                if len(self.finished) == self.expect:
                    self.done.set()

        return put

    def ids(self, key):
        return [e.token_id for e in self.events[key] if e.token_id is not None]

    def text(self, key):
        return "".join(e.text for e in self.events[key])


# ------------------------------------------------------------------------------------------ scheduler
def test_rows_join_and_leave_between_steps_and_match_lone_requests(smollm):
    """A long prompt prefills in pieces; two requests join while it decodes; the short one leaves first; every
    output equals its lone greedy run (token ids)."""
    tok = smollm.tokenizer
    long_ = encode_chat(tok, [{"role": "user", "content": "Write a haiku about rain on a tin roof at night."}])
    b = encode_chat(tok, CHATS[1])
    c = encode_chat(tok, CHATS[2])
    p = {k: SamplingParams(max_new_tokens=n) for k, n in (("a", 8), ("b", 4), ("c", 5))}
    sched = Scheduler(smollm.model, tok, max_batch=4, prefill_chunk=32)
    rec = Recorder()
    rec.expect = 3

    def join(evs):  # after A's second token: B and C arrive while A is decoding
        if len(evs) == 2:
            sched.submit([Sequence(b, p["b"], 4, 0, rec.sink("b"))])
            sched.submit([Sequence(c, p["c"], 5, 0, rec.sink("c"))])

    rec.hooks["a"] = join
    try:
        sched.submit([Sequence(long_, p["a"], 8, 0, rec.sink("a"))])
        assert rec.done.wait(120)
        stats = sched.stats
    finally:
        sched.close()
    assert len(long_) > 32 and stats.prefill_pieces >= 2 + -(-len(long_) // 32)  # A's prompt went in pieces
    assert stats.max_running == 3 and sched.running == [] and sched.cache.lengths == [0] * 4  # slots freed
    assert rec.finished.index("b") < rec.finished.index("a")  # B left the batch while A kept decoding
    for k, prompt in (("a", long_), ("b", b), ("c", c)):
        lone = _lone(smollm, prompt, p[k])
        assert rec.ids(k) == lone.token_ids and rec.text(k) == lone.text, (k, kernels.enabled())


def test_seeded_rows_do_not_depend_on_their_batch_mates(smollm):
    """Per-row generators: a seeded request samples the same text alone and in a batch; two rows with the same seed
    and prompt in one batch agree (one shared generator, as the static-batching server had, would split them)."""
    tok = smollm.tokenizer
    ids = [encode_chat(tok, c) for c in CHATS]
    params = [SamplingParams(max_new_tokens=8, temperature=1.0, seed=s) for s in (7, 7, 11)]
    prompts = [ids[0], ids[0], ids[1]]
    sched = Scheduler(smollm.model, tok, max_batch=4)
    rec = Recorder()
    rec.expect = 4
    try:
        sched.submit([Sequence(ids[0], params[0], 8, 0, rec.sink("alone"))])
        rec.hooks["alone"] = lambda evs: (
            evs[-1].finish_reason
            and [sched.submit([Sequence(pr, pa, 8, 0, rec.sink(k))]) for k, pr, pa in zip((0, 1, 2), prompts, params)]
        )
        assert rec.done.wait(120)
        assert sched.stats.max_running == 3
    finally:
        sched.close()
    assert rec.text("alone") == rec.text(0) == rec.text(1) and rec.text(2) != rec.text(0)


def test_cancel_frees_the_slot_within_one_step(tiny):
    """A sequence cancelled on its 3rd token gets no 4th; its batch mate runs to the end."""
    sched = Scheduler(tiny.model, tiny.tokenizer, max_batch=2)
    rec = Recorder()
    rec.expect = 1
    prompt = tiny.tokenizer("hello there").input_ids
    try:
        handle = sched.submit([Sequence(prompt, SamplingParams(max_new_tokens=200), 200, 0, rec.sink("x"))])
        rec.hooks["x"] = lambda evs: len(evs) == 3 and handle.cancel()
        sched.submit([Sequence(prompt, SamplingParams(max_new_tokens=40), 40, 0, rec.sink("y"))])
        assert rec.done.wait(60)
        time.sleep(0.05)
        assert len(rec.events["x"]) == 3 and len(rec.ids("y")) == 40
        assert sched.stats.cancelled == 1 and sched.running == []
    finally:
        sched.close()


# ------------------------------------------------------------------------------------------ HTTP, embedded model
def test_chat_matches_lone_requests_and_batches_concurrent_ones(server, smollm):
    be = OpenAIBackend(NAME, base_url=server.url, api_key=KEY, concurrency=3)
    got = be.complete(CHATS, SamplingParams(max_new_tokens=8))
    want = []
    for c in CHATS:
        ids = encode_chat(smollm.tokenizer, c)
        g = _lone(smollm, ids, SamplingParams(max_new_tokens=8))
        want.append((g.text, len(g.token_ids), len(ids)))
    assert [(c.text, c.completion_tokens, c.prompt_tokens) for c in got] == want
    assert be.usage["requests"] == 3 and be.usage["completion_tokens"] == sum(w[1] for w in want)
    assert server.app.state.engine.stats.max_running >= 2  # concurrent requests were decoded together


def test_completions_and_streaming(server, smollm):
    be = OpenAIBackend(NAME, base_url=server.url, api_key=KEY)
    raw = be.complete(["The capital of France is"], SamplingParams(max_new_tokens=6))[0]
    ids = smollm.tokenizer("The capital of France is").input_ids
    assert raw.text == _lone(smollm, ids, SamplingParams(max_new_tokens=6)).text
    streamed = "".join(be.stream(CHATS[0], SamplingParams(max_new_tokens=8)))
    assert streamed == _lone(smollm, encode_chat(smollm.tokenizer, CHATS[0]), SamplingParams(max_new_tokens=8)).text


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
        ({**chat, "n": 17}, 400, "n=17 exceeds this server's batch limit of 16"),
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


# ------------------------------------------------------------------------------------------ HTTP, tiny model
def test_limits_errors_health_and_metrics(tiny):
    with tiny_server(tiny, max_batch=4) as s:
        u = s.url
        chat = {"messages": [{"role": "user", "content": "hi"}]}
        n_prompt = len(encode_chat(tiny.tokenizer, chat["messages"]))
        r = httpx.post(f"{u}/chat/completions", json={**chat, "max_tokens": 1024})
        assert r.status_code == 400 and f"prompt of {n_prompt} tokens + max_tokens=1024" in r.text
        assert "context window of 1024 tokens" in r.json()["error"]["message"]
        r = httpx.post(f"{u}/chat/completions", json={**chat, "n": 5})
        assert r.status_code == 400 and "n=5 exceeds this server's batch limit of 4" in r.text
        r = httpx.post(f"{u}/chat/completions", json={"messages": [{"role": "system", "content": "x"}]})
        assert r.status_code == 400 and "chat template" in r.json()["error"]["message"]
        r = httpx.post(f"{u}/chat/completions", content=b"x", headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
        for bad in (httpx.get(f"{u}/nope"), httpx.get(f"{u}/chat/completions")):
            assert bad.status_code in (404, 405) and "message" in bad.json()["error"]
        seeded = {**chat, "max_tokens": 5, "n": 3, "seed": 1, "temperature": 1}
        r, again = (httpx.post(f"{u}/chat/completions", json=seeded) for _ in range(2))
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 15
        assert r.json()["choices"] == again.json()["choices"]  # seeded: reproducible, choice by choice
        base = u.removesuffix("/v1")
        assert httpx.get(f"{base}/health").json() == {"status": "ok", "model": "tiny", "running": 0, "waiting": 0}
        fams = {f.name: f for f in text_string_to_metric_families(httpx.get(f"{base}/metrics").text)}
        samples = {(x.name, tuple(sorted(x.labels.items()))): x.value for f in fams.values() for x in f.samples}
        assert samples[("lmlab_requests_total", (("code", "200"), ("endpoint", "/v1/chat/completions")))] == 2
        assert samples[("lmlab_requests_total", (("code", "400"), ("endpoint", "/v1/chat/completions")))] == 4
        assert samples[("lmlab_generation_tokens_total", ())] == 30
        assert samples[("lmlab_sequences_finished_total", (("reason", "length"),))] == 6
        assert samples[("lmlab_batch_size_count", ())] >= 4 and samples[("lmlab_queue_depth", ())] == 0
        assert {"lmlab_time_to_first_token_seconds", "lmlab_request_duration_seconds"} <= set(fams)


def _health(s):
    return httpx.get(s.url.removesuffix("/v1") + "/health").json()


def _wait(cond, timeout=30):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_bounded_queue_429_and_cancel_on_disconnect(tiny):
    """One slot, one queue place: a third request gets 429 + Retry-After; a streaming client that hangs up and a
    non-streaming one that hangs up both have their sequences cancelled, and the queued request then runs."""
    with tiny_server(tiny, max_batch=1, max_queue=1) as s:
        chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000}
        client = httpx.Client(timeout=60)
        stream = client.stream("POST", f"{s.url}/chat/completions", json={**chat, "stream": True})
        resp = stream.__enter__()
        lines = resp.iter_lines()
        assert next(x for x in lines if x.startswith("data: "))  # the first chunk: it holds the slot
        queued = {}
        t = threading.Thread(
            target=lambda: queued.update(r=httpx.post(f"{s.url}/chat/completions", json={**chat, "max_tokens": 3}))
        )
        t.start()
        _wait(lambda: _health(s)["waiting"] == 1)
        r = httpx.post(f"{s.url}/chat/completions", json=chat)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and "busy" in r.json()["error"]["message"]
        stream.__exit__(None, None, None)  # hang up mid-stream
        client.close()
        t.join(60)
        assert queued["r"].status_code == 200 and queued["r"].json()["usage"]["completion_tokens"] == 3
        eng = s.app.state.engine
        assert eng.stats.cancelled == 1 and eng.stats.generated_tokens < 1000
        # a non-streaming client that gives up: its generation stops too
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{s.url}/chat/completions", json=chat, timeout=0.5)
        _wait(lambda: eng.stats.cancelled == 2)
        assert _health(s)["running"] == 0 and eng.stats.generated_tokens < 2000


def test_request_time_limit_cuts_the_generation(tiny):
    with tiny_server(tiny, request_timeout_s=0.3) as s:
        t = time.monotonic()
        r = httpx.post(
            f"{s.url}/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000}
        )
        assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "length"
        assert r.json()["usage"]["completion_tokens"] < 1000 and time.monotonic() - t < 10
        assert s.app.state.engine.stats.timed_out == 1


def test_load_and_faults_short(tiny):
    """64 concurrent clients, 128 requests mixing streaming, JSON schemas, bad JSON, oversized bodies, unknown
    models and hang-ups: no 5xx, nothing left hanging, every accepted request answered, memory bounded."""
    with tiny_server(tiny, max_batch=8, max_queue=24) as s:
        before = rss_mb()
        rep = run_load(s.url, "tiny", clients=64, per_client=2, max_tokens=12, body_limit=4096, request_timeout_s=60)
    assert rep["passed"], rep
    assert rep["server_5xx"] == 0 and rep["requests"] == 128 and rep["accepted"] >= 40 and rep["hung_up"] >= 1
    assert rep["rss_mb"]["peak"] - before < 500, rep["rss_mb"]


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


def test_lmlab_serve_command_drains_on_sigterm_and_exits_0(smollm, tmp_path):
    """The CLI command end to end: binds loopback on the given port, requires the key, answers; on SIGTERM a
    running streaming request still gets all its tokens, and the process exits 0."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    from lmlab.core.loader import save_checkpoint

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
    cmd = [sys.executable, "-m", "lmlab.cli", "serve", "--model", str(tmp_path / "tiny"), "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, "--api-key", KEY, "--dtype", "float32"],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    h = {"Authorization": f"Bearer {KEY}"}
    try:
        url, deadline = f"http://127.0.0.1:{port}/v1", time.time() + 90
        while True:
            try:
                r = httpx.get(f"{url}/models", headers=h)
                break
            except httpx.ConnectError:
                assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()[-2000:]
                time.sleep(0.2)
        assert r.status_code == 200 and r.json()["data"][0]["id"] == str(tmp_path / "tiny")
        be = OpenAIBackend(str(tmp_path / "tiny"), base_url=url, api_key=KEY)
        c = be.complete([CHATS[0]], SamplingParams(max_new_tokens=3))[0]
        assert c.completion_tokens == 3 and c.finish_reason == "length"  # random weights: EOS ~1/49152 a step
        body = {"messages": CHATS[0], "max_tokens": 200, "stream": True}
        reasons, done = [], False
        with httpx.stream("POST", f"{url}/chat/completions", json=body, headers=h, timeout=60) as resp:
            for line in resp.iter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    break
                if not reasons:
                    proc.send_signal(signal.SIGTERM)  # mid-stream
                reasons.append(json.loads(line[6:])["choices"][0]["finish_reason"])
        assert done and reasons[-1] == "length" and len(reasons) > 10
        assert proc.wait(timeout=60) == 0, proc.stderr.read().decode()[-2000:]
        assert b"drained" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def test_queued_request_past_its_deadline_is_refused_while_the_slot_stays_busy(tiny):
    sched = Scheduler(tiny.model, tiny.tokenizer, max_batch=1)
    rec, got = Recorder(), []
    prompt = tiny.tokenizer("hello").input_ids
    try:
        busy = sched.submit([Sequence(prompt, SamplingParams(max_new_tokens=1000), 1000, 0, rec.sink("busy"))])
        deadline = time.monotonic() + 0.2
        sched.submit(
            [Sequence(prompt, SamplingParams(max_new_tokens=4), 4, 0, lambda c, ev: got.append(ev), None, deadline)]
        )
        _wait(lambda: got, timeout=30)
        assert isinstance(got[0], QueueTimeout) and len(sched.waiting) == 0 and sched.stats.timed_out == 1
        assert len(sched.running) == 1 and not rec.finished  # the busy row was never disturbed
        busy.cancel()
        _wait(lambda: not sched.running)
    finally:
        sched.close()
