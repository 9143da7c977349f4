"""Backends: the local engine and the OpenAI-compatible client (retries, concurrency bound, errors)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lmlab.core.backends import LocalBackend, OpenAIBackend, make_backend
from lmlab.core.engine import SamplingParams
from lmlab.core.errors import LmlabError


class FakeOpenAI(BaseHTTPRequestHandler):
    """Answers /v1/chat/completions and /v1/completions; fails the first `fail_first` requests with 429."""

    state = {"n": 0, "fail_first": 0, "active": 0, "max_active": 0, "delay": 0.0}
    lock = threading.Lock()

    def log_message(self, *a):  # keep test output clean
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        st = self.state
        with self.lock:
            st["n"] += 1
            n = st["n"]
            st["active"] += 1
            st["max_active"] = max(st["max_active"], st["active"])
        try:
            time.sleep(st["delay"])
            if n <= st["fail_first"]:
                self.send_response(429)
                self.send_header("Content-Type", "application/json")
                self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(b'{"error": {"message": "slow down"}}')
                return
            if self.path.endswith("/chat/completions"):
                text = "echo: " + body["messages"][-1]["content"]
                choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                obj = "chat.completion"
            else:
                text = "echo: " + body["prompt"]
                choice = {"index": 0, "text": text, "finish_reason": "length"}
                obj = "text_completion"
            out = {
                "id": "x",
                "object": obj,
                "created": 0,
                "model": body["model"],
                "choices": [choice],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
            }
            data = json.dumps(out).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        finally:
            with self.lock:
                st["active"] -= 1


@pytest.fixture()
def server():
    FakeOpenAI.state.update(n=0, fail_first=0, active=0, max_active=0, delay=0.0)
    srv = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1", FakeOpenAI.state
    srv.shutdown()


def test_openai_backend_chat_and_completion(server):
    url, _ = server
    be = make_backend(url, model="m")
    out = be.complete([[{"role": "user", "content": "hi"}], "raw prompt"], SamplingParams(max_new_tokens=5))
    assert [o.text for o in out] == ["echo: hi", "echo: raw prompt"]
    assert be.usage == {"prompt_tokens": 6, "completion_tokens": 4, "requests": 2}


def test_openai_backend_retries_429_with_backoff(server):
    url, st = server
    st["fail_first"] = 2
    be = OpenAIBackend("m", base_url=url, max_retries=3)
    assert be.complete(["x"], SamplingParams())[0].text == "echo: x"
    assert st["n"] == 3
    st.update(n=0, fail_first=10)
    with pytest.raises(LmlabError, match="HTTP 429"):
        OpenAIBackend("m", base_url=url, max_retries=1).complete(["x"], SamplingParams())


def test_openai_backend_bounds_concurrency(server):
    url, st = server
    st["delay"] = 0.05
    be = OpenAIBackend("m", base_url=url, concurrency=3)
    out = be.complete([f"p{i}" for i in range(12)], SamplingParams())
    assert [o.text for o in out] == [f"echo: p{i}" for i in range(12)]  # order preserved
    assert 1 < st["max_active"] <= 3


def test_openai_backend_unreachable_is_one_line_error():
    be = OpenAIBackend("m", base_url="http://127.0.0.1:9/v1", max_retries=0, timeout=2)
    with pytest.raises(LmlabError, match="cannot reach"):
        be.complete(["x"], SamplingParams())


@pytest.mark.slow
def test_local_backend_chat_batch_equals_single():
    be = LocalBackend("smollm2-135m-instruct", dtype="float32")
    chats = [[{"role": "user", "content": q}] for q in ("What is 2+2?", "Name a color.")]
    p = SamplingParams(max_new_tokens=12)
    both = be.complete(chats, p)
    assert [c.text for c in both] == [be.complete([c], p)[0].text for c in chats]
    assert all(c.prompt_tokens > 10 and 0 < c.completion_tokens <= 12 for c in both)
    assert "".join(be.stream(chats[0], p)) == both[0].text
