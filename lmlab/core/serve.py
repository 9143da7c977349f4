"""`lmlab serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) over the native engine.

Endpoints: GET /v1/models, POST /v1/chat/completions (SSE streaming too), POST /v1/completions, with
`response_format` json_schema / json_object decoded under an xgrammar grammar (core.structured).

Concurrency: one engine, one worker thread, and a small batching queue. Requests that arrive within
`batch_window_s` of each other and share sampling parameters (and schema) decode as one batch, so 16
concurrent clients cost far less than 16 sequential generations; requests with different parameters run
one group after another. The worker pushes token deltas to each request's asyncio queue, which serves
streaming and non-streaming replies alike.

Safety: binds 127.0.0.1 by default; optional bearer API key; request-body and max_tokens limits; every
bad request gets a 4xx with an OpenAI-style {"error": {...}} body, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import queue
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from .engine import SamplingParams, StreamEvent, encode_chat, stream_generate
from .errors import LmlabError


# ------------------------------------------------------------------------------------------ requests
class _Req(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: Optional[str] = None
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = None


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
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


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


# ------------------------------------------------------------------------------------------ engine worker
@dataclass
class _Job:
    prompts: list[list[int]]  # n copies of the prompt for n choices
    params: SamplingParams
    schema: dict | None
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    key: str = field(init=False)

    def __post_init__(self) -> None:
        p = self.params
        self.key = json.dumps([p.max_new_tokens, p.temperature, p.top_p, p.seed, p.stop, self.schema], sort_keys=True)


class BatchingEngine:
    """One model, one worker thread; gathers concurrent jobs for `window_s` and decodes compatible ones together."""

    def __init__(self, lm: Any, max_batch: int = 16, window_s: float = 0.01):
        self.lm, self.max_batch, self.window_s = lm, max_batch, window_s
        self.jobs: queue.Queue[_Job] = queue.Queue()
        self.batches = 0  # decoded groups (tests and benchmarks read it)
        threading.Thread(target=self._run, name="lmlab-serve-engine", daemon=True).start()

    def submit(self, job: _Job) -> None:
        self.jobs.put(job)

    def _gather(self) -> list[_Job]:
        jobs = [self.jobs.get()]
        deadline = time.monotonic() + self.window_s
        while sum(len(j.prompts) for j in jobs) < self.max_batch:
            left = deadline - time.monotonic()
            try:
                jobs.append(self.jobs.get(timeout=left) if left > 0 else self.jobs.get_nowait())
            except queue.Empty:
                break
        return jobs

    def _run(self) -> None:
        while True:
            groups: dict[str, list[_Job]] = {}
            for j in self._gather():
                groups.setdefault(j.key, []).append(j)
            for group in groups.values():
                self._decode(group)

    def _decode(self, group: list[_Job]) -> None:
        owner: list[tuple[_Job, int]] = [(j, c) for j in group for c in range(len(j.prompts))]
        prompts = [p for j in group for p in j.prompts]
        procs = []
        try:
            if group[0].schema is not None:
                from .structured import json_schema_processor

                procs = [json_schema_processor(self.lm.tokenizer, group[0].schema, len(prompts))]
            self.batches += 1
            for ev in stream_generate(self.lm.model, self.lm.tokenizer, prompts, group[0].params, procs):
                job, choice = owner[ev.row]
                job.loop.call_soon_threadsafe(job.events.put_nowait, (choice, ev))
        except Exception as e:  # surfaced to every waiting request as a 500, the worker lives on
            for job in group:
                job.loop.call_soon_threadsafe(job.events.put_nowait, (-1, e))


# ------------------------------------------------------------------------------------------ app
def create_app(
    lm: Any,
    model_name: str = "smollm2-135m-instruct",
    api_key: str | None = None,
    max_tokens_limit: int = 2048,
    max_body_bytes: int = 1 << 20,
    max_batch: int = 16,
    batch_window_s: float = 0.01,
) -> Any:
    """The FastAPI app serving `lm` (a loader.LoadedModel) under `model_name`."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse

    app = FastAPI(title="lmlab", docs_url=None, redoc_url=None)
    engine = BatchingEngine(lm, max_batch=max_batch, window_s=batch_window_s)
    app.state.engine = engine
    ctx_len = lm.model.cfg.max_position_embeddings
    tok = lm.tokenizer

    def err(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error") -> JSONResponse:
        return JSONResponse(
            {"error": {"message": message, "type": kind, "param": param, "code": None}}, status_code=status
        )

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, e: ApiError) -> JSONResponse:
        return err(e.status, e.message, e.param, e.kind)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {"loc": (), "msg": "invalid request"}
        loc = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return err(400, f"{loc or 'body'}: {first.get('msg')}", loc or None)

    @app.middleware("http")
    async def _guard(request: Request, call_next: Any) -> Any:
        if api_key is not None:
            auth = request.headers.get("authorization", "")
            if not secrets.compare_digest(auth.encode(), f"Bearer {api_key}".encode()):
                return err(
                    401, "invalid or missing API key (send 'Authorization: Bearer <key>')", kind="authentication_error"
                )
        if request.method == "POST":
            size = request.headers.get("content-length", "")
            if not size.isdigit():
                return err(411, "a numeric Content-Length header is required")
            if int(size) > max_body_bytes:
                return err(413, f"request body of {size} bytes exceeds the limit of {max_body_bytes} bytes")
        return await call_next(request)

    def check_model(name: str | None) -> None:
        if name is not None and name != model_name:
            raise ApiError(
                404,
                f"model {name!r} is not served here (this server serves {model_name!r})",
                "model",
                "model_not_found",
            )

    def params_of(r: _Req, max_tokens: int | None, prompt_len: int) -> SamplingParams:
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
        stop = [r.stop] if isinstance(r.stop, str) else list(r.stop or [])
        return SamplingParams(
            max_new_tokens=max_tokens or max_tokens_limit,
            temperature=r.temperature,
            top_p=r.top_p,
            seed=r.seed,
            stop=stop,
        )

    async def run(prompt: list[int], n: int, params: SamplingParams, schema: dict | None) -> asyncio.Queue:
        events: asyncio.Queue = asyncio.Queue()
        engine.submit(_Job([list(prompt)] * n, params, schema, asyncio.get_running_loop(), events))
        return events

    async def collect(events: asyncio.Queue, n: int) -> tuple[list[str], list[str], int]:
        texts, reasons, tokens, open_ = [""] * n, ["length"] * n, 0, n
        while open_:
            choice, ev = await events.get()
            if choice < 0:
                raise ApiError(500, f"generation failed: {type(ev).__name__}: {ev}", kind="server_error")
            assert isinstance(ev, StreamEvent)
            texts[choice] += ev.text
            tokens += ev.token_id is not None
            if ev.finish_reason:
                reasons[choice], open_ = ev.finish_reason, open_ - 1
        return texts, reasons, tokens

    def sse(events: asyncio.Queue, n: int, make_chunk: Any) -> StreamingResponse:
        async def body() -> Any:
            open_ = n
            while open_:
                choice, ev = await events.get()
                if choice < 0:
                    yield f"data: {json.dumps({'error': {'message': str(ev), 'type': 'server_error'}})}\n\n"
                    break
                if ev.text or ev.finish_reason:
                    yield f"data: {json.dumps(make_chunk(choice, ev.text, ev.finish_reason))}\n\n"
                open_ -= ev.finish_reason is not None
            yield "data: [DONE]\n\n"

        return StreamingResponse(body(), media_type="text/event-stream")

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "lmlab"}]}

    @app.post("/v1/chat/completions")
    async def chat(r: ChatRequest) -> Any:
        check_model(r.model)
        schema = _schema_of(r.response_format)
        if schema is not None:
            from .structured import compile_schema

            try:
                compile_schema(tok, schema, lm.model.cfg.vocab_size)
            except LmlabError as e:
                raise ApiError(400, str(e), "response_format") from None
        ids = encode_chat(
            tok, [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in r.messages]
        )
        params = params_of(r, r.max_completion_tokens or r.max_tokens, len(ids))
        events = await run(ids, r.n, params, schema)
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

            return sse(events, r.n, chunk)
        texts, reasons, ntok = await collect(events, r.n)
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
    async def completions(r: CompletionRequest) -> Any:
        check_model(r.model)
        prompts = [r.prompt] if isinstance(r.prompt, str) else r.prompt
        if len(prompts) != 1:
            raise ApiError(400, "send one prompt per request (batching happens on the server)", "prompt")
        ids = tok(prompts[0]).input_ids
        params = params_of(r, r.max_tokens or 16, len(ids))  # OpenAI's legacy default is 16 tokens
        events = await run(ids, r.n, params, None)
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

            return sse(events, r.n, chunk)
        texts, reasons, ntok = await collect(events, r.n)
        return {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": model_name,
            "choices": [{"index": i, "text": t, "finish_reason": f} for i, (t, f) in enumerate(zip(texts, reasons))],
            "usage": {"prompt_tokens": len(ids), "completion_tokens": ntok, "total_tokens": len(ids) + ntok},
        }

    return app


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
        max_batch: int = typer.Option(16, "--max-batch", help="Rows decoded together."),
        dtype: str = typer.Option("auto", "--dtype", help="auto | float32 | bfloat16"),
        device: str = typer.Option("cpu", "--device"),
    ) -> None:
        """Serve a model over an OpenAI-compatible API (/v1/models, /v1/chat/completions, /v1/completions)."""
        import uvicorn

        from .backends import auto_dtype
        from .loader import load_model

        if max_tokens < 1 or max_batch < 1:
            raise LmlabError("--max-tokens and --max-batch must be >= 1")
        lm = load_model(model, dtype=auto_dtype(device) if dtype == "auto" else dtype, device=device)
        app_ = create_app(
            lm,
            model_name=model,
            api_key=api_key,
            max_tokens_limit=max_tokens,
            max_body_bytes=max_body_bytes,
            max_batch=max_batch,
        )
        typer.echo(f"serving {model} at http://{host}:{port}/v1", err=True)
        uvicorn.run(app_, host=host, port=port, log_level="warning")
