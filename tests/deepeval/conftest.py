"""Loopback HTTP servers for the image downloader and the OpenAI-compatible vision chat (never the internet)."""

from __future__ import annotations

import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


def png_bytes(color=(200, 30, 30), size=(24, 16)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


class Server:
    def __init__(self, handler_fn):
        state = self
        self.requests: list[dict] = []
        self.hits: dict[str, int] = {}

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _do(self, method):
                n = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(n) if n else b""
                state.hits[self.path] = state.hits.get(self.path, 0) + 1
                if body:
                    state.requests.append(json.loads(body))
                status, headers, payload = handler_fn(method, self.path, body, state.hits[self.path])
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):
                self._do("GET")

            def do_POST(self):
                self._do("POST")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(fn):
        s = Server(fn)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()
