"""One small generation/chat interface with two implementations: the local native engine and any
OpenAI-compatible HTTP endpoint (OpenAI, vLLM, SGLang, `lmlab serve`) through the `openai` package.

A prompt is either raw text (str) or a chat (list of {"role", "content"} dicts).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, Protocol, Union

import torch

from .engine import Generation, SamplingParams, encode_chat, generate, stream_generate
from .errors import LmlabError

Prompt = Union[str, list[dict[str, str]]]
log = logging.getLogger("lmlab")


@dataclass
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class Backend(Protocol):
    name: str

    def complete(
        self, prompts: Sequence[Prompt], params: SamplingParams, json_schema: dict | None = None
    ) -> list[Completion]:
        """Complete every prompt (batched / concurrent as the backend allows), in order."""

    def stream(self, prompt: Prompt, params: SamplingParams) -> Iterator[str]:
        """Yield text deltas of one completion."""


def auto_dtype(device: str = "cpu") -> torch.dtype:
    """bfloat16 where the hardware has native bf16 matmuls (decode is memory-bound: half the bytes), else fp32.

    On a CPU where lmlab's decoding kernels run (lmlab.core.kernels), fp32: they stream fp32 weights at the bus
    rate, so fp32 decodes faster than torch's bf16 there, and it is exact across batch sizes."""
    if device.startswith("cuda"):
        return torch.bfloat16
    from . import kernels

    if device == "cpu" and kernels.enabled():
        return torch.float32
    try:
        return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32
    except (AttributeError, RuntimeError):
        return torch.float32


class LocalBackend:
    """The native engine on a local model; batches prompts `batch_size` at a time."""

    def __init__(
        self,
        model: str = "smollm2-135m-instruct",
        dtype: str = "auto",
        device: str = "cpu",
        batch_size: int = 8,
        speculative: str | None = None,
        quant: str | None = None,
    ):
        from .loader import load_model

        dt = auto_dtype(device) if dtype == "auto" else dtype
        self.lm = load_model(model, dtype=dt, device=device, quant=quant)
        self.name = model
        self.batch_size = batch_size
        self.speculative = speculative

    def encode(self, prompt: Prompt) -> list[int]:
        tok = self.lm.tokenizer
        if isinstance(prompt, str):
            return tok(prompt).input_ids
        return encode_chat(tok, prompt)

    def _gen(self, ids: list[list[int]], params: SamplingParams, json_schema: dict | None) -> list[Generation]:
        kw: dict[str, Any] = {}
        if json_schema is not None:
            from .structured import json_schema_processor  # grammar-constrained decoding (xgrammar)

            kw["processors"] = [json_schema_processor(self.lm.tokenizer, json_schema, len(ids))]
        return generate(self.lm.model, self.lm.tokenizer, ids, params, **kw)

    def complete(
        self, prompts: Sequence[Prompt], params: SamplingParams, json_schema: dict | None = None
    ) -> list[Completion]:
        out: list[Completion] = []
        for i in range(0, len(prompts), self.batch_size):
            ids = [self.encode(p) for p in prompts[i : i + self.batch_size]]
            for g, pi in zip(self._gen(ids, params, json_schema), ids):
                out.append(Completion(g.text, g.finish_reason, len(pi), len(g.token_ids)))
        return out

    def stream(self, prompt: Prompt, params: SamplingParams) -> Iterator[str]:
        ids = self.encode(prompt)
        events = None
        if self.speculative:
            from .plugins import speculative

            method = speculative(self.speculative)
            try:
                events = method(self.lm, ids, params)
            except LmlabError as e:  # a method this machine cannot run: decode plainly (same output), say why
                log.warning("--speculative %s skipped: %s; decoding without speculation", self.speculative, e)
        if events is None:
            events = stream_generate(self.lm.model, self.lm.tokenizer, [ids], params)
        for ev in events:
            if ev.text:
                yield ev.text


class OpenAIBackend:
    """OpenAI-compatible HTTP endpoint. Retries with exponential backoff on 429/5xx/timeouts come from the
    `openai` client (max_retries); concurrency is bounded by a thread pool of `concurrency` workers.

    `json_schema` goes out as `response_format` (json_schema, strict); a server that rejects it (HTTP 400/422
    naming response_format) is remembered and asked again without it, and the caller validates instead."""

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 4,
        concurrency: int = 8,
    ):
        import openai

        key = api_key or os.environ.get("LMLAB_API_KEY") or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        base = base_url or os.environ.get("LMLAB_BASE_URL") or os.environ.get("OPENAI_BASE_URL")
        self.client = openai.OpenAI(base_url=base, api_key=key, timeout=timeout, max_retries=max_retries)
        self.name = model
        self.concurrency = concurrency
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0, "requests": 0}
        self.supports_response_format = True
        self._lock = threading.Lock()  # usage counters are updated from the worker threads

    def _one(self, prompt: Prompt, params: SamplingParams, json_schema: dict | None) -> Completion:
        import openai

        common: dict[str, Any] = dict(
            model=self.name,
            max_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            stop=params.stop or None,
            seed=params.seed,
        )
        try:
            if isinstance(prompt, str) and json_schema is None:
                r = self.client.completions.create(prompt=prompt, **common)
                text, reason = r.choices[0].text, r.choices[0].finish_reason
            else:
                msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
                extra = {}
                if json_schema is not None and self.supports_response_format:
                    extra["response_format"] = {
                        "type": "json_schema",
                        "json_schema": {
                            "name": json_schema.get("title", "output"),
                            "schema": json_schema,
                            "strict": True,
                        },
                    }
                try:
                    r = self.client.chat.completions.create(messages=msgs, **common, **extra)
                except openai.APIStatusError as e:
                    if not extra or e.status_code not in (400, 422) or "response_format" not in str(e.message):
                        raise
                    self.supports_response_format = False  # fall back to validation + retries by the caller
                    r = self.client.chat.completions.create(messages=msgs, **common)
                text, reason = r.choices[0].message.content or "", r.choices[0].finish_reason
        except openai.APIConnectionError as e:
            raise LmlabError(
                f"cannot reach {self.client.base_url} ({e.__class__.__name__})",
                hint="is the server running? check --base-url / LMLAB_BASE_URL",
            ) from None
        except openai.AuthenticationError:
            raise LmlabError(
                f"{self.client.base_url}: authentication failed", hint="set LMLAB_API_KEY or OPENAI_API_KEY"
            ) from None
        except openai.APIStatusError as e:
            raise LmlabError(f"{self.client.base_url}: HTTP {e.status_code}: {str(e.message)[:200]}") from None
        u = r.usage
        pt, ct = (u.prompt_tokens, u.completion_tokens) if u else (0, 0)
        with self._lock:
            self.usage["prompt_tokens"] += pt
            self.usage["completion_tokens"] += ct
            self.usage["requests"] += 1
        return Completion(text, reason or "stop", pt, ct)

    def complete(
        self, prompts: Sequence[Prompt], params: SamplingParams, json_schema: dict | None = None
    ) -> list[Completion]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(lambda p: self._one(p, params, json_schema), prompts))

    def iter_complete(
        self, prompts: Sequence[Prompt], params: SamplingParams, json_schema: dict | None = None
    ) -> Iterator[tuple[int, Completion]]:
        """Yield (index, completion) as each finishes, so a caller can persist it at once. On the first
        failure the queued requests are cancelled, the in-flight ones still yielded, then the error raised."""
        pool = ThreadPoolExecutor(max_workers=self.concurrency)
        error: BaseException | None = None
        try:
            futures = {pool.submit(self._one, p, params, json_schema): i for i, p in enumerate(prompts)}
            for f in as_completed(futures):
                if f.cancelled():
                    continue
                if f.exception() is not None:
                    if error is None:
                        error = f.exception()
                        for other in futures:
                            other.cancel()
                    continue
                yield futures[f], f.result()
        finally:  # Ctrl-C or an abandoned generator: drop the queue instead of draining it
            pool.shutdown(wait=error is not None, cancel_futures=True)
        if error is not None:
            raise error

    def stream(self, prompt: Prompt, params: SamplingParams) -> Iterator[str]:
        msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        s = self.client.chat.completions.create(
            model=self.name,
            messages=msgs,
            max_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            stop=params.stop or None,
            stream=True,
        )
        for chunk in s:
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content


def make_backend(spec: str = "local", model: str = "smollm2-135m-instruct", **kw: Any) -> Backend:
    """`local` -> LocalBackend(model); `openai` or an http(s) URL -> OpenAIBackend(model, base_url=URL)."""
    if spec == "local":
        return LocalBackend(model, **kw)
    if spec == "openai":
        return OpenAIBackend(model, **kw)
    if spec.startswith(("http://", "https://")):
        return OpenAIBackend(model, base_url=spec, **kw)
    raise LmlabError(f"unknown backend {spec!r}", hint="use 'local', 'openai' or an http(s):// base URL")
