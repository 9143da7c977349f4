"""Self-speculation by layer skipping: the draft is the target with some decoder layers skipped (Draft & Verify,
Zhang et al. 2023; SWIFT, Xia et al. 2024; LayerSkip's self-drafting without its training). No training, no second
model, the target's tokenizer by construction, and any Llama-family model works.

The draft reads and writes the target's own KV cache for the layers it runs (`DraftModel(shared_cache=True)`):
the committed context's keys/values there are the target's exact ones, so the draft needs no prefill; its draft
tokens' K/V land in slots the verification pass overwrites next, and it hands the cache lengths back unchanged.
Verification by the full model keeps the output lossless (greedy: token-identical to plain decoding whenever a
k-token target pass reproduces a 1-token step's argmax, which lmlab's CPU kernels guarantee bit for bit).

Which layers to skip is calibrated once per target (`calibrate`), as Draft & Verify does offline and SWIFT on the
fly: on the target's own greedy continuation of a few prompts (the prompts prefilled by the full model, as at run
time), each layer's removal is scored by top-1 agreement of the skipped model with the full model (one
teacher-forced pass over the continuations per layer), the least harmful ones are skipped,
and the skip fraction is the one whose measured agreement and cost maximise Leviathan et al.'s expected speedup.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core import kernels
from ..core.engine import SamplingParams, encode_chat, generate
from ..core.model import ForwardOut, KVCache, Transformer
from .drafters import DraftModel

CALIBRATION_PROMPTS = (
    "Explain in a short paragraph why the sky is blue.",
    "Write a Python function that checks whether a string is a palindrome.",
    "Summarize the plot of a fairy tale you know in three sentences.",
)
SKIP_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5)


class LayerSkipModel:
    """The target's forward pass over the layers in `keep` only (embedding, final norm and LM head as the target's).
    Holds no weights of its own: it calls the target's blocks on the target's cache slots for those layers."""

    def __init__(self, target: Transformer, keep: list[int]):
        n = target.cfg.num_layers
        if not keep or any(not 0 <= i < n for i in keep):
            raise ValueError(f"layer indices {keep} must be a non-empty subset of 0..{n - 1}")
        self.target, self.keep = target, sorted(set(keep))
        self.cfg = target.cfg

    @property
    def device(self) -> torch.device:
        return self.target.device

    @property
    def dtype(self) -> torch.dtype:
        return self.target.dtype

    def new_cache(self, batch: int, capacity: int) -> KVCache:
        return self.target.new_cache(batch, capacity)

    def __call__(
        self, input_ids: Tensor, cache: KVCache, *, num_tokens: list[int] | None = None, logits: str = "last"
    ) -> ForwardOut:
        """`Transformer.forward` (plain path: no tree mask, positions from the slots) with the skipped layers left out."""
        m = self.target
        B, T = input_ids.shape
        write, pos = m._plan(cache, T, None, None)
        cos, sin = m._rope(pos)
        x = m.embed(input_ids)
        write.kernel = kernels.attention_ok(x, B * T, m.cfg.head_dim) and (
            write.mask is None or write.mask.dtype == torch.bool
        )
        write.fused = write.kernel and write.start is not None and kernels.fused_ok(x)
        for i in self.keep:
            x = m.layers[i](x, cos, sin, cache.k[i], cache.v[i], write)
        x = m.norm(x)
        n = num_tokens if num_tokens is not None else [T] * B
        cache.lengths = [l + k for l, k in zip(cache.lengths, n)]
        if logits == "last":
            last = (
                x[:, -1]
                if num_tokens is None
                else x[torch.arange(B, device=x.device), torch.tensor(n, device=x.device) - 1]
            )
            out = m.lm_head(last)
        elif logits == "all":
            out = m.lm_head(x)
        else:
            out = None
        return ForwardOut(out, None, x)


class _Calibration:
    """The target's greedy continuations of a few prompts, prompts prefilled by the full model (as at run time,
    the draft reads the target's exact K/V for the context). `predict(model)` teacher-forces the continuations
    through `model` on that cache and rolls the cache back, so every candidate sees the same context."""

    def __init__(self, target: Transformer, tokenizer, prompts: tuple[str, ...], new_tokens: int):
        ids = [encode_chat(tokenizer, [{"role": "user", "content": p}]) for p in prompts]
        outs = generate(target, tokenizer, ids, SamplingParams(max_new_tokens=new_tokens))
        rows = [(i, o.token_ids) for i, o in zip(ids, outs) if len(o.token_ids) >= 2]
        if not rows:
            raise ValueError("calibration prompts produced no continuation to score")
        dev, P = target.device, max(len(i) for i, _ in rows)
        self.n = [len(g) - 1 for _, g in rows]
        G = max(self.n)
        self.cache = target.new_cache(len(rows), P + G)
        pad = torch.tensor([i + [0] * (P - len(i)) for i, _ in rows], device=dev)
        target(pad, self.cache, num_tokens=[len(i) for i, _ in rows], logits="none")
        self.base = list(self.cache.lengths)
        self.feed = torch.tensor([g[:-1] + [0] * (G - len(g) + 1) for _, g in rows], device=dev)
        self.ref = self.predict(target)

    def predict(self, model) -> Tensor:
        logits = model(self.feed, self.cache, num_tokens=self.n, logits="all").logits
        self.cache.rollback(self.base)
        return torch.cat([logits[b, :n].argmax(-1) for b, n in enumerate(self.n)])

    def agreement(self, target: Transformer, keep: list[int]) -> float:
        """Top-1 agreement of the skipped model with the full one along the continuations."""
        return float((self.predict(LayerSkipModel(target, keep)) == self.ref).float().mean())


def _expected_speedup(alpha: float, c: float, gamma_max: int = 8) -> float:
    """Leviathan et al. (2023, eq. 1) at the best draft length: (1 - a^(g+1)) / ((1 - a)(g c + 1))."""
    a = min(max(alpha, 1e-6), 0.99)
    return max((1 - a ** (g + 1)) / (1 - a) / (g * c + 1) for g in range(1, gamma_max + 1))


@torch.inference_mode()
def calibrate(
    target: Transformer,
    tokenizer,
    prompts: tuple[str, ...] = CALIBRATION_PROMPTS,
    new_tokens: int = 32,
    fractions: tuple[float, ...] = SKIP_FRACTIONS,
) -> dict:
    """Choose the layers to skip (see the module docstring). The first and last layers are always kept (skipping
    them costs most agreement, as Draft & Verify and SWIFT report). Returns {"keep", "skip", "agreement",
    "expected_speedup", "candidates"}; the cost ratio c is taken as kept/total layers (the LM head, shared by both,
    makes the real ratio a little higher; the bench measures it)."""
    cal = _Calibration(target, tokenizer, prompts, new_tokens)
    L = target.cfg.num_layers
    inner = list(range(1, L - 1))
    score = {i: cal.agreement(target, [j for j in range(L) if j != i]) for i in inner}
    order = sorted(inner, key=lambda i: -score[i])  # least harmful to skip first
    cands = []
    for f in fractions:
        skip = sorted(order[: max(1, min(len(inner), round(f * L)))])
        keep = [j for j in range(L) if j not in skip]
        a = cal.agreement(target, keep)
        cands.append(
            {"skip_fraction": f, "skip": skip, "agreement": a, "expected_speedup": _expected_speedup(a, len(keep) / L)}
        )
    best = max(cands, key=lambda c: c["expected_speedup"])
    return {
        "keep": [j for j in range(L) if j not in best["skip"]],
        "skip": best["skip"],
        "agreement": best["agreement"],
        "expected_speedup": best["expected_speedup"],
        "layer_scores": score,
        "candidates": cands,
    }


_CALIBRATED: dict[tuple, dict] = {}


def last_calibration() -> dict | None:
    """The most recent calibration in this process (what a report says about the layers skipped)."""
    return next(reversed(_CALIBRATED.values()), None)


def layerskip_drafter(
    target: Transformer, tokenizer, skip: list[int] | None = None, gamma_max: int = 8, **kw
) -> DraftModel:
    """A `DraftModel` over `LayerSkipModel`, sharing the target's cache. `skip`: the layers to leave out (default:
    calibrated once per target object and kept in memory; `drafter.calibration` says what was measured)."""
    info = None
    if skip is None:
        key = (id(target), target.embed.weight.data_ptr(), str(target.dtype))
        if key not in _CALIBRATED:
            _CALIBRATED[key] = calibrate(target, tokenizer)
        info = _CALIBRATED[key]
        skip = info["skip"]
    keep = [j for j in range(target.cfg.num_layers) if j not in set(skip)]
    d = DraftModel(LayerSkipModel(target, keep), gamma_max=gamma_max, stream_bf16=False, shared_cache=True, **kw)
    d.name = "layerskip"
    d.calibration = info or {"keep": keep, "skip": sorted(skip)}
    return d
