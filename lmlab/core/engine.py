"""Generation on the native model: prefill, decode, sampling, stop handling, batching and streaming.

Small plain functions in the style of gpt-fast's generate.py. Batched prompts of different lengths are
right-aligned in the cache (each row keeps its own length), so no left padding and no wasted positions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from . import kernels
from .errors import LmlabError
from .model import ForwardOut, KVCache, Transformer


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 -> greedy
    top_k: int = 0  # 0 -> off
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)  # stop strings (not included in the output)
    stop_token_ids: list[int] | None = None  # None -> the model's EOS tokens
    ignore_eos: bool = False


@dataclass
class Generation:
    token_ids: list[int]
    text: str
    finish_reason: str  # "stop" (EOS or stop string) | "length"
    prompt_tokens: int = 0


@dataclass
class StreamEvent:
    row: int
    token_id: int | None
    text: str  # the new text since the previous event of this row
    finish_reason: str | None = None


# ------------------------------------------------------------------------------------------ sampling
def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator | None:
    if seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def filter_logits(logits: Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Temperature, top-k and top-p (nucleus) filtering; returns logits with removed entries at -inf."""
    logits = logits.float() / max(temperature, 1e-6)
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        remove = probs.cumsum(-1) - probs > top_p  # keep the smallest prefix whose mass reaches top_p
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)
    return logits


def probs_from_logits(logits: Tensor, p: SamplingParams) -> Tensor:
    """The distribution the sampler draws from (speculative sampling needs it explicitly)."""
    return filter_logits(logits, p.temperature, p.top_k, p.top_p).softmax(-1)


def sample(logits: Tensor, p: SamplingParams, generator: torch.Generator | None = None) -> Tensor:
    """Next token per row from logits [B, V]: argmax when temperature == 0, else a draw."""
    if p.temperature <= 0:
        return logits.argmax(-1)
    probs = probs_from_logits(logits, p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# ------------------------------------------------------------------------------------------ steps
PAD_WASTE = 1.25  # prefill row by row once padding to the longest row would add this much work or more


def chunked_forward(model: Transformer, ids: Tensor, cache: KVCache, **kw: Any) -> ForwardOut:
    """`model(ids, cache, **kw)` for a plain causal block (no tree mask, positions or hooks), run in pieces of at
    most `kernels.MAX_ROWS` rows where lmlab's CPU kernels apply.

    Why: on the reference machine a 769-token prompt prefills in 0.60 s through the kernels in 128-256-row pieces
    and 1.10 s as one block through torch's GEMM (benchmarks/RESULTS.md). And since every kernel output depends
    only on its own row and the keys it sees, the pieces give the same bits as one block or as token-by-token
    decoding: the cache a prompt leaves is the one decoding it would have left."""
    B, T = ids.shape
    step = max(1, kernels.MAX_ROWS // B)
    fast = (
        kernels.enabled()
        and model.dtype == torch.float32
        and model.device.type == "cpu"
        and not torch.is_grad_enabled()
    )
    if T <= step or not fast or set(kw) - {"output_hidden_states", "logits"}:
        return model(ids, cache, **kw)
    want = kw.pop("logits", "last")
    outs = [
        model(ids[:, i : i + step], cache, logits=want if want == "all" or i + step >= T else "none", **kw)
        for i in range(0, T, step)
    ]
    hidden = None
    if outs[0].hidden_states is not None:
        hidden = [torch.cat([o.hidden_states[j] for o in outs], 1) for j in range(len(outs[0].hidden_states))]
    logits = torch.cat([o.logits for o in outs], 1) if want == "all" else outs[-1].logits
    return ForwardOut(logits, hidden, torch.cat([o.last_hidden for o in outs], 1))


def prefill_forward(model: Transformer, cache: KVCache, prompts: Sequence[Sequence[int]], **kw: Any) -> ForwardOut:
    """Append each row's prompt to the (empty) cache; logits [B, V] at each row's last token and last_hidden
    [B, T, H] (rows right-padded to the longest, T).

    Why row by row for mixed lengths: a padded batch costs B x longest, and a batch that mixes a 2k-token
    article with one-line questions (Spec-Bench, a draft-training corpus) would do several times the needed
    work; one forward per row costs the sum of the lengths. It also gives every row exactly the arithmetic of
    a lone prompt, whatever its batch-mates. Hooks (which may index rows) keep the padded batch. Long prompts
    run in kernel-sized pieces (`chunked_forward`)."""
    lens = [len(p) for p in prompts]
    B, T = len(prompts), max(lens)
    dev = model.device
    if (
        B > 1
        and set(kw) <= {"output_hidden_states"}
        and cache.key_bias is None
        and not any(cache.lengths)
        and B * T >= PAD_WASTE * sum(lens)
    ):
        outs = []
        for b, p in enumerate(prompts):
            one = model.new_cache(1, len(p))
            outs.append(chunked_forward(model, torch.tensor([list(p)], device=dev), one, **kw))
            for i in range(len(cache.k)):
                cache.k[i][b, :, : len(p)] = one.k[i][0]
                cache.v[i][b, :, : len(p)] = one.v[i][0]
            cache.lengths[b] = len(p)

        def padded(rows: list[Tensor]) -> Tensor:
            x = rows[0].new_zeros(B, T, rows[0].shape[-1])
            for b, r in enumerate(rows):
                x[b, : r.shape[1]] = r[0]
            return x

        states = None
        if outs[0].hidden_states is not None:
            states = [padded([o.hidden_states[i] for o in outs]) for i in range(len(outs[0].hidden_states))]
        return ForwardOut(torch.cat([o.logits for o in outs]), states, padded([o.last_hidden for o in outs]))
    ids = torch.tensor([list(p) + [0] * (T - len(p)) for p in prompts], device=dev)
    if min(lens) == T and cache.key_bias is None:
        return chunked_forward(model, ids, cache, **kw)
    return model(ids, cache, num_tokens=None if min(lens) == T else lens, **kw)


def prefill(model: Transformer, cache: KVCache, prompts: Sequence[Sequence[int]], **kw: Any) -> Tensor:
    """Append each row's prompt to the cache; returns the last-position logits [B, V]."""
    return prefill_forward(model, cache, prompts, **kw).logits


def decode_step(model: Transformer, cache: KVCache, tokens: Tensor, **kw: Any) -> Tensor:
    """One token per row -> next-token logits [B, V]."""
    return model(tokens[:, None], cache, **kw).logits


# ------------------------------------------------------------------------------------------ text
def eos_ids(model: Transformer, tokenizer: Any) -> list[int]:
    ids = model.cfg.eos_token_id
    out = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer is not None and getattr(tokenizer, "eos_token_id", None) is not None:
        out.add(tokenizer.eos_token_id)
    return sorted(out)


def encode_chat(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
    """Token ids of a chat, through the model's own chat template (identical to transformers')."""
    if not getattr(tokenizer, "chat_template", None):
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + (
            "assistant: " if add_generation_prompt else ""
        )
        return tokenizer(text, add_special_tokens=False).input_ids
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return tokenizer(text, add_special_tokens=False).input_ids


class _RowText:
    """Incremental detokenisation with stop strings; holds back text that might start a stop string.

    Decodes only a sliding window of ids (the prefix/read offsets of TGI and vLLM), so a step costs O(1) in the
    length generated so far; the window's shared prefix keeps tokenizers that drop leading spaces correct."""

    def __init__(self, tokenizer: Any, stop: list[str]):
        self.tok, self.stop = tokenizer, stop
        self.ids: list[int] = []
        self.prefix_offset = self.read_offset = 0
        self.emitted = 0
        self.text = ""
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        if self.tok is None:
            return ""
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        window = self._decode(self.ids[self.prefix_offset :])
        if len(window) > len(prefix) and not window.endswith("\ufffd"):  # a complete UTF-8 sequence arrived
            added = window[len(prefix) :]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            start = max(0, len(self.text) - max((len(x) for x in self.stop), default=0))
            self.text += added
            for s in self.stop:  # only the tail can hold a stop string that was not there before
                at = self.text.find(s, start)
                if at >= 0:
                    self.text, self.stopped = self.text[:at], True
                    start = min(start, at)
        safe = len(self.text)
        if not self.stopped:
            for s in self.stop:  # a suffix that could grow into a stop string
                for k in range(min(len(s) - 1, len(self.text)), 0, -1):
                    if self.text.endswith(s[:k]):
                        safe = min(safe, len(self.text) - k)
                        break
        delta = self.text[self.emitted : safe]
        self.emitted = max(self.emitted, safe)
        return delta

    def flush(self) -> str:
        delta = self.text[self.emitted :]
        self.emitted = len(self.text)
        return delta


# ------------------------------------------------------------------------------------------ generate
def check_context(model: Transformer, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> int:
    """Validate prompt lengths; returns the max_new_tokens that fits the context window."""
    ctx = model.cfg.max_position_embeddings
    longest = max(len(p) for p in prompts)
    if any(len(p) == 0 for p in prompts):
        raise LmlabError("empty prompt", hint="pass at least one token of text")
    if longest >= ctx:
        raise LmlabError(
            f"prompt of {longest} tokens does not fit the context window of {ctx} tokens", hint="shorten the prompt"
        )
    return min(max_new_tokens, ctx - longest)


LogitsProcessor = Callable[[list[int], list[list[int]], Tensor], Tensor]
"""processor(rows, generated, logits) -> logits: `rows` are the original indices of the active rows, `generated`
their tokens so far, `logits` [len(rows), V]. Used for grammar-constrained decoding."""


def stream_generate(
    model: Transformer,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams | None = None,
    processors: Sequence[LogitsProcessor] = (),
    overlap: bool | None = None,
    **forward_kw: Any,
) -> Iterator[StreamEvent]:
    """Yield text deltas per row as tokens are produced; each row ends with one event carrying finish_reason.

    overlap (default: on for accelerators, off on the CPU): queue step t+1's forward pass before reading step t's
    tokens on the host, so an accelerator never idles while the host detokenizes and checks stops (the one
    device->host copy per step then waits only for the sampled tokens, not for the next pass). A row that finished
    at step t has run one pass too many; its row is dropped from that pass's logits and the cache. On the CPU the
    extra pass at the end would be pure cost, so it is off there; the output is the same either way (tested)."""
    p = params or SamplingParams()
    max_new = check_context(model, prompts, p.max_new_tokens)
    stops = set(
        [] if p.ignore_eos else (p.stop_token_ids if p.stop_token_ids is not None else eos_ids(model, tokenizer))
    )
    overlap = model.device.type != "cpu" if overlap is None else overlap
    gen = make_generator(p.seed, model.device)
    B = len(prompts)
    rows = list(range(B))  # active row -> original index
    texts = [_RowText(tokenizer, p.stop) for _ in range(B)]
    with torch.inference_mode():
        cache = model.new_cache(B, max(len(x) for x in prompts) + max_new + 1)
        logits = prefill(model, cache, prompts, **forward_kw)
        for step in range(max_new):
            for proc in processors:
                logits = proc(rows, [texts[r].ids for r in rows], logits)
            nxt = sample(logits, p, gen)
            ahead = decode_step(model, cache, nxt, **forward_kw) if overlap and step < max_new - 1 else None
            keep = []
            host = nxt.tolist()  # one device->host copy per step for the whole batch (not one sync per row)
            for j, r in enumerate(rows):
                t = host[j]
                if t in stops:
                    yield StreamEvent(r, None, texts[r].flush(), "stop")
                    continue
                delta = texts[r].push(t)
                if texts[r].stopped:
                    yield StreamEvent(r, t, delta + texts[r].flush(), "stop")
                    continue
                if step == max_new - 1:
                    yield StreamEvent(r, t, delta + texts[r].flush(), "length")
                    continue
                yield StreamEvent(r, t, delta)
                keep.append(j)
            if not keep or step == max_new - 1:
                return
            if len(keep) < len(rows):  # drop finished rows from the batch
                idx = torch.tensor(keep).to(model.device, non_blocking=True)
                cache.reorder(idx, keep)
                nxt, rows = nxt[idx], [rows[j] for j in keep]
                ahead = None if ahead is None else ahead[idx]
            logits = ahead if ahead is not None else decode_step(model, cache, nxt, **forward_kw)


def generate(
    model: Transformer,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams | None = None,
    processors: Sequence[LogitsProcessor] = (),
    **forward_kw: Any,
) -> list[Generation]:
    """Generate for a batch of token-id prompts (different lengths allowed)."""
    return collect(stream_generate(model, tokenizer, prompts, params, processors, **forward_kw), prompts)


def collect(events: Iterator[StreamEvent], prompts: Sequence[Sequence[int]]) -> list[Generation]:
    """Gather a stream of events (plain or speculative) into one Generation per prompt."""
    ids: list[list[int]] = [[] for _ in prompts]
    text = [""] * len(prompts)
    reason: list[str] = ["length"] * len(prompts)
    for ev in events:
        if ev.token_id is not None:
            ids[ev.row].append(ev.token_id)
        text[ev.row] += ev.text
        if ev.finish_reason:
            reason[ev.row] = ev.finish_reason
    return [Generation(i, t, r, len(pr)) for i, t, r, pr in zip(ids, text, reason, prompts)]
