"""Deterministic stand-ins: a scripted backend keyed on what the prompt asks, and a loopback OpenAI-compatible
server (stdlib http.server) that records how many requests were in flight at once."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from lmlab.core.backends import Completion


def scripted_reply(messages, answer: str = "The answer is 42.", verdict: str = "correct") -> str:
    last = messages[-1]["content"]
    if "numbered list" in last:
        return "1. Find the first part.\n2. Find the second part.\n3. Combine them."
    if last.startswith("Solve this sub-problem"):
        sub = last.rsplit("Sub-problem:", 1)[-1].strip()
        return f"For '{sub}': 2 + 3 = 5."
    if "VERDICT" in last:
        return f"Looks fine. VERDICT: {verdict}"
    if "corrected answer" in last:
        return "Corrected. The answer is 5."
    if "Propose" in last:
        return "1. add two and three\n2. multiply\n3. subtract"
    if "sure, likely or impossible" in last:
        return "likely" if "add" in last else "impossible"
    if "Restate" in last:
        return "The problem, restated."
    return answer


class ScriptedBackend:
    def __init__(
        self, name="scripted", answer="The answer is 42.", verdict="correct", delay=0.0, log: Path | None = None
    ):
        self.name, self.answer, self.verdict, self.delay, self.log = name, answer, verdict, delay, log
        self.calls = 0
        self.lock = threading.Lock()

    def complete(self, prompts, params, json_schema=None):
        out = []
        for p in prompts:
            time.sleep(self.delay)
            with self.lock:
                self.calls += 1
                if self.log is not None:
                    with open(self.log, "a") as f:
                        f.write(json.dumps(p[-1]["content"][:60]) + "\n")
            text = scripted_reply(p, self.answer, self.verdict)
            out.append(Completion(text, "stop", sum(len(m["content"].split()) for m in p), len(text.split())))
        return out

    def stream(self, prompt, params):
        yield self.complete([prompt], params)[0].text


class FakeOpenAIServer:
    """POST /v1/chat/completions answered by `scripted_reply` after `delay` seconds; tracks peak concurrency."""

    def __init__(self, delay: float = 0.2):
        self.delay, self.inflight, self.peak, self.requests = delay, 0, 0, 0
        lock = threading.Lock()
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    outer.inflight += 1
                    outer.requests += 1
                    outer.peak = max(outer.peak, outer.inflight)
                time.sleep(outer.delay)
                text = scripted_reply(body["messages"])
                with lock:
                    outer.inflight -= 1
                resp = {
                    "id": "x",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                    ],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                }
                data = json.dumps(resp).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
