"""Speculative decoding (Spec-Bench survey, arXiv:2401.07851): draft cheaply, verify in one target pass,
never change the output. Methods: draft-model speculative sampling (`sps`), prompt lookup (`pld`), an
EAGLE-style feature head with EAGLE-2 dynamic trees (`eagle`, `eagle_pld` with prompt lookup) and the target's
own weights quantized to 4 bits as its draft (`selfq4`), the target with calibrated layers skipped (`layerskip`,
layerskip.py: no training); all batched and lossless.

    from lmlab.specdec import make_drafter, spec_generate
    drafter = make_drafter(lm, "eagle")
    outs = spec_generate(lm.model, lm.tokenizer, drafter, prompt_ids, SamplingParams(max_new_tokens=128))
"""

from __future__ import annotations

from collections.abc import Iterator

from ..core.engine import SamplingParams, StreamEvent
from ..core.loader import LoadedModel
from ..core.plugins import register_speculative
from .decode import SpecStats, spec_generate, spec_stream
from .drafters import DraftModel, PromptLookup
from .registry import make_drafter, register_aliases
from .verify import Draft, accept

__all__ = [
    "Draft",
    "DraftModel",
    "PromptLookup",
    "SpecStats",
    "accept",
    "make_drafter",
    "spec_generate",
    "spec_stream",
    "speculative_stream",
]

register_aliases()


def speculative_stream(
    lm: LoadedModel, prompt_ids: list[int], params: SamplingParams, method: str
) -> Iterator[StreamEvent]:
    """`lmlab generate --speculative METHOD`: the events of `engine.stream_generate`, produced speculatively."""
    return spec_stream(lm.model, lm.tokenizer, make_drafter(lm, method), [prompt_ids], params)


METHODS = ("sps", "pld", "eagle", "eagle_pld", "selfq4", "layerskip")
for _m in METHODS:  # offered to core: LocalBackend(speculative=...), `lmlab generate --speculative`
    register_speculative(_m, lambda lm, ids, params, _m=_m: speculative_stream(lm, ids, params, _m))
