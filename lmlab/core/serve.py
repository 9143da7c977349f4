"""`lmlab serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) over the native engine.

Endpoints: GET /v1/models, POST /v1/chat/completions (SSE streaming too), POST /v1/completions, with
`response_format` json_schema / json_object decoded under an xgrammar grammar (core.structured); GET /health and
GET /metrics (Prometheus text format).

Concurrency: continuous batching (core.scheduler, as in vLLM and llama.cpp's server): every choice of every request
is a sequence that takes one of `max_batch` slots, joins the running batch between two decode steps (its prompt
prefilled in pieces meanwhile) and leaves it the step it finishes, so a short request never waits for a long one
and a new one never waits for a batch to drain. Each sequence has its own parameters, grammar and seeded
generator: a seeded reply does not depend on what else is running.

Limits: a bounded queue (429 + Retry-After when full), prompt + max_tokens beyond the context -> 400 naming both,
n <= max_batch, a per-request time limit, request-body and max_tokens limits; a client that disconnects has its
sequences cancelled within one engine step. Chat templates, tokenizing and grammar compilation run in a worker
pool, off the event loop. Every error is an OpenAI-style {"error": {...}} JSON body. SIGTERM drains: uvicorn stops
accepting, running requests finish, the process exits 0.

Safety: binds 127.0.0.1 by default; optional bearer API key on /v1.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, Optional, Union

from fastapi import Request  # at module level: FastAPI resolves the endpoints' annotations in this namespace
from pydantic import BaseModel, ConfigDict, Field

from .engine import SamplingParams, encode_chat
from .errors import LmlabError
from .scheduler import QueueFull, QueueTimeout, Scheduler, Sequence
from .scheduler import Request as Request_


# ------------------------------------------------------------------------------------------ requests
class _Req(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: Optional[str] = None
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=1024)  # the server's batch limit is checked in plan()
    stream: bool = False
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = None
    ignore_eos: bool = False  # vLLM's extension: run to max_tokens (benchmarks)


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: Union[str, list[dict[str, Any]], None] = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "".join(p.get("text", "") for p in self.content if p.get("type") == "text")


class ChatRequest(_Req):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    response_format: Optional[dict[str, Any]] = None


class CompletionRequest(_Req):
    prompt: Union[str, list[str]]


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        kind: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind
        self.headers = headers or {}


def _schema_of(response_format: dict[str, Any] | None) -> dict | None:
    if not response_format or response_format.get("type") == "text":
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema")
        if not isinstance(schema, dict):
            raise ApiError(400, "response_format.json_schema.schema must be a JSON schema object", "response_format")
        return schema
    raise ApiError(
        400, f"response_format.type {kind!r} is not supported (use text, json_object or json_schema)", "response_format"
    )


# ------------------------------------------------------------------------------------------ metrics
class Metrics:
    """Prometheus metrics of one app (its own registry, so several apps in one process do not collide)."""

    def __init__(self, sched: Scheduler):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        lat = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
        self.requests = Counter("lmlab_requests", "HTTP requests answered", ["endpoint", "code"], registry=r)
        self.latency = Histogram(
            "lmlab_request_duration_seconds", "Time to the full answer", ["endpoint"], buckets=lat, registry=r
        )
        self.ttft = Histogram("lmlab_time_to_first_token_seconds", "Arrival to first token", buckets=lat, registry=r)
        self.prompt_tokens = Counter("lmlab_prompt_tokens", "Prompt tokens prefilled", registry=r)
        self.generation_tokens = Counter("lmlab_generation_tokens", "Tokens generated", registry=r)
        self.finished = Counter("lmlab_sequences_finished", "Sequences finished", ["reason"], registry=r)
        self.rejected = Counter("lmlab_requests_rejected", "Requests refused for lack of room", ["reason"], registry=r)
        self.batch = Histogram(
            "lmlab_batch_size", "Rows per decode step", buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r
        )
        self.step = Histogram(
            "lmlab_decode_step_seconds",
            "Decode step time",
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2),
            registry=r,
        )
        Gauge("lmlab_queue_depth", "Sequences waiting for a slot", registry=r).set_function(lambda: len(sched.waiting))
        Gauge("lmlab_running_sequences", "Sequences holding a slot (prefilling or decoding)", registry=r).set_function(
            lambda: len(sched.running) + len(sched.prefilling)
        )
        Gauge("lmlab_max_batch", "Slots", registry=r).set(sched.max_batch)

    def on_step(self, rows: int, seconds: float) -> None:
        self.batch.observe(rows)
        self.step.observe(seconds)

    def on_finish(self, s: Sequence, reason: str) -> None:
        self.finished.labels(reason).inc()
        self.generation_tokens.inc(s.generated)
        if s.text is not None:  # it was admitted (prefilled)
            self.prompt_tokens.inc(len(s.prompt))
        if s.first_token_at is not None:
            self.ttft.observe(s.first_token_at - s.arrived)


# ------------------------------------------------------------------------------------------ app
def create_app(
    lm: Any,
    model_name: str = "smollm2-135m-instruct",
    api_key: str | None = None,
    max_tokens_limit: int = 2048,
    max_body_bytes: int = 1 << 20,
    max_batch: int = 16,
    batch_window_s: float | None = None,  # accepted for callers of the static-batching server; no window any more
    max_queue: int | None = None,
    prefill_chunk: int = 256,
    request_timeout_s: float = 600.0,
) -> Any:
    """The FastAPI app serving `lm` (a loader.LoadedModel) under `model_name`.

    max_batch: rows decoded together (slots); max_queue: sequences that may wait for a slot (default 4 x max_batch;
    beyond it 429 + Retry-After); prefill_chunk: prompt tokens prefilled between two decode steps;
    request_timeout_s: a request still queued then gets 429, a running one is cut (finish_reason "length")."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.exceptions import HTTPException as StarletteHTTPException

    del batch_window_s
    tok = lm.tokenizer
    ctx_len = lm.model.cfg.max_position_embeddings
    sched = Scheduler(
        lm.model, tok, max_batch=max_batch, max_queue=max_queue or 4 * max_batch, prefill_chunk=prefill_chunk
    )
    metrics = Metrics(sched)
    sched.on_step, sched.on_finish = metrics.on_step, metrics.on_finish
    cpu = ThreadPoolExecutor(max_workers=2, thread_name_prefix="lmlab-serve-cpu")  # templates, tokenizing, grammars

    @asynccontextmanager
    async def lifespan(_: Any) -> Any:
        yield
        sched.close()  # uvicorn has drained the running requests by now (graceful shutdown)
        cpu.shutdown(wait=False)

    app = FastAPI(title="lmlab", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.engine, app.state.metrics = sched, metrics

    def err(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error", **headers: str):
        body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
        return JSONResponse(body, status_code=status, headers=headers or None)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, e: ApiError) -> JSONResponse:
        return err(e.status, e.message, e.param, e.kind, **e.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {"loc": (), "msg": "invalid request"}
        loc = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return err(400, f"{loc or 'body'}: {first.get('msg')}", loc or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        return err(
            e.status_code, str(e.detail), kind="not_found_error" if e.status_code == 404 else "invalid_request_error"
        )

    @app.exception_handler(Exception)
    async def _crash(_: Request, e: Exception) -> JSONResponse:  # a bug: still an OpenAI-style body, never a bare 500
        return err(500, f"internal error: {type(e).__name__}: {e}", kind="server_error")

    app.add_middleware(_Guard, api_key=api_key, max_body_bytes=max_body_bytes, metrics=metrics)

    def check_model(name: str | None) -> None:
        if name is not None and name != model_name:
            raise ApiError(
                404,
                f"model {name!r} is not served here (this server serves {model_name!r})",
                "model",
                "model_not_found",
            )

    def plan(r: _Req, max_tokens: int | None, prompt_len: int) -> tuple[SamplingParams, int]:
        """Sampling parameters and the number of new tokens; 400 for what cannot be honoured (never truncated)."""
        if prompt_len == 0:
            raise ApiError(400, "empty prompt", "prompt")
        if prompt_len >= ctx_len:
            raise ApiError(
                400, f"prompt of {prompt_len} tokens does not fit the context window of {ctx_len} tokens", "messages"
            )
        if max_tokens is not None and max_tokens > max_tokens_limit:
            raise ApiError(
                400, f"max_tokens={max_tokens} exceeds this server's limit of {max_tokens_limit}", "max_tokens"
            )
        if max_tokens is not None and prompt_len + max_tokens > ctx_len:
            raise ApiError(
                400,
                f"prompt of {prompt_len} tokens + max_tokens={max_tokens} = {prompt_len + max_tokens} exceeds the "
                f"context window of {ctx_len} tokens (lower max_tokens to {ctx_len - prompt_len} or shorten the prompt)",
                "max_tokens",
            )
        if r.n > max_batch:
            raise ApiError(
                400, f"n={r.n} exceeds this server's batch limit of {max_batch} (send several requests)", "n"
            )
        stop = [r.stop] if isinstance(r.stop, str) else list(r.stop or [])
        new = max_tokens or min(max_tokens_limit, ctx_len - prompt_len)  # no max_tokens: up to the context
        return SamplingParams(
            max_new_tokens=new,
            temperature=r.temperature,
            top_p=r.top_p,
            seed=r.seed,
            stop=stop,
            ignore_eos=r.ignore_eos,
        ), new

    async def off_loop(fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(cpu, fn, *args)

    def compile_grammar(schema: dict | None) -> None:
        if schema is not None:
            from .structured import compile_schema

            try:
                compile_schema(tok, schema, lm.model.cfg.vocab_size)
            except LmlabError as e:
                raise ApiError(400, str(e), "response_format") from None

    def chat_ids(messages: list[dict[str, str]], schema: dict | None) -> list[int]:
        compile_grammar(schema)
        try:
            return encode_chat(tok, messages)
        except Exception as e:  # jinja2 TemplateError, a template's raise_exception(...), bad roles
            raise ApiError(400, f"chat template: {type(e).__name__}: {e}", "messages") from None

    def submit(
        ids: list[int], r: _Req, params: SamplingParams, new: int, schema: dict | None
    ) -> tuple[Request_, asyncio.Queue]:
        loop, events = asyncio.get_running_loop(), asyncio.Queue()

        def sink(choice: int, ev: Any) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, (choice, ev))
            except RuntimeError:  # the loop is gone (process exiting)
                pass

        procs = [None] * r.n
        if schema is not None:
            from .structured import json_schema_processor

            procs = [json_schema_processor(tok, schema, 1) for _ in range(r.n)]
        deadline, group = time.monotonic() + request_timeout_s, object()
        seqs = [Sequence(list(ids), params, new, i, sink, procs[i], deadline, group) for i in range(r.n)]
        try:
            return sched.submit(seqs), events
        except QueueFull as e:
            metrics.rejected.labels("queue_full").inc()
            raise ApiError(
                429, str(e), kind="rate_limit_error", headers={"Retry-After": str(int(e.retry_after_s))}
            ) from None

    def failure(ev: Exception) -> ApiError:
        if isinstance(ev, QueueTimeout):
            metrics.rejected.labels("queue_timeout").inc()
            return ApiError(429, f"server busy: {ev}", kind="rate_limit_error", headers={"Retry-After": "5"})
        return ApiError(500, f"generation failed: {type(ev).__name__}: {ev}", kind="server_error")

    async def hangup(request: Request, handle: Request_) -> None:
        """Cancel the request's sequences when its client disconnects (checked by the engine every step)."""
        while True:
            msg = await request.receive()
            if msg["type"] == "http.disconnect":
                handle.cancel()
                return

    async def collect(
        request: Request, handle: Request_, events: asyncio.Queue, n: int
    ) -> tuple[list[str], list[str], int]:
        watch = asyncio.create_task(hangup(request, handle))
        try:
            texts, reasons, tokens, open_ = [""] * n, ["length"] * n, 0, n
            while open_:
                choice, ev = await events.get()
                if isinstance(ev, Exception):
                    handle.cancel()
                    raise failure(ev)
                texts[choice] += ev.text
                tokens += ev.token_id is not None
                if ev.finish_reason:
                    reasons[choice], open_ = ev.finish_reason, open_ - 1
            return texts, reasons, tokens
        finally:
            watch.cancel()
            handle.cancel()  # no-op once finished; frees the slots if this task was cancelled

    def sse(request: Request, handle: Request_, events: asyncio.Queue, n: int, make_chunk: Any) -> StreamingResponse:
        async def body() -> Any:
            watch = asyncio.create_task(hangup(request, handle))
            try:
                open_ = n
                while open_:
                    choice, ev = await events.get()
                    if isinstance(ev, Exception):
                        e = failure(ev)
                        yield f"data: {json.dumps({'error': {'message': e.message, 'type': e.kind}})}\n\n"
                        break
                    if ev.text or ev.finish_reason:
                        yield f"data: {json.dumps(make_chunk(choice, ev.text, ev.finish_reason))}\n\n"
                    open_ -= ev.finish_reason is not None
                yield "data: [DONE]\n\n"
            finally:
                watch.cancel()
                handle.cancel()

        return StreamingResponse(body(), media_type="text/event-stream")

    @app.get("/health")
    async def health() -> dict:
        return {
            "status": "ok",
            "model": model_name,
            "running": len(sched.running) + len(sched.prefilling),
            "waiting": len(sched.waiting),
        }

    @app.get("/metrics")
    async def prom() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "lmlab"}]}

    @app.post("/v1/chat/completions")
    async def chat(r: ChatRequest, request: Request) -> Any:
        check_model(r.model)
        schema = _schema_of(r.response_format)
        msgs = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in r.messages]
        ids = await off_loop(chat_ids, msgs, schema)
        params, new = plan(r, r.max_completion_tokens or r.max_tokens, len(ids))
        handle, events = submit(ids, r, params, new, schema)
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if r.stream:

            def chunk(i: int, text: str, reason: str | None) -> dict:
                return {
                    "id": rid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model_name,
                    "choices": [{"index": i, "delta": {"role": "assistant", "content": text}, "finish_reason": reason}],
                }

            return sse(request, handle, events, r.n, chunk)
        texts, reasons, ntok = await collect(request, handle, events, r.n)
        return {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": model_name,
            "choices": [
                {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": f}
                for i, (t, f) in enumerate(zip(texts, reasons))
            ],
            "usage": {"prompt_tokens": len(ids), "completion_tokens": ntok, "total_tokens": len(ids) + ntok},
        }

    @app.post("/v1/completions")
    async def completions(r: CompletionRequest, request: Request) -> Any:
        check_model(r.model)
        prompts = [r.prompt] if isinstance(r.prompt, str) else r.prompt
        if len(prompts) != 1:
            raise ApiError(400, "send one prompt per request (batching happens on the server)", "prompt")
        ids = (await off_loop(tok, prompts[0])).input_ids
        params, new = plan(r, r.max_tokens or 16, len(ids))  # OpenAI's legacy default is 16 tokens
        handle, events = submit(ids, r, params, new, None)
        rid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if r.stream:

            def chunk(i: int, text: str, reason: str | None) -> dict:
                return {
                    "id": rid,
                    "object": "text_completion",
                    "created": created,
                    "model": model_name,
                    "choices": [{"index": i, "text": text, "finish_reason": reason}],
                }

            return sse(request, handle, events, r.n, chunk)
        texts, reasons, ntok = await collect(request, handle, events, r.n)
        return {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": model_name,
            "choices": [{"index": i, "text": t, "finish_reason": f} for i, (t, f) in enumerate(zip(texts, reasons))],
            "usage": {"prompt_tokens": len(ids), "completion_tokens": ntok, "total_tokens": len(ids) + ntok},
        }

    return app


class _Guard:
    """Pure ASGI middleware (streams and disconnects pass straight through, unlike BaseHTTPMiddleware): the API key
    on /v1, body-size limits before the body is read, and per-endpoint request counts and latencies."""

    def __init__(self, app: Any, api_key: str | None, max_body_bytes: int, metrics: Metrics):
        self.app, self.api_key, self.max_body_bytes, self.metrics = app, api_key, max_body_bytes, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from fastapi.responses import JSONResponse

        path, t0, status = scope["path"], time.monotonic(), [500]
        endpoint = path if path in _ENDPOINTS else "other"

        async def send_(msg: dict) -> None:
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            await send(msg)

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        problem = None
        if self.api_key is not None and path.startswith("/v1"):
            if not secrets.compare_digest(headers.get("authorization", "").encode(), f"Bearer {self.api_key}".encode()):
                problem = (
                    401,
                    "invalid or missing API key (send 'Authorization: Bearer <key>')",
                    "authentication_error",
                )
        if problem is None and scope["method"] == "POST":
            size = headers.get("content-length", "")
            if not size.isdigit():
                problem = (411, "a numeric Content-Length header is required", "invalid_request_error")
            elif int(size) > self.max_body_bytes:
                problem = (
                    413,
                    f"request body of {size} bytes exceeds the limit of {self.max_body_bytes} bytes",
                    "invalid_request_error",
                )
        try:
            if problem is not None:
                body = {"error": {"message": problem[1], "type": problem[2], "param": None, "code": None}}
                await JSONResponse(body, status_code=problem[0])(scope, receive, send_)
            else:
                await self.app(scope, receive, send_)
        finally:
            self.metrics.requests.labels(endpoint, str(status[0])).inc()
            if endpoint.startswith("/v1/") and status[0] == 200:
                self.metrics.latency.labels(endpoint).observe(time.monotonic() - t0)


_ENDPOINTS = {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics"}


# ------------------------------------------------------------------------------------------ running
class ServerThread:
    """uvicorn in a background thread (tests, benchmarks, notebooks); `url` is the OpenAI base URL."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0):
        import socket

        import uvicorn

        if port == 0:
            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://{host}:{port}/v1"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        engine = getattr(getattr(self.server.config.app, "state", None), "engine", None)
        if engine is not None:  # lifespan is off here, so the app's shutdown hook does not run
            engine.close()


def register(app: Any) -> None:
    """Add the top-level `lmlab serve` command."""
    import typer

    @app.command()
    def serve(
        model: str = typer.Option(
            "smollm2-135m-instruct", "--model", "-m", help="Alias, checkpoint dir, .gguf file or hub id."
        ),
        host: str = typer.Option("127.0.0.1", "--host", help="Bind address (loopback by default; 0.0.0.0 exposes it)."),
        port: int = typer.Option(8000, "--port"),
        api_key: Optional[str] = typer.Option(
            None, "--api-key", envvar="LMLAB_SERVE_API_KEY", help="Require 'Authorization: Bearer KEY'."
        ),
        max_tokens: int = typer.Option(2048, "--max-tokens", help="Largest max_tokens a request may ask for."),
        max_body_bytes: int = typer.Option(1 << 20, "--max-body-bytes"),
        max_batch: int = typer.Option(16, "--max-batch", help="Rows decoded together (slots)."),
        max_queue: int = typer.Option(
            0, "--max-queue", help="Sequences waiting for a slot before 429 (0: 4 x max-batch)."
        ),
        prefill_chunk: int = typer.Option(256, "--prefill-chunk", help="Prompt tokens prefilled between decode steps."),
        timeout: float = typer.Option(
            600.0, "--request-timeout", help="Seconds a request may take (queued + running)."
        ),
        drain: float = typer.Option(60.0, "--drain-timeout", help="Seconds SIGTERM waits for running requests."),
        dtype: str = typer.Option("auto", "--dtype", help="auto | float32 | bfloat16"),
        device: str = typer.Option("cpu", "--device"),
        quant: Optional[str] = typer.Option(
            None, "--quant", help="int8 | bf16 | q8 | q4: weight-only quantization (see `lmlab generate --help`)."
        ),
    ) -> None:
        """Serve a model over an OpenAI-compatible API (/v1/models, /v1/chat/completions, /v1/completions)."""
        import signal

        import uvicorn

        from .backends import auto_dtype
        from .loader import load_model

        if max_tokens < 1 or max_batch < 1:
            raise LmlabError("--max-tokens and --max-batch must be >= 1")
        if dtype == "auto" and quant not in ("bf16", "q8", "q4"):  # those take fp32 activations
            dtype = auto_dtype(device)
        lm = load_model(model, dtype=dtype, device=device, quant=quant)
        app_ = create_app(
            lm,
            model_name=model,
            api_key=api_key,
            max_tokens_limit=max_tokens,
            max_body_bytes=max_body_bytes,
            max_batch=max_batch,
            max_queue=max_queue or None,
            prefill_chunk=prefill_chunk,
            request_timeout_s=timeout,
        )
        typer.echo(f"serving {model} at http://{host}:{port}/v1", err=True)
        # uvicorn drains on SIGTERM/SIGINT, then re-raises the signal to the handler it found: a Python no-op here,
        # so a drained shutdown exits 0 instead of dying of the re-raised signal
        signal.signal(signal.SIGTERM, lambda *_: None)
        uvicorn.run(app_, host=host, port=port, log_level="warning", timeout_graceful_shutdown=drain)
        typer.echo("drained; exiting", err=True)
