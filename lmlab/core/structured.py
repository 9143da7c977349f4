"""Grammar-constrained decoding: a JSON schema becomes an `engine.LogitsProcessor` through xgrammar.

xgrammar compiles the schema into a pushdown automaton over the tokenizer's vocabulary and fills a
token bitmask per step; we keep one `GrammarMatcher` per batch row, feed it the row's new tokens, and mask
the logits. When the grammar is complete (the JSON value is closed) only EOS stays allowed, so a small
model cannot ramble after the object. Compiled grammars are cached per (tokenizer, vocab size, schema).
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from torch import Tensor

from .engine import LogitsProcessor
from .errors import LmlabError

_TOKENIZERS: dict[int, Any] = {}  # id(tokenizer) -> tokenizer; keeps the ids below valid for the process


@lru_cache(maxsize=8)
def _compiler(tok_id: int, vocab_size: int) -> Any:
    import xgrammar as xgr

    tok = _TOKENIZERS[tok_id]
    stop = [tok.eos_token_id] if tok.eos_token_id is not None else None
    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=vocab_size, stop_token_ids=stop)
    return xgr.GrammarCompiler(info, max_threads=2)


@lru_cache(maxsize=64)
def _compiled(tok_id: int, vocab_size: int, schema_json: str) -> Any:
    try:
        # any_whitespace=False: compact JSON, so a weak model cannot loop on whitespace inside the object
        return _compiler(tok_id, vocab_size).compile_json_schema(schema_json, any_whitespace=False)
    except Exception as e:  # xgrammar raises RuntimeError/ValueError subclasses for unsupported schemas
        raise LmlabError(
            f"json schema: cannot compile ({str(e).splitlines()[0][:160]})",
            hint="use a JSON schema subset xgrammar supports (objects, arrays, strings, numbers, enums)",
        ) from None


def compile_schema(tokenizer: Any, schema: dict, vocab_size: int) -> Any:
    """The xgrammar CompiledGrammar for `schema` (cached)."""
    _TOKENIZERS.setdefault(id(tokenizer), tokenizer)
    return _compiled(id(tokenizer), vocab_size, json.dumps(schema))  # no sort_keys: property order is meaningful


class JsonSchemaProcessor:
    """Masks every row's logits to the tokens the schema allows next; forces EOS once the value is complete."""

    def __init__(self, tokenizer: Any, schema: dict, batch_size: int):
        if tokenizer is None or tokenizer.eos_token_id is None:
            raise LmlabError("structured decoding needs a tokenizer with an EOS token")
        self.tokenizer, self.schema, self.batch_size = tokenizer, schema, batch_size
        self.eos = int(tokenizer.eos_token_id)
        self.matchers: list[Any] = []
        self.accepted = [0] * batch_size  # tokens of each row already fed to its matcher
        self.bitmask: Tensor | None = None

    def _init(self, vocab_size: int) -> None:
        import xgrammar as xgr

        grammar = compile_schema(self.tokenizer, self.schema, vocab_size)
        self.matchers = [xgr.GrammarMatcher(grammar) for _ in range(self.batch_size)]
        self.bitmask = xgr.allocate_token_bitmask(self.batch_size, vocab_size)
        self.vocab_size = vocab_size

    def __call__(self, rows: list[int], generated: list[list[int]], logits: Tensor) -> Tensor:
        import xgrammar as xgr

        if not self.matchers:
            self._init(logits.shape[-1])
        assert self.bitmask is not None
        done: list[int] = []
        for j, (r, toks) in enumerate(zip(rows, generated)):
            m = self.matchers[r]
            for t in toks[self.accepted[r] :]:
                if not m.accept_token(t):
                    raise RuntimeError(f"row {r}: token {t} violates the grammar (was the mask bypassed?)")
            self.accepted[r] = len(toks)
            if m.is_completed():
                done.append(j)
            else:
                m.fill_next_token_bitmask(self.bitmask, j)
        out = logits.float()  # xgrammar's CPU kernel masks float32; sampling upcasts anyway
        if len(done) < len(rows):
            mask = self.bitmask[: len(rows)].to(out.device, non_blocking=True)
            closed = set(done)
            xgr.apply_token_bitmask_inplace(
                out, mask, vocab_size=self.vocab_size, indices=[j for j in range(len(rows)) if j not in closed]
            )
        for j in done:  # the value is closed: only EOS
            out[j].fill_(float("-inf"))
            out[j, self.eos] = 0.0
        return out


def json_schema_processor(tokenizer: Any, schema: dict, batch_size: int) -> LogitsProcessor:
    """An `engine.LogitsProcessor` that constrains `batch_size` rows to JSON matching `schema`."""
    return JsonSchemaProcessor(tokenizer, schema, batch_size)
